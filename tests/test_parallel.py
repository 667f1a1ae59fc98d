"""Single device, pmap and sharded jit give the same runs; checkpoints move between device counts.

The 8 devices are fake CPU devices (conftest.py sets XLA_FLAGS before jax is imported).
"""

import copy
import functools
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bigmodel_jax import checkpoint, compress, data, models, parallel, train_state, training
from bigmodel_jax.config import validate_parallelism
from bigmodel_jax.errors import ConfigError

LAYOUTS = {
    'single': {'mode': 'single'},
    'pmap': {'mode': 'pmap'},
    'sharded': {'mode': 'sharded', 'data': 4, 'fsdp': 2},
}


def _parallelism(**overrides) -> ml_collections.ConfigDict:
  from configs import default
  config = default.get_config().parallelism
  config.update(overrides)
  return config


def _config(**parallelism) -> ml_collections.ConfigDict:
  from configs import default
  config = default.get_config()
  config.parallelism.update(parallelism)
  return config


def _max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _latest_arrays(directory):
  ckpt = checkpoint.Checkpointer(os.path.join(directory, 'checkpoints'), async_save=False)
  try:
    return ckpt.restore_arrays(ckpt.latest_step())
  finally:
    ckpt.close()


def test_eight_fake_devices_are_there():
  assert jax.device_count() == 8


@pytest.mark.parametrize('data_size,fsdp,tensor,devices,expected', [
    (-1, 1, 1, 8, (8, 1, 1)), (-1, 2, 1, 8, (4, 2, 1)), (2, -1, 1, 8, (2, 4, 1)),
    (4, 2, 1, 8, (4, 2, 1)), (1, 1, 1, 1, (1, 1, 1)), (-1, 2, 2, 8, (2, 2, 2)),
])
def test_mesh_shape_resolves_the_rest(data_size, fsdp, tensor, devices, expected):
  config = _parallelism(data=data_size, fsdp=fsdp, tensor=tensor)
  assert parallel.mesh_shape(config, devices) == expected


@pytest.mark.parametrize('data_size,fsdp,message', [
    (-1, -1, 'only one'), (3, 1, 'does not divide'), (2, 2, 'make the product match'),
    (0, 1, 'positive size'),
])
def test_bad_meshes_are_refused(data_size, fsdp, message):
  config = _config(data=data_size, fsdp=fsdp)
  with pytest.raises(ConfigError, match=message):
    validate_parallelism(config)
  with pytest.raises(ConfigError, match=message):
    parallel.from_config(config)
  with pytest.raises(ValueError, match='validate_parallelism'):
    parallel.mesh_shape(config.parallelism, 8)


@pytest.mark.parametrize('overrides,batch_size,message', [
    ({'mode': 'nccl'}, 16, "config.parallelism.mode='nccl' is not accepted; use one of: single"),
    ({'num_devices': 0}, 16, 'num_devices=0: use -1 \\(all\\) or a positive count'),
    ({'num_devices': 16}, 16, 'num_devices=16, but only 8 devices are visible'),
    ({'mode': 'single', 'tensor': 2}, 16, "tensor=2 needs mode='sharded'"),
    ({'tensor': 0}, 16, 'tensor=0: use a positive size'),
    ({'fsdp': -2}, 16, 'fsdp=-2: use a positive size or -1'),
    ({'num_devices': 6}, 16, 'batch_size=16 does not divide over the 6 data-parallel shards of '
                             'this run \\(mesh data=6 x fsdp=1\\)'),
    ({'mode': 'pmap', 'num_devices': 3}, 16, 'over the 3 data-parallel shards of this run '
                                             '\\(3 device\\(s\\)\\)'),
    ({'tensor': 2, 'fsdp': 2}, 10, 'over the 4 data-parallel shards of this run '
                                   '\\(mesh data=2 x fsdp=2 x tensor=2\\)'),
])
def test_validate_parallelism_names_the_key(overrides, batch_size, message):
  config = _config(**overrides)
  config.batch_size = batch_size
  with pytest.raises(ConfigError, match=message):
    validate_parallelism(config)


