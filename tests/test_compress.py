"""The launchable dense -> prune -> retrain workflow on the tiny config and generated data."""

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import damage
import jax
import numpy as np
import pytest

from bigmodel_jax import checkpoint, compress
from bigmodel_jax.errors import CheckpointDamagedError, ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prune_config(idx_dir, tfds_dir):
  from configs import tiny
  config = tiny.get_config()
  config.data.idx_dir, config.data.tfds_data_dir = idx_dir, tfds_dir
  config.model.hidden_sizes = (32, 16)
  config.prune.enabled = True
  config.prune.variants = ('magnitude/global',)
  config.prune.sparsities = (0.9,)
  config.prune.retrain_epochs = 1
  config.prune.score_batches = 2
  config.prune.score_batch_size = 32
  config.write_plot = True
  return config


@pytest.fixture
def prune_config(idx_dir, tfds_dir):
  return _prune_config(idx_dir, tfds_dir)


def test_sweep_end_to_end(prune_config, tmp_path, caplog):
  prune_config.prune.sparsities = (0.75,)
  prune_config.prune.variants = ('magnitude/global', 'magnitude/neuron')
  workdir = str(tmp_path / 'prune')
  results = compress.run(prune_config, workdir)
  rows = {(r['variant'], r['target_sparsity']): r for r in results['rows']}
  assert set(rows) == {('magnitude/global', 0.75), ('magnitude/neuron', 0.75)}
  glob = rows[('magnitude/global', 0.75)]
  kernels = 784 * 32 + 32 * 16 + 160
  assert glob['sparsity'] == pytest.approx(round(0.75 * kernels) / kernels, abs=1e-9)  # Exact.
  assert glob['export']['none']['bytes'] < glob['dense_bytes'] / 2.5
  assert glob['export']['none']['max_abs_logit_diff'] == 0.0
  assert glob['export']['none']['test_accuracy'] == glob['test_accuracy']
  neuron = rows[('magnitude/neuron', 0.75)]
  assert neuron['structured']['hidden_sizes'] == [8, 4]
  assert neuron['structured']['max_abs_logit_diff_vs_masked'] < 1e-5
  assert results['dense_test_accuracy'] > 0.8 and glob['test_accuracy'] > 0.6
  for name in ('results.json', 'results.md', 'sparsity_sweep.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 100
  # The retrained checkpoint carries the masks, and pruned weights are still exactly zero.
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, glob['dir'], 'retrained', 'checkpoints'))
  saved = ckpt.restore_numpy(ckpt.latest_step())
  ckpt.close()
  for p, m in zip(jax.tree.leaves(saved['params']), jax.tree.leaves(saved['masks']), strict=True):
    assert np.all(np.asarray(p)[~np.asarray(m, bool)] == 0)
  assert 1 - np.mean(np.concatenate([np.asarray(saved['masks'][n]['kernel']).ravel()
                                     for n in ('Dense_0', 'Dense_1', 'Dense_2')])) \
      == pytest.approx(glob['sparsity'])
  # A second run finds every phase done and reproduces the table; a torn row.json (as an older
  # version's in-place write could leave) is computed again from the phases' checkpoints.
  row_path = os.path.join(workdir, glob['dir'], 'row.json')
  with open(row_path) as f:
    text = f.read()
  with open(row_path, 'w') as f:
    f.write(text[:len(text) // 2])
  again = compress.run(prune_config, workdir)
  assert not [n for n in os.listdir(workdir) if '.tmp' in n]
  assert [r['test_accuracy'] for r in again['rows']] == \
      [r['test_accuracy'] for r in results['rows']]
  # A damaged pruned checkpoint (flipped bits in its params) is set aside and pruned again.
  pruned = os.path.join(workdir, glob['dir'], 'pruned', '0', 'state')
  damage.flip_middle_byte(damage.largest_file(pruned))
  os.remove(row_path)
  with caplog.at_level(logging.WARNING):
    repaired = compress.run(prune_config, workdir)
  assert 'pruned/0' not in caplog.text and 'none is intact: computing it again' in caplog.text
  assert [r['test_accuracy'] for r in repaired['rows']] == \
      [r['test_accuracy'] for r in results['rows']]
  # A changed config is not served from the cache: retraining resumes from its last checkpoint
  # (params, optimizer state and masks restored) and trains the extra epoch.
  prune_config.prune.retrain_epochs = 2
  more = compress.run(prune_config, workdir)
  assert [r['retrain_epochs'] for r in more['rows']] == [2, 2]
  assert [r['sparsity'] for r in more['rows']] == [r['sparsity'] for r in results['rows']]


def test_gradual_and_iterative(prune_config, dense_dir, tmp_path):
  prune_config.prune.dense_dir = dense_dir
  prune_config.prune.variants = ('magnitude/global',)
  prune_config.prune.sparsities = (0.8,)
  prune_config.prune.schedule = 'gradual'
  prune_config.prune.retrain_epochs = 2
  prune_config.prune.gradual_end_epoch = 1.0
  prune_config.prune.gradual_every_steps = 8
  prune_config.prune.export_formats = ()
  row = compress.run(prune_config, str(tmp_path / 'gradual'))['rows'][0]
  assert row['sparsity'] == pytest.approx(0.8, abs=1e-4)
  # A per-layer override is honoured by the gradual schedule (it ramps to its own target).
  override_config = prune_config.copy_and_resolve_references()
  override_config.prune.overrides = 'Dense_2/kernel=0.5'
  row = compress.run(override_config, str(tmp_path / 'gradual_override'))['rows'][0]
  assert row['layers']['Dense_2/kernel'] == 0.5  # 80 of 160, exactly.
  assert row['layers']['Dense_0/kernel'] > 0.79
  # Step-based (as for language models): the ramp is given in steps of the retraining phase.
  step_config = prune_config.copy_and_resolve_references()
  step_config.prune.retrain_epochs, step_config.prune.retrain_steps = 0, 30
  step_config.prune.gradual_begin_step, step_config.prune.gradual_end_step = 5, 20
  step_config.prune.gradual_every_steps = 5
  row = compress.run(step_config, str(tmp_path / 'gradual_steps'))['rows'][0]
  assert row['sparsity'] == pytest.approx(0.8, abs=1e-4) and row['retrain_steps'] == 30
  prune_config.prune.schedule = 'iterative'
  prune_config.prune.rounds = 2
  prune_config.prune.retrain_epochs = 1
  prune_config.prune.rewind_epoch = 1
  workdir = str(tmp_path / 'iterative')
  row = compress.run(prune_config, workdir)['rows'][0]
  assert row['sparsity'] == pytest.approx(0.8, abs=1e-4) and row['retrain_epochs'] == 2
  assert os.path.isdir(os.path.join(workdir, row['dir'], 'round_2', 'retrained'))
  # Iterative: the override's layer loses the same fraction of what is left in every round.
  prune_config.prune.overrides = 'Dense_2/kernel=0.75'
  workdir = str(tmp_path / 'iterative_override')
  row = compress.run(prune_config, workdir)['rows'][0]
  assert row['layers']['Dense_2/kernel'] == 0.75
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, row['dir'], 'round_1', 'pruned'))
  first = ckpt.restore_arrays(ckpt.latest_step())
  ckpt.close()
  assert np.sum(~np.asarray(first['masks']['Dense_2']['kernel'])) == 80  # 1 - (1 - .75) ** .5.


