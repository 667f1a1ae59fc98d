"""End-to-end tests of the training loop on the tiny config and generated data."""

import json
import math
import os

import chex
import pytest

from bigmodel_jax import checkpoint, training
from bigmodel_jax.errors import CheckpointMismatchError, ConfigError, NonFiniteLossError


def _final_arrays(workdir):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'))
  step = ckpt.latest_step()
  return step, ckpt.restore_numpy(step)  # Untargeted: plain arrays, for comparison only.


def test_run_writes_every_artefact(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  results = training.train_and_evaluate(tiny_config, workdir)
  steps_per_epoch = 512 // 16
  assert results['steps'] == 2 * steps_per_epoch and results['epochs_run'] == 2
  assert results['num_params'] == 784 * 32 + 32 + 32 * 10 + 10
  assert 0 <= results['final_eval_accuracy'] <= 1 and results['train_examples_per_s'] > 0
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['final_eval_loss'] == results['final_eval_loss']
  assert os.path.getsize(os.path.join(workdir, 'curves.png')) > 1000
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert any(e.startswith('events.out.tfevents') for e in events)
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(2 * steps_per_epoch)))
  assert [h['epoch'] for h in results['history']] == [1, 2]


def test_learns_the_generated_task(tiny_config, tmp_path):
  tiny_config.num_epochs = 4
  results = training.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  assert results['best_eval_accuracy'] > 0.9


def test_label_smoothing_trains_on_smoothed_targets_and_evaluates_plain(tiny_config, tmp_path):
  tiny_config.num_epochs, tiny_config.label_smoothing = 4, 0.5
  results = training.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  # Targets 0.55 / 0.05 x 9 have entropy 1.677: the smoothed loss cannot go below it, while the
  # plain cross-entropy of the same (well-trained) model on the eval split does.
  floor = -0.55 * math.log(0.55) - 9 * 0.05 * math.log(0.05)
  assert all(h['train_loss'] > floor - 1e-3 for h in results['history'])
  assert results['best_eval_accuracy'] > 0.9 and results['final_eval_loss'] < floor - 0.5


def test_resume_is_exact(tiny_config, tmp_path):
  straight = str(tmp_path / 'straight')
  training.train_and_evaluate(tiny_config, straight)
  resumed = str(tmp_path / 'resumed')
  tiny_config.num_epochs = 1
  training.train_and_evaluate(tiny_config, resumed)
  tiny_config.num_epochs = 2
  results = training.train_and_evaluate(tiny_config, resumed)
  step_a, a = _final_arrays(straight)
  step_b, b = _final_arrays(resumed)
  assert step_a == step_b == 64
  chex.assert_trees_all_equal(a, b)
  with open(os.path.join(straight, 'results.json')) as f:
    assert json.load(f)['history'][1]['eval_loss'] == results['history'][1]['eval_loss']


def test_mid_epoch_checkpoints_resume_exactly(tiny_config, tmp_path, monkeypatch):
  tiny_config.model.dropout_rate = 0.3
  tiny_config.checkpoint_every_steps = 8
  straight = str(tmp_path / 'straight')
  expected = training.train_and_evaluate(tiny_config, straight)

  class Crash(Exception):
    pass

  def crash(*args, **kwargs):
    raise Crash()

  resumed = str(tmp_path / 'resumed')
  with monkeypatch.context() as patch:  # Dies at the first epoch's end, after saving step 24.
    patch.setattr('bigmodel_jax.training.loop.evaluate', crash)
    with pytest.raises(Crash):
      training.train_and_evaluate(tiny_config, resumed)
  assert _final_arrays(resumed)[0] == 24
  results = training.train_and_evaluate(tiny_config, resumed)
  chex.assert_trees_all_equal(_final_arrays(straight)[1], _final_arrays(resumed)[1])
  for got, want in zip(results['history'], expected['history'], strict=True):
    assert got['train_loss'] == pytest.approx(want['train_loss'], rel=1e-12)
    assert got['eval_loss'] == want['eval_loss']