def test_validate_parallelism_accepts_what_the_layouts_build():
  for layout in (*LAYOUTS.values(), {'tensor': 2, 'fsdp': 2}, {'num_devices': 2, 'mode': 'pmap'}):
    config = _config(**layout)
    validate_parallelism(config)
    par = parallel.from_config(config)
    assert isinstance(par, parallel.LAYOUTS[config.parallelism.mode])
    assert par.mode == config.parallelism.mode


def test_fsdp_spec_splits_the_largest_divisible_dimension():
  P = jax.sharding.PartitionSpec
  assert parallel.fsdp_spec((784, 512), 2, 1024) == P('fsdp', None)
  assert parallel.fsdp_spec((6, 512), 4, 1024) == P(None, 'fsdp')
  assert parallel.fsdp_spec((7, 9 * 1023), 2, 1024) == P()  # Nothing divides: replicated.
  assert parallel.fsdp_spec((10,), 2, 1024) == P()  # Small leaves stay replicated.
  assert parallel.fsdp_spec((784, 512), 1, 1024) == P()


def test_batches_must_divide_and_eval_batches_round_up():
  with pytest.raises(ConfigError, match='batch_size=12 does not divide over the 8'):
    parallel.Parallelism(_parallelism(), batch_size=12, eval_batch_size=100)
  par = parallel.Parallelism(_parallelism(), batch_size=16, eval_batch_size=100)
  assert par.eval_batch_size == 104 and par.describe()['per_device_batch'] == 2
  with pytest.raises(ConfigError, match="mode='nccl'"):
    parallel.Parallelism(_parallelism(mode='nccl'), batch_size=16, eval_batch_size=16)
  with pytest.raises(ConfigError, match='only 8 devices'):
    parallel.Parallelism(_parallelism(num_devices=16), batch_size=16, eval_batch_size=16)


def test_host_rows_of_a_global_batch():
  split = data.Split(np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1), np.arange(40))
  whole = list(data.train_chunks(split, batch_size=8, steps_per_call=2, seed=0, epoch=0,
                                 shuffle=True))
  half = list(data.train_chunks(split, batch_size=8, steps_per_call=2, seed=0, epoch=0,
                                shuffle=True, rows=slice(4, 8)))
  for (_, a), (_, b) in zip(whole, half, strict=True):
    np.testing.assert_array_equal(a['targets'][:, 4:8], b['targets'])
  evals = list(data.eval_batches(split, 16, rows=slice(8, 16)))
  assert [b['mask'].sum() for b in evals] == [8, 8, 0]  # 40 = 16 + 16 + 8 (rows 0-7 of the last).
  np.testing.assert_array_equal(evals[0]['targets'], np.arange(8, 16))


@pytest.fixture(scope='module')
def twenty_step_runs(idx_dir, tfds_dir, tmp_path_factory):
  """20 steps of the tiny config (global batch 16) under each layout; final arrays + results."""
  from configs import tiny
  runs = {}
  for name, layout in LAYOUTS.items():
    config = tiny.get_config()
    config.data.idx_dir, config.data.tfds_data_dir = idx_dir, tfds_dir
    config.model.dropout_rate = 0.0
    config.num_train_steps = 20
    config.parallelism.update(layout)
    workdir = str(tmp_path_factory.mktemp(name))
    results = training.train_and_evaluate(config, workdir)
    runs[name] = (_latest_arrays(workdir), results)
  return runs


@pytest.mark.parametrize('name', ['pmap', 'sharded'])
def test_twenty_steps_agree_with_one_device(twenty_step_runs, name):
  reference, ref_results = twenty_step_runs['single']
  arrays, results = twenty_step_runs[name]
  assert int(arrays['step']) == int(reference['step']) == 20
  diff = _max_abs_diff(arrays['params'], reference['params'])
  print(f'{name}: max abs param diff after 20 Adam steps vs single: {diff:.2e}')
  assert diff < 1e-5
  assert _max_abs_diff(arrays['opt_state'], reference['opt_state']) < 1e-5
  assert results['history'][0]['train_loss'] == pytest.approx(
      ref_results['history'][0]['train_loss'], abs=1e-5)
  assert results['final_eval_loss'] == pytest.approx(ref_results['final_eval_loss'], abs=1e-5)
  assert results['parallelism']['mode'] == name
  assert results['parallelism']['num_devices'] == (1 if name == 'single' else 8)