def test_a_method_registered_in_one_place_runs_through_the_sweep(prune_config, tmp_path,
                                                               monkeypatch):
  from bigmodel_jax import config as config_lib
  from bigmodel_jax import pruning
  # Largest-first: prunes the biggest weights, so it must do worse than magnitude one-shot.
  monkeypatch.setitem(pruning.METHODS, 'inverse', pruning.methods.Method(
      'inverse', '-|w|', kinds=('global',), schedules=('one_shot',),
      score=lambda params, **_: jax.tree.map(lambda w: -abs(w), params)))
  prune_config.prune.variants = ('inverse/global', 'magnitude/global')
  prune_config.prune.retrain_epochs = 0
  rows = {r['variant']: r for r in compress.run(prune_config, str(tmp_path / 'sweep'))['rows']}
  assert rows['inverse/global']['sparsity'] == pytest.approx(rows['magnitude/global']['sparsity'])
  assert (rows['inverse/global']['one_shot_test_accuracy']
          < rows['magnitude/global']['one_shot_test_accuracy'] - 0.2)
  with pytest.raises(ConfigError, match='inverse supports the kinds global'):
    config_lib.parse_variant('inverse/layerwise')
  with pytest.raises(ValueError, match='registered already'):
    pruning.methods.register(pruning.METHODS['inverse'])


