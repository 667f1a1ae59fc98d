"""Damaged checkpoints are never trusted (issue 17): checksums recorded at save, checked at
restore; a damaged step is set aside with a warning naming its files and the run falls back to
the newest intact step, or stops with one sentence when none is intact. Atomic writes."""

import json
import logging
import os

import chex
import damage
import jax
import numpy as np
import optax
import pytest

from bigmodel_jax import checkpoint, checksums, models, report, train_state, training
from bigmodel_jax.errors import CheckpointDamagedError


def _arrays(seed=0):
  model = models.MLP(hidden_sizes=(16,), num_outputs=10)
  state = train_state.create_train_state(seed, model=model, tx=optax.adam(1e-2),
                                         input_shape=(28, 28, 1))
  return state.arrays()


def _target():
  return jax.eval_shape(_arrays)


def _biggest_data_file(step_dir):
  files = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(step_dir, 'state'))
           for n in names if os.sep + 'd' + os.sep in os.path.join(root, n) + os.sep or
           os.path.basename(root) == 'd']
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _garble(path):
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 4)
    f.write(np.random.default_rng(0).bytes(size // 2))


DAMAGE = {  # name: (file of the step to damage, how)
    'array data truncated': (_biggest_data_file, _truncate),
    'array data garbled': (_biggest_data_file, _garble),
    'array data with flipped bits': (_biggest_data_file, damage.flip_middle_byte),
    'array data deleted': (_biggest_data_file, os.remove),
    'state/_METADATA truncated': (lambda d: os.path.join(d, 'state', '_METADATA'), _truncate),
    'meta JSON truncated': (lambda d: os.path.join(d, 'meta', 'metadata'), _truncate),
    'meta JSON edited': (lambda d: os.path.join(d, 'meta', 'metadata'), damage.flip_middle_byte),
}


def _two_steps(tmp_path, async_save=False):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'), async_save=async_save)
  ckpt.save(1, _arrays(0), {'step': 1})
  ckpt.save(2, _arrays(1), {'step': 2})
  ckpt.wait()
  return ckpt


@pytest.mark.parametrize('async_save', [False, True])
def test_every_saved_step_gets_a_checksum_manifest(tmp_path, async_save):
  ckpt = _two_steps(tmp_path, async_save)
  for step in (1, 2):
    assert checksums.has_manifest(ckpt.step_dir(step))
    assert checksums.damaged(ckpt.step_dir(step)) == [] and ckpt.problems(step) == []
  restored, meta = ckpt.restore(2, _target())  # The manifest does not disturb Orbax.
  chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(_arrays(1)))
  assert meta == {'step': 2}
  ckpt.close()


@pytest.mark.parametrize('max_to_keep', [1, 2])
def test_async_saves_that_delete_old_steps_keep_their_manifests_right(tmp_path, max_to_keep):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'), async_save=True, max_to_keep=max_to_keep)
  for step in range(1, 6):
    ckpt.save(step, _arrays(step), {'step': step})
  ckpt.close()
  kept = sorted(ckpt.all_steps())
  assert kept == list(range(6 - max_to_keep, 6))
  assert all(ckpt.problems(step) == [] for step in kept)
  assert checksums.has_manifest(ckpt.step_dir(5))


@pytest.mark.parametrize('name', list(DAMAGE))
def test_a_damaged_newest_step_falls_back_with_a_warning(name, tmp_path, caplog):
  ckpt = _two_steps(tmp_path)
  where, damage = DAMAGE[name]
  path = where(ckpt.step_dir(2))
  damage(path)
  with caplog.at_level(logging.WARNING):
    assert ckpt.latest_intact_step() == 1
  warning = caplog.text
  assert os.path.relpath(path, ckpt.step_dir(2)) in warning and 'step 2' in warning
  assert 'using step 1, the newest intact one' in warning
  assert ckpt.all_steps() == [1]  # Set aside, so that a re-run writes step 2 again.
  assert os.path.isdir(str(tmp_path / 'ck-damaged' / '2'))
  restored, _ = ckpt.restore(1, _target())
  chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(_arrays(0)))
  ckpt.save(2, _arrays(1), {'step': 2})
  ckpt.wait()
  assert ckpt.problems(2) == []
  ckpt.close()


def test_no_intact_step_is_one_clear_sentence(tmp_path):
  ckpt = _two_steps(tmp_path)
  _truncate(_biggest_data_file(ckpt.step_dir(2)))
  damage.flip_middle_byte(os.path.join(ckpt.step_dir(1), 'meta', 'metadata'))
  with pytest.raises(CheckpointDamagedError, match=r'Every checkpoint in .*ck is damaged \(step '
                     r'2: state/.* \(truncated\); step 1: meta/metadata \(its bytes changed\)\)'):
    ckpt.latest_intact_step()
  assert sorted(ckpt.all_steps()) == [1, 2]  # Left in place for the user.
  assert ckpt.latest_intact_step(discard_all=True) is None  # A phase that can recompute.
  assert ckpt.all_steps() == []
  ckpt.close()


def test_a_step_without_manifest_is_checked_by_reading(tmp_path, caplog):
  ckpt = _two_steps(tmp_path)
  os.remove(os.path.join(ckpt.step_dir(2), checksums.MANIFEST))  # Killed before the manifest.
  assert ckpt.latest_intact_step() == 2
  _truncate(os.path.join(ckpt.step_dir(2), 'meta', 'metadata'))
  with caplog.at_level(logging.WARNING):
    assert ckpt.latest_intact_step() == 1
  assert 'metadata unreadable' in caplog.text
  ckpt.close()


def _final_arrays(workdir):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'))
  arrays = ckpt.restore_numpy(ckpt.latest_step())
  ckpt.close()
  return arrays


def test_a_run_with_a_damaged_newest_step_resumes_from_the_intact_one(tiny_config, tmp_path,
                                                                      caplog):
  """Flipped bits in the final step: the re-run sets it aside, resumes from the epoch before
  and ends bit-identical to the undamaged run (which the loss would never have told)."""
  tiny_config.parallelism.num_devices = 1
  workdir = str(tmp_path / 'run')
  first = training.train_and_evaluate(tiny_config, workdir)
  expected = _final_arrays(workdir)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  last = str(first['steps'])
  damage.flip_middle_byte(_biggest_data_file(os.path.join(ckpt_dir, last)))
  with caplog.at_level(logging.WARNING):
    again = training.train_and_evaluate(tiny_config, workdir)
  assert f'step {last}: state/' in caplog.text and 'its bytes changed' in caplog.text
  assert again['steps'] == first['steps']
  chex.assert_trees_all_equal(_final_arrays(workdir), expected)
  assert again['final_eval_loss'] == first['final_eval_loss']


def test_atomic_writes_leave_no_temporary_files_and_torn_json_reads_as_absent(tmp_path):
  path = str(tmp_path / 'x.json')
  report.write_json(path, {'a': 1})
  report.write_text(str(tmp_path / 'x.md'), 'table\n')
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, _ = plt.subplots()
  report.save_figure(fig, str(tmp_path / 'x.png'))
  plt.close(fig)
  assert sorted(os.listdir(tmp_path)) == ['x.json', 'x.md', 'x.png']
  assert open(str(tmp_path / 'x.png'), 'rb').read(4) == b'\x89PNG'
  assert report.read_json(path) == {'a': 1}
  with open(path, 'w') as f:
    f.write(json.dumps({'a': 1})[:3])
  assert report.read_json(path) is None and report.read_json(str(tmp_path / 'no.json')) is None