def test_pruning_and_retraining_agree_across_layouts(idx_dir, tfds_dir, tmp_path):
  from test_compress import _prune_config
  finals = {}
  for name, layout in LAYOUTS.items():
    config = _prune_config(idx_dir, tfds_dir)
    config.num_epochs = 1
    config.data.max_train_examples = 256
    config.prune.variants = ('saliency/global',)  # Gradient scores and a global threshold.
    config.prune.export_formats = ()
    config.write_plot = False
    config.parallelism.update(layout)
    results = compress.run(config, str(tmp_path / name))
    retrained = [_latest_arrays(str(tmp_path / name / row['dir'] / 'retrained'))
                 for row in results['rows']]
    finals[name] = (results, retrained)
  ref_results, ref_arrays = finals['single']
  for name in ('pmap', 'sharded'):
    results, arrays = finals[name]
    for row, ref_row, a, b in zip(results['rows'], ref_results['rows'], arrays, ref_arrays,
                                  strict=True):
      assert row['sparsity'] == ref_row['sparsity']
      chex.assert_trees_all_equal(a['masks'], b['masks'])  # The very same weights pruned.
      diff = _max_abs_diff(a['params'], b['params'])
      print(f'{name} {row["variant"]}: max abs param diff after prune + retrain: {diff:.2e}')
      assert diff < 1e-5
      assert row['test_accuracy'] == pytest.approx(ref_row['test_accuracy'], abs=1e-6)


def _state(par, hidden=(64,)):
  model = models.create_model(ml_collections.ConfigDict(
      {'name': 'mlp', 'hidden_sizes': hidden, 'activation': 'relu', 'kernel_init': 'lecun_normal',
       'init_scale': 0.01, 'dropout_rate': 0.0}), 10)
  init = functools.partial(train_state.create_train_state, 3, model=model, tx=optax.adam(1e-3),
                           input_shape=(28, 28, 1), masked=True)
  return par.init(init), init


@pytest.mark.parametrize('before,after', [
    ({'num_devices': 8, 'fsdp': 8}, {'mode': 'single'}),
    ({'mode': 'single'}, {'num_devices': 8, 'fsdp': 4}),
    ({'num_devices': 8, 'fsdp': 8}, {'num_devices': 4, 'data': 2, 'fsdp': 2}),
    ({'num_devices': 8, 'fsdp': 2}, {'mode': 'pmap', 'num_devices': 4}),
], ids=['8to1', '1to8', '8to4', 'fsdp8to_pmap4'])
def test_checkpoints_restore_on_another_device_count(tmp_path, before, after):
  writer = parallel.Parallelism(_parallelism(**before), batch_size=8, eval_batch_size=8)
  state, init = _state(writer)
  kernel = state.params['Dense_0']['kernel']
  assert len(kernel.sharding.device_set) == len(writer.devices)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, state.arrays(), {'step': 1})
  ckpt.wait()
  reader = parallel.Parallelism(_parallelism(**after), batch_size=8, eval_batch_size=8)
  arrays, _ = ckpt.restore(1, reader.abstract(jax.eval_shape(init).arrays()))
  ckpt.close()
  chex.assert_trees_all_equal(jax.device_get(arrays), jax.device_get(state.arrays()))
  restored = arrays['params']['Dense_0']['kernel']
  assert restored.sharding.is_equivalent_to(
      reader.shardings(restored), restored.ndim)
  assert restored.sharding.is_equivalent_to(arrays['masks']['Dense_0']['kernel'].sharding, 2)