def test_bad_prune_configs_are_refused(prune_config, tmp_path):
  cases = [
      ('variants', ('magnitude/diagonal',), 'kind'),
      ('variants', ('hessian/global',), 'score'),
      ('variants', ('magnitude/4:4',), '0 < N < M'),
      ('variants', ('saliency/heads',), 'heads are scored by'),
      ('variants', ('magnitude/heads',), 'has no attention heads'),  # An MLP.
      ('variants', ('wanda/heads',), 'layer by layer'),
      ('sparsities', (0.5, 1.0), r'\[0, 1\)'),
      ('sparsities', (-0.1,), r'\[0, 1\)'),
      ('include', ('*/weight',), 'matches no parameter'),
      ('overrides', 'Dense_0/kernel', 'PATTERN=SPARSITY'),
      ('dense_dir', str(tmp_path / 'nothing'), 'no finished dense run'),
      ('rewind_epoch', 1, 'would ignore it'),  # The schedule is one_shot.
      ('gradual_end_step', 10, 'would ignore them'),
  ]
  for key, value, message in cases:
    config = prune_config.copy_and_resolve_references()
    config.prune[key] = value
    with pytest.raises(ConfigError, match=message):
      compress.run(config, str(tmp_path / f'bad_{key}'))
  gradual_cases = [  # (retrain_steps, gradual_begin_step, gradual_end_step), message
      ((0, 0, 10), 'set prune.retrain_steps too'),
      ((20, -1, -1), 'needs prune.gradual_begin_step and prune.gradual_end_step'),
      ((20, 0, 30), r'gradual_end_step <= prune.retrain_steps; got 0, 30, 20'),
      ((20, 10, 10), 'gradual_begin_step <'),
  ]
  for (steps, begin, end), message in gradual_cases:
    config = prune_config.copy_and_resolve_references()
    config.prune.schedule = 'gradual'
    config.prune.retrain_steps = steps
    config.prune.gradual_begin_step, config.prune.gradual_end_step = begin, end
    with pytest.raises(ConfigError, match=message):
      compress.run(config, str(tmp_path / 'bad_gradual'))
  for variant in ('magnitude/neuron', 'magnitude/2:4', 'wanda/layerwise'):
    config = prune_config.copy_and_resolve_references()
    config.prune.variants = ('magnitude/global', variant)
    config.prune.overrides = 'Dense_2/kernel=0.5'
    with pytest.raises(ConfigError, match='would ignore it'):
      compress.run(config, str(tmp_path / 'bad_overrides'))
  config = prune_config.copy_and_resolve_references()
  config.prune.variants = ('magnitude/2:4',)
  config.model.hidden_sizes = (30,)  # Dense_1 has 30 inputs: not divisible by 4.
  config.prune.include = ('Dense_1/kernel',)
  with pytest.raises(ConfigError, match='divisible by 4'):
    compress.run(config, str(tmp_path / 'bad_nm'))


