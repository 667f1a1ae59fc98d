"""`python launch.py ...` as a user runs it, in a subprocess."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import chex

from bigmodel_jax import checkpoint, training
from tests.conftest import REPO_ROOT


def _command(tiny_config, workdir, *overrides):
  return [sys.executable, os.path.join(REPO_ROOT, 'launch.py'),
          '--config=' + os.path.join(REPO_ROOT, 'configs', 'tiny.py'), f'--workdir={workdir}',
          f'--config.data.idx_dir={tiny_config.data.idx_dir}',
          f'--config.data.tfds_data_dir={tiny_config.data.tfds_data_dir}', *overrides]


def _run(args, timeout=120):
  return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_two_step_run_end_to_end(tiny_config, tmp_path):
  workdir = tmp_path / 'run'
  proc = _run(_command(tiny_config, workdir, '--config.num_train_steps=2',
                       '--config.optimizer.learning_rate=3e-4'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'epoch 1/1' in proc.stdout and 'eval_accuracy' in proc.stdout
  results = json.loads((workdir / 'results.json').read_text())
  assert results['steps'] == 2 and results['config_name'] == 'tiny'
  assert (workdir / 'curves.png').exists()
  again = _run(_command(tiny_config, workdir, '--config.num_train_steps=2',
                        '--config.optimizer.learning_rate=3e-4'))
  assert again.returncode == 0 and 'already finished' in again.stdout


# absl's line format (Python libraries) and XLA's / gRPC's C++ one: 'I1201 12:00:00.1 ...'.
_INFO_LINE = re.compile(r'^I\d{4} \d\d:\d\d:\d\d')


def _info_lines(text):
  return [line for line in text.splitlines() if _INFO_LINE.match(line)]


def test_terminal_shows_the_projects_lines_only_unless_verbosity_asks(tiny_config, tmp_path):
  quiet = _run(_command(tiny_config, tmp_path / 'quiet', '--config.num_train_steps=2'))
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert 'epoch 1/1' in quiet.stdout and 'Done:' in quiet.stdout
  assert not _info_lines(quiet.stderr), quiet.stderr[-3000:]
  assert not _info_lines(quiet.stdout)
  assert list((tmp_path / 'quiet' / 'tensorboard').glob('events.out.tfevents.*'))
  # The same run with library INFO logs asked for: Orbax's checkpoint lines at least come back.
  loud = _run(_command(tiny_config, tmp_path / 'loud', '--config.num_train_steps=2',
                       '--verbosity=0'))
  assert loud.returncode == 0, loud.stderr[-3000:]
  assert 'Done:' in loud.stdout
  assert any('checkpoint' in line for line in _info_lines(loud.stderr)), loud.stderr[-3000:]


def test_a_pruning_sweep_stays_quiet(tiny_config, tmp_path):
  proc = _run(_command(tiny_config, tmp_path / 'sweep', '--config.num_train_steps=4',
                       '--config.prune.enabled=True', '--config.prune.retrain_steps=2',
                       '--config.prune.score_batches=1', '--config.prune.measure_latency=False',
                       '--config.write_plot=False'), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Dense model:' in proc.stdout
  assert not _info_lines(proc.stderr), proc.stderr[-3000:]


def test_misspelled_key_is_refused_before_compute(tiny_config, tmp_path):
  proc = _run(_command(tiny_config, tmp_path / 'run', '--config.optimzer.learning_rate=1'))
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert "no key 'optimzer' (did you mean 'optimizer'?)" in proc.stderr
  assert not (tmp_path / 'run').exists()


def test_wrongly_typed_value_is_refused(tiny_config, tmp_path):
  proc = _run(_command(tiny_config, tmp_path / 'run', '--config.num_epochs=ten'))
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'num_epochs' in proc.stderr
  assert not (tmp_path / 'run').exists()


def test_invalid_value_is_one_clear_sentence(tiny_config, tmp_path):
  proc = _run(_command(tiny_config, tmp_path / 'run', '--config.optimizer.name=adamx'))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: config.optimizer.name='adamx' is not accepted; use one of: sgd, adam, adamw.")


def test_kill_dash_nine_then_rerun_matches_an_uninterrupted_run(tiny_config, tmp_path):
  # One device (the default layout as on a 1-device machine): resuming is not about layouts here
  # (tests/test_parallel.py moves runs between device counts), and 48 checkpoints of 8 fake
  # devices' shards would dominate the test's time.
  overrides = ['--config.num_epochs=12', '--config.checkpoint_every_steps=8',
               '--config.model.dropout_rate=0.2', '--config.parallelism.num_devices=1',
               '--config.eval_every_steps=12']
  workdir = tmp_path / 'killed'
  proc = subprocess.Popen(_command(tiny_config, workdir, *overrides), cwd=REPO_ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 120
  ckpt_dir = workdir / 'checkpoints'
  while time.monotonic() < deadline:
    names = [p.name for p in ckpt_dir.iterdir()] if ckpt_dir.exists() else []
    steps = [int(n) for n in names if n.isdigit()]
    if steps and max(steps) >= 16:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = checkpoint.Checkpointer(str(ckpt_dir)).latest_step()
  assert killed_at is not None and killed_at < 12 * 32, 'the run finished before it was killed'
  assert not (workdir / 'results.json').exists()

  rerun = _run(_command(tiny_config, workdir, *overrides), timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f'resuming at step {killed_at}' in rerun.stdout

  tiny_config.num_epochs = 12
  tiny_config.checkpoint_every_steps = 8
  tiny_config.model.dropout_rate = 0.2
  tiny_config.parallelism.num_devices = 1
  tiny_config.eval_every_steps = 12
  straight = str(tmp_path / 'straight')
  expected = training.train_and_evaluate(tiny_config, straight)

  def final(path):
    ckpt = checkpoint.Checkpointer(os.path.join(path, 'checkpoints'))
    return ckpt.restore_numpy(ckpt.latest_step())

  chex.assert_trees_all_equal(final(str(workdir)), final(straight))
  # The evaluations every 12 steps too, those before the kill read back from its checkpoint.
  got = json.loads((workdir / 'results.json').read_text())['eval_history']
  assert [(e['step'], e['eval_loss']) for e in got] == [
      (e['step'], e['eval_loss']) for e in expected['eval_history']]