def test_a_run_moves_between_device_counts_and_prunes_from_there(tiny_config, tmp_path):
  """Epoch 1 on 8 devices (FSDP), epoch 2 resumed on one; then pruning on 4 from that run."""
  straight, moved = str(tmp_path / 'straight'), str(tmp_path / 'moved')
  tiny_config.model.dropout_rate = 0.0
  reference = training.train_and_evaluate(copy.deepcopy(tiny_config), straight)
  first = copy.deepcopy(tiny_config)
  first.num_epochs = 1
  first.parallelism.update(fsdp=8)
  training.train_and_evaluate(first, moved)
  second = copy.deepcopy(tiny_config)
  second.parallelism.update(mode='single')
  resumed = training.train_and_evaluate(second, moved)
  assert resumed['history'][0]['train_loss'] == pytest.approx(
      reference['history'][0]['train_loss'], abs=1e-5)
  assert _max_abs_diff(_latest_arrays(moved)['params'],
                       _latest_arrays(straight)['params']) < 1e-5
  prune = copy.deepcopy(tiny_config)
  prune.prune.enabled = True
  prune.prune.dense_dir = moved
  prune.prune.retrain_epochs = 1
  prune.prune.export_formats = ()
  prune.write_plot = False
  prune.parallelism.update(num_devices=4, data=2, fsdp=2)
  results = compress.run(prune, str(tmp_path / 'prune'))
  assert results['rows'][0]['sparsity'] == pytest.approx(0.9, abs=1e-3)
  assert results['num_devices'] == 4 and results['rows'][0]['test_accuracy'] > 0.5


@pytest.mark.parametrize('layout', [{'fsdp': 8}, {'data': 2, 'fsdp': 4}], ids=['fsdp8', 'fsdp4'])
def test_selection_on_sharded_params_matches_one_device(layout):
  """Scores and exact global / layer-wise / N:M selection on FSDP-sharded params."""
  from bigmodel_jax import pruning
  par = parallel.Parallelism(_parallelism(**layout), batch_size=8, eval_batch_size=8)
  single = parallel.Parallelism(_parallelism(mode='single'), batch_size=8, eval_batch_size=8)
  sharded, _ = _state(par, hidden=(64, 32))
  reference = jax.device_get(sharded.params)
  assert len(sharded.params['Dense_0']['kernel'].sharding.device_set) == 8
  prunable = pruning.prunable_tree(reference)
  for scope in ('global', 'layerwise'):
    select = jax.jit(lambda p, scope=scope: pruning.masks_from_scores(
        pruning.magnitude(p), 0.8, scope=scope, prunable=prunable))
    on_mesh = select(sharded.params)
    on_one = select(single.place(reference))
    chex.assert_trees_all_equal(jax.device_get(on_mesh), jax.device_get(on_one))
    stats = pruning.sparsity_stats(reference, jax.device_get(on_mesh), prunable)
    assert stats['sparsity'] == pytest.approx(0.8, abs=1e-5)  # round(0.8 * n) / n
  nm = jax.jit(lambda p: pruning.nm_masks(pruning.magnitude(p), 2, 4, prunable=prunable))
  chex.assert_trees_all_equal(jax.device_get(nm(sharded.params)),
                              jax.device_get(nm(single.place(reference))))
  # Placed masks share their params' layout.
  masks = par.place(jax.device_get(on_mesh))
  for p, m in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(masks), strict=True):
    assert m.sharding.is_equivalent_to(p.sharding, p.ndim)