def test_retrain_without_dense_checkpoint_is_refused(prune_config, tmp_path):
  dense = tmp_path / 'dense_run'
  dense.mkdir()
  (dense / 'results.json').write_text(json.dumps({'epochs_run': 2}))
  prune_config.prune.dense_dir = str(dense)
  with pytest.raises(ConfigError, match='No dense checkpoint'):
    compress.run(prune_config, str(tmp_path / 'prune'))


def test_a_damaged_dense_dir_is_refused_in_one_sentence(prune_config, dense_dir, tmp_path):
  copy = str(tmp_path / 'dense_copy')
  shutil.copytree(dense_dir, copy)
  ckpt_dir = os.path.join(copy, 'checkpoints')
  last = max(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
  damage.flip_middle_byte(damage.largest_file(os.path.join(ckpt_dir, str(last), 'state')))
  prune_config.prune.dense_dir = copy
  with pytest.raises(CheckpointDamagedError, match=f'The checkpoint step {last} in .* is damaged '
                     r'\(state/.* \(its bytes changed\)\): re-run the command that wrote it'):
    compress.run(prune_config, str(tmp_path / 'prune'))
  assert str(last) in os.listdir(ckpt_dir)  # Another run's folder: only read, never moved.


def _retrained_arrays(workdir, label='magnitude-global_s0.9'):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, label, 'retrained', 'checkpoints'))
  step = ckpt.latest_step()
  arrays = None if step is None else ckpt.restore_numpy(step)
  ckpt.close()
  return step, arrays


def test_kill_during_retraining_resumes_with_masks(prune_config, dense_dir, tmp_path):
  """SIGKILL mid-retrain, re-run: retraining resumes and ends equal to an uninterrupted run."""
  workdir = str(tmp_path / 'killed')
  args = [sys.executable, os.path.join(REPO, 'launch.py'), '--config',
          os.path.join(REPO, 'configs', 'tiny.py'), f'--workdir={workdir}',
          '--config.prune.enabled=True', "--config.prune.variants=('magnitude/global',)",
          '--config.prune.sparsities=(0.9,)', '--config.prune.retrain_epochs=8',
          "--config.prune.export_formats=()", '--config.checkpoint_every_steps=8',
          f'--config.data.idx_dir={prune_config.data.idx_dir}',
          f'--config.data.tfds_data_dir={prune_config.data.tfds_data_dir}',
          f'--config.prune.dense_dir={dense_dir}', '--config.model.hidden_sizes=(32, 16)',
          '--config.parallelism.num_devices=1']  # Dense run on 8 devices, retraining on 1.
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(workdir, 'magnitude-global_s0.9', 'retrained', 'checkpoints')
  deadline = time.monotonic() + 120
  while proc.poll() is None and time.monotonic() < deadline:
    names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    if any(n.isdigit() and int(n) >= 16 for n in names):
      proc.kill()
      break
    time.sleep(0.05)
  proc.wait()
  killed_at, _ = _retrained_arrays(workdir)
  assert killed_at is not None and killed_at < 8 * 32, 'retraining finished before the kill'
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
  assert f'resuming at step {killed_at}' in out
  fresh = str(tmp_path / 'fresh')  # The uninterrupted reference, in this process.
  prune_config.prune.retrain_epochs = 8
  prune_config.prune.export_formats = ()
  prune_config.prune.dense_dir = dense_dir
  prune_config.checkpoint_every_steps = 8
  prune_config.parallelism.num_devices = 1
  compress.run(prune_config, fresh)
  (step_a, killed), (step_b, clean) = _retrained_arrays(workdir), _retrained_arrays(fresh)
  assert step_a == step_b == 8 * 32
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) -
                                                        np.asarray(b, np.float64)))),
                       killed, clean)
  assert max(jax.tree.leaves(diffs)) == 0.0
  assert np.array_equal(killed['masks']['Dense_0']['kernel'], clean['masks']['Dense_0']['kernel'])