def test_finished_run_says_so(tiny_config, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  first = training.train_and_evaluate(tiny_config, workdir)
  capsys.readouterr()
  again = training.train_and_evaluate(tiny_config, workdir)
  assert 'already finished' in capsys.readouterr().out
  assert again == first


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  tiny_config.num_epochs = 1
  training.train_and_evaluate(tiny_config, workdir)
  tiny_config.num_epochs = 2
  tiny_config.optimizer.name = 'adam'
  tiny_config.optimizer.learning_rate = 1e30
  with pytest.raises(NonFiniteLossError, match=r'at step \d+.*last good checkpoint is step 32'):
    training.train_and_evaluate(tiny_config, workdir)
  assert _final_arrays(workdir)[0] == 32
  fresh = str(tmp_path / 'fresh')  # Before any checkpoint: no step to name, what to do instead.
  with pytest.raises(NonFiniteLossError, match='No checkpoint was written yet: lower optimizer'):
    training.train_and_evaluate(tiny_config, fresh)


def test_a_workdir_of_another_model_is_refused(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  tiny_config.num_train_steps = 8
  training.train_and_evaluate(tiny_config, workdir)
  tiny_config.model.hidden_sizes = (64,)
  with pytest.raises(CheckpointMismatchError, match='use a new --workdir'):
    training.train_and_evaluate(tiny_config, workdir)


def test_early_stopping(tiny_config, tmp_path):
  tiny_config.num_epochs = 30
  tiny_config.early_stopping_patience = 1
  tiny_config.early_stopping_min_delta = 10.0  # Nothing counts as improvement after epoch 1.
  results = training.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  assert results['stopped_early'] and results['epochs_run'] == 2


def test_eval_every_steps_evaluates_at_the_call_that_reaches_each_multiple(tiny_config, tmp_path,
                                                                         capsys):
  tiny_config.eval_every_steps = 12  # Calls end at 8, 16, 24, 32 | 40, 48, 56, 64.
  results = training.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  # 12 -> 16, 24, 36 -> 40, 48; 60 falls in the call that ends epoch 2, whose evaluation covers it.
  assert [e['step'] for e in results['eval_history']] == [16, 24, 32, 40, 48, 64]
  assert [h['step'] for h in results['history']] == [32, 64]  # One record per epoch, as before.
  assert results['history'][1]['eval_loss'] == results['eval_history'][-1]['eval_loss']
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[1] for line in lines if line.startswith('step ')] == [
      '16/64', '24/64', '40/64', '48/64']
  assert all(' ex/s' in line and 'eval_accuracy' in line for line in lines
             if line.startswith(('step ', 'epoch ')))
  assert 'tokens_per_example' not in results and 'perplexity' not in json.dumps(results)


def test_early_stopping_counts_evaluations_inside_epochs(tiny_config, tmp_path, capsys):
  tiny_config.num_epochs, tiny_config.eval_every_steps = 30, 8
  tiny_config.checkpoint_every_steps = 8  # At the stop too: the epoch's own save must win.
  tiny_config.early_stopping_patience = 1
  tiny_config.early_stopping_min_delta = 10.0  # Nothing counts as improvement after step 8.
  workdir = str(tmp_path / 'run')
  results = training.train_and_evaluate(tiny_config, workdir)
  assert results['stopped_early'] and results['steps'] == 16
  assert [e['step'] for e in results['eval_history']] == [8, 16]
  assert results['best_eval_loss_step'] == 8
  # The epoch ends at the stop, with the evaluation just made (not a second one).
  assert results['epochs_run'] == 1 and results['history'][0]['steps'] == 16
  assert results['history'][0]['eval_loss'] == results['eval_history'][-1]['eval_loss']
  assert 'Early stop: eval loss has not improved for 1 evaluation.' in capsys.readouterr().out
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'))
  assert ckpt.latest_step() == 16 and len(ckpt.restore_meta(16)['history']) == 1
  assert training.train_and_evaluate(tiny_config, workdir) == results  # Finished.


def test_batch_larger_than_the_data_is_refused(tiny_config, tmp_path):
  tiny_config.batch_size = 4096
  with pytest.raises(ConfigError, match='config.batch_size=4096 is larger than the 512'):
    training.train_and_evaluate(tiny_config, str(tmp_path / 'run'))


def test_validation_holdout_reports_test_separately(tiny_config, tmp_path):
  tiny_config.data.validation_size = 100
  tiny_config.data.max_train_examples = 0
  tiny_config.num_train_steps = 20
  results = training.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
  assert results['eval_split'] == 'validation'
  assert results['test_accuracy'] is not None and results['test_loss'] > 0


def test_profile_is_written(tiny_config, tmp_path):
  tiny_config.profile_steps = 8
  tiny_config.num_train_steps = 16
  workdir = str(tmp_path / 'run')
  training.train_and_evaluate(tiny_config, workdir)
  found = [f for _, _, files in os.walk(os.path.join(workdir, 'profile')) for f in files]
  assert any(f.endswith('.xplane.pb') for f in found)


def test_a_changed_epoch_length_is_refused(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  tiny_config.num_epochs = 1
  training.train_and_evaluate(tiny_config, workdir)
  tiny_config.num_epochs, tiny_config.batch_size = 2, 32
  with pytest.raises(ConfigError, match='another epoch length'):
    training.train_and_evaluate(tiny_config, workdir)


def test_two_runs_cannot_share_a_workdir(tiny_config, tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  held = training.lock_workdir(str(workdir))
  with pytest.raises(ConfigError, match=r'is in use by a training run \(pid \d+\)'):
    training.train_and_evaluate(tiny_config, str(workdir))
  held.close()
  tiny_config.num_train_steps = 2
  assert training.train_and_evaluate(tiny_config, str(workdir))['steps'] == 2


def test_every_kind_of_run_takes_the_same_workdir_lock(tiny_config, tmp_path):
  from bigmodel_jax import compress
  from configs import smollm2_prune
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  held = training.lock_workdir(workdir, 'pruning sweep')
  with pytest.raises(ConfigError, match='in use by a pruning sweep run'):
    training.train_and_evaluate(tiny_config, workdir)
  held.close()
  # Later too: a workdir keeps the kind of run it holds (results.json is that run's).
  with pytest.raises(ConfigError, match='holds a pruning sweep run; a training run needs a '
                     'folder of its own'):
    training.train_and_evaluate(tiny_config, workdir)
  other = str(tmp_path / 'other')
  os.makedirs(other)
  held = training.lock_workdir(other)
  tiny_config.prune.enabled = True
  with pytest.raises(ConfigError, match='in use by a training run'):
    compress.run(tiny_config, other)
  with pytest.raises(ConfigError, match='in use by a training run'):
    compress.pretrained_lm.run(smollm2_prune.get_config(), other)  # Before the model loads.
  held.close()
  with pytest.raises(ConfigError, match='holds a training run; a pruning sweep run needs'):
    compress.run(tiny_config, other)