def test_tensor_axis_splits_heads_and_mlp_by_logical_names():
  from bigmodel_jax.models import transformer
  P = jax.sharding.PartitionSpec
  model = transformer.GPT(vocab_size=64, num_layers=1, num_heads=4, embed_dim=32, max_len=16)
  par = parallel.Parallelism(_parallelism(data=2, fsdp=2, tensor=2), batch_size=8,
                             eval_batch_size=8)
  assert par.describe()['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert par.shards == 4  # The batch is split 4 ways; tensor pairs share examples.
  par.set_logical_axes(models.logical_axes(model, (16,), jnp.int32))
  init = functools.partial(train_state.create_train_state, 0, model=model, tx=optax.adam(1e-3),
                           input_shape=(16,), input_dtype=jnp.int32, masked=True)
  state = par.init(init)
  attn = state.params['block_0']['attn']
  assert attn['query']['kernel'].sharding.spec == P('fsdp', 'tensor')
  assert attn['out']['kernel'].sharding.spec == P('tensor', 'fsdp')
  assert state.params['block_0']['fc']['kernel'].sharding.spec == P('fsdp', 'tensor')
  assert state.params['wte']['embedding'].sharding.spec == P('tensor', 'fsdp')
  mu = state.opt_state[0].mu['block_0']['attn']['out']['kernel']
  assert mu.sharding.spec == P('tensor', 'fsdp')  # Moments and masks follow their params.
  assert state.masks['block_0']['attn']['out']['kernel'].sharding.spec == P('tensor', 'fsdp')
  with pytest.raises(ConfigError, match="needs mode='sharded'"):
    parallel.Parallelism(_parallelism(mode='pmap', tensor=2), batch_size=8, eval_batch_size=8)


def test_sharding_rules_are_data_first_match_wins():
  P = jax.sharding.PartitionSpec
  par = parallel.Parallelism(_parallelism(data=2, fsdp=4), batch_size=8, eval_batch_size=8)
  tree = {'params': {'Dense_0': {'kernel': np.zeros((784, 512)), 'bias': np.zeros(512)},
                     'Dense_1': {'kernel': np.zeros((512, 12))}}}
  specs = lambda strategy: jax.tree.map(lambda s: s.spec, parallel.infer_shardings(
      tree, par.mesh, strategy, fsdp_min_size=1024))
  default = specs(parallel.FSDP_STRATEGY)
  assert default['params']['Dense_0']['kernel'] == P('fsdp', None)
  assert default['params']['Dense_0']['bias'] == P()  # Below fsdp_min_size.
  assert default['params']['Dense_1']['kernel'] == P('fsdp', None)
  assert jax.tree.map(lambda s: s.spec, par.shardings(tree)) == default  # The layout's own rules.
  # A rule that declines (None) lets the next pair decide; unmatched leaves are replicated.
  by_hand = specs([(r'.*Dense_1/.*', 'replicate'),
                   (r'params/.*', lambda path, shape, context: P(None, 'fsdp')
                    if len(shape) == 2 and shape[1] % context.axis_sizes['fsdp'] == 0 else None)])
  assert by_hand['params']['Dense_1']['kernel'] == P()
  assert by_hand['params']['Dense_0']['kernel'] == P(None, 'fsdp')
  assert by_hand['params']['Dense_0']['bias'] == P()
  assert set(parallel.RULES) >= {'replicate', 'fsdp', 'logical'}
  assert dict(parallel.LOGICAL_RULES)['heads'] == 'tensor'


def test_each_mode_gets_its_layout_and_describes_it():
  par = parallel.Parallelism(_parallelism(mode='single'), batch_size=8, eval_batch_size=8)
  assert isinstance(par, parallel.SingleLayout) and len(par.devices) == 1
  assert par.summary().startswith('single on 1 ') and 'mesh' not in par.summary()
  assert par.describe_mesh() == '1 device(s)' and par.shards == 1
  par = parallel.Parallelism(_parallelism(mode='pmap'), batch_size=8, eval_batch_size=8)
  assert isinstance(par, parallel.PmapLayout) and par.describe()['mesh']['data'] == 8
  assert par.local_rows(8) == slice(0, 8)
  assert par.put_batch({'x': np.zeros((3, 8, 5))}, stacked=True)['x'].shape == (3, 8, 1, 5)
  par = parallel.Parallelism(_parallelism(data=4, fsdp=2), batch_size=8, eval_batch_size=8)
  assert isinstance(par, parallel.ShardedLayout) and par.shards == 8
  assert 'mesh data=4 x fsdp=2' in par.summary()
  batch = par.put_batch({'x': np.arange(16.0).reshape(2, 8)}, stacked=True)['x']
  assert batch.sharding.spec == jax.sharding.PartitionSpec(None, parallel.BATCH_AXES)
  np.testing.assert_array_equal(par.to_host(batch), np.arange(16.0).reshape(2, 8))
