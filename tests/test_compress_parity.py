"""The launcher's jaxpruner-parity keys: prune.distribution, prune.training (ste | set | rigl),
prune.nm_skip_indivisible - on the tiny config and generated data."""

import os

import numpy as np
import pytest

from bigmodel_jax import checkpoint, compress, pruning
from bigmodel_jax.errors import ConfigError

SIZES = {'Dense_0/kernel': 784 * 32, 'Dense_1/kernel': 32 * 16, 'Dense_2/kernel': 16 * 10}


def _config(idx_dir, tfds_dir):
  from configs import tiny
  config = tiny.get_config()
  config.data.idx_dir, config.data.tfds_data_dir = idx_dir, tfds_dir
  config.model.hidden_sizes = (32, 16)
  config.prune.enabled = True
  config.prune.variants = ('magnitude/global',)
  config.prune.sparsities = (0.9,)
  config.prune.retrain_epochs = 1
  config.prune.export_formats = ()
  config.write_plot = False
  return config


@pytest.fixture
def config(idx_dir, tfds_dir, dense_dir):
  c = _config(idx_dir, tfds_dir)
  c.prune.dense_dir = dense_dir
  return c


def _erk_counts(sparsity):
  shapes = {k: (784, 32) if k == 'Dense_0/kernel' else (32, 16) if k == 'Dense_1/kernel'
            else (16, 10) for k in SIZES}
  params = {k.split('/')[0]: {'kernel': np.zeros(s)} for k, s in shapes.items()}
  spread = pruning.layer_sparsities(params, sparsity, distribution='erk')
  return {f'{k}/kernel': round(v['kernel'] * SIZES[f'{k}/kernel']) for k, v in spread.items()}


def _pruned_counts(row):
  return {k: round(s * SIZES[k]) for k, s in row['layers'].items()}


def test_erk_distribution_one_shot_and_gradual(config, tmp_path):
  config.prune.distribution = 'erk'
  config.prune.retrain_epochs = 0
  row = compress.run(config, str(tmp_path / 'one_shot'))['rows'][0]
  assert _pruned_counts(row) == _erk_counts(0.9)
  assert sum(_pruned_counts(row).values()) == round(0.9 * sum(SIZES.values()))
  assert row['layers']['Dense_2/kernel'] < row['layers']['Dense_0/kernel']  # Small: denser.
  config.prune.schedule, config.prune.retrain_epochs = 'gradual', 2
  config.prune.gradual_end_epoch, config.prune.gradual_every_steps = 1.0, 8
  row = compress.run(config, str(tmp_path / 'gradual'))['rows'][0]
  assert _pruned_counts(row) == _erk_counts(0.9)


def test_ste_training_reaches_the_target_from_the_dense_weights(config, tmp_path):
  config.prune.schedule, config.prune.training = 'gradual', 'ste'
  config.prune.retrain_epochs, config.prune.gradual_end_epoch = 2, 1.0
  config.prune.gradual_every_steps = 8
  workdir = str(tmp_path / 'ste')
  row = compress.run(config, workdir)['rows'][0]
  assert row['sparsity'] == pytest.approx(0.9, abs=1e-4) and row['training'] == 'ste'
  assert row['test_accuracy'] > 0.5  # 10 classes of generated images, chance 0.1.
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, row['dir'], 'retrained', 'checkpoints'))
  arrays = ckpt.restore_arrays(ckpt.latest_step())
  ckpt.close()
  dense = np.asarray(arrays['opt_state']['dense']['Dense_0']['kernel'])
  masks = np.asarray(arrays['masks']['Dense_0']['kernel'])
  params = np.asarray(arrays['params']['Dense_0']['kernel'])
  assert np.all(params[~masks] == 0) and np.count_nonzero(dense[~masks]) > 0.9 * (~masks).sum()


@pytest.mark.parametrize('method', ['set', 'rigl'])
def test_dynamic_sparse_training_keeps_each_layers_count(config, tmp_path, method):
  config.prune.variants = ('magnitude/layerwise',)
  config.prune.training, config.prune.dst_every_steps = method, 4
  config.prune.retrain_epochs = 2
  workdir = str(tmp_path / method)
  row = compress.run(config, workdir)['rows'][0]
  # Weights regrown at zero that got no gradient since (inputs always zero) stay zero, so the
  # reported sparsity (of non-zero weights) may be above the target; the mask counts are exact.
  assert all(s >= 0.9 - 1 / SIZES[k] for k, s in row['layers'].items())
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, row['dir'], 'pruned'))
  first = ckpt.restore_arrays(ckpt.latest_step())['masks']
  ckpt.close()
  final = compress_masks(workdir, row)
  for name in ('Dense_0', 'Dense_1', 'Dense_2'):
    a, b = np.asarray(first[name]['kernel']), np.asarray(final[name]['kernel'])
    assert a.sum() == b.sum() == round(0.1 * a.size)
  assert (np.asarray(first['Dense_0']['kernel']) != np.asarray(final['Dense_0']['kernel'])).any()
  assert np.isfinite(row['test_loss'])


def compress_masks(workdir, row):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, row['dir'], 'retrained', 'checkpoints'))
  arrays = ckpt.restore_arrays(ckpt.latest_step())
  ckpt.close()
  return arrays['opt_state']['masks']


def test_nm_skips_indivisible_layers_when_asked(config, tmp_path, capsys):
  config.prune.dense_dir = ''
  config.num_epochs = 1
  config.model.hidden_sizes = (30,)  # Dense_1 has 30 inputs: not divisible by 4.
  config.prune.variants = ('magnitude/2:4',)
  config.prune.retrain_epochs = 0
  with pytest.raises(ConfigError, match='divisible by 4'):
    compress.run(config, str(tmp_path / 'refused'))
  config.prune.nm_skip_indivisible = True
  config.prune.variants = ('magnitude/2:4', 'wanda/2:4')  # Weight scores and layer-by-layer.
  config.prune.score_batches, config.prune.score_batch_size = 2, 32
  for row in compress.run(config, str(tmp_path / 'skipped'))['rows']:
    assert row['layers']['Dense_1/kernel'] == 0.0 and row['layers']['Dense_0/kernel'] == 0.5
  assert capsys.readouterr().out.count('leaves dense 1 layer(s) whose input dimension') == 2


def test_bad_parity_configs_are_refused(config, tmp_path):
  cases = [
      ({'distribution': 'erdos'}, 'prune.distribution'),
      ({'distribution': 'erk', 'variants': ('magnitude/neuron',)}, 'would ignore it'),
      ({'training': 'dense'}, 'prune.training'),
      ({'training': 'ste'}, "prune.schedule='gradual'"),
      ({'training': 'rigl', 'schedule': 'gradual', 'retrain_epochs': 3},
       "prune.schedule='one_shot'"),
      ({'training': 'set', 'variants': ('magnitude/2:4',)}, 'unstructured'),
      ({'training': 'set', 'dst_drop_fraction': 1.5}, 'dst_drop_fraction'),
  ]
  for changes, message in cases:
    c = config.copy_and_resolve_references()
    for key, value in changes.items():
      c.prune[key] = value
    with pytest.raises(ConfigError, match=message):
      compress.run(c, str(tmp_path / 'bad'))
