"""One-shot pruning of every linear-like Flax layer: DenseGeneral (attention), Conv, Einsum,
shared layers, nested blocks, any calibration iterable, and errors that name the arguments."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import pruning
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import layerwise, linear, oneshot


class Mixed(nn.Module):
  """Conv stem, Flax attention (DenseGeneral q/k/v/out), an Einsum, a Dense called twice."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (3, 3), strides=2, padding='SAME', name='stem')(x))  # [b, 4, 4, 8]
    h2 = nn.Conv(8, (2, 3), padding='CIRCULAR', kernel_dilation=(1, 2), name='conv2')(h)
    t = h2.reshape(h2.shape[0], -1, 8)
    t = t + nn.MultiHeadDotProductAttention(num_heads=2, name='attn')(t)
    e = nn.Einsum((4, 8, 8), 'bld,hdk->blhk', name='mix')(t)  # Kernel [heads, in, out].
    e = e.reshape(*e.shape[:2], 32)
    shared = nn.Dense(32, name='shared')
    return jnp.mean(shared(nn.relu(shared(e))), axis=1)


@pytest.fixture(scope='module')
def mixed():
  model = Mixed()
  rng = np.random.default_rng(0)
  batches = [rng.normal(size=(4, 8, 8, 4)).astype(np.float32) for _ in range(3)]
  params = model.init(jax.random.PRNGKey(0), batches[0])['params']
  return model, params, batches


def _kernels(params):
  return {p: x for p, x in zip(pruning.leaf_paths(params), jax.tree.leaves(params),
                               strict=True) if p.endswith('kernel')}


def test_every_call_is_a_matrix_product_of_its_rows_and_kernel_view(mixed):
  """Each captured call's output is rows @ kernel matrix (+ bias): X is the right input."""
  model, params, batches = mixed
  outputs = []

  def keep_output(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and isinstance(context.module, linear.KINDS):
      outputs.append(y)
    return y
  with nn.intercept_methods(keep_output):
    model.apply({'params': params}, batches[0])
  calls = linear.calls(model.apply, {'params': params}, batches[0])
  kernels = _kernels(params)
  leaves = dict(zip(pruning.leaf_paths(params), jax.tree.leaves(params), strict=True))
  assert [c.path for c in calls] == [
      'stem/kernel', 'conv2/kernel', 'attn/query/kernel', 'attn/key/kernel',
      'attn/value/kernel', 'attn/out/kernel', 'mix/kernel', 'shared/kernel', 'shared/kernel']
  assert calls[0].rows.shape == (4 * 4 * 4, 3 * 3 * 4)  # im2col: [b * oh * ow, kh * kw * cin]
  assert calls[5].view.fan_in == 8  # out kernel [heads, head_dim, embed] -> [8, 8]
  for call, y in zip(calls, outputs, strict=True):
    kernel = kernels[call.path]
    assert call.view.shape == kernel.shape
    np.testing.assert_array_equal(call.view.from_matrix(call.view.to_matrix(kernel)), kernel)
    want = call.rows @ call.view.to_matrix(kernel)
    bias = leaves.get(call.path[:-len('kernel')] + 'bias')
    if bias is not None:
      want = want + bias.reshape(-1)
    np.testing.assert_allclose(want, np.asarray(y).reshape(want.shape), atol=1e-5,
                               err_msg=call.path)


def test_conv_stats_are_those_of_im2col_patches(mixed):
  model, params, batches = mixed
  stats = oneshot.collect_stats(model.apply, params, batches, ['stem/kernel'])['stem/kernel']
  rows = []
  for x in batches:  # SAME padding for a 3x3 kernel at stride 2 on 8x8: 0 before, 1 after.
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    for i in range(4):
      for j in range(4):
        rows.append(padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :].reshape(4, -1))
  rows = np.concatenate(rows)
  assert int(stats.count) == rows.shape[0]
  np.testing.assert_allclose(stats.sq_norm, (rows ** 2).sum(0), rtol=1e-5)
  np.testing.assert_allclose(stats.xtx, rows.T @ rows, rtol=1e-4, atol=1e-4)


def test_a_shared_layer_is_calibrated_on_every_call(mixed):
  model, params, batches = mixed
  stats = oneshot.collect_stats(model.apply, params, batches, ['shared/kernel'])['shared/kernel']
  rows = [c.rows for x in batches for c in linear.calls(model.apply, {'params': params}, x)
          if c.path == 'shared/kernel']
  assert len(rows) == 2 * len(batches)
  assert int(stats.count) == sum(r.shape[0] for r in rows)
  np.testing.assert_allclose(stats.sq_norm, sum(jnp.sum(r * r, 0) for r in rows), rtol=1e-5)


@pytest.mark.parametrize('method', ['wanda', 'sparsegpt'])
@pytest.mark.parametrize('target', [{'sparsity': 0.5}, {'n': 2, 'm': 4}], ids=['50%', '2:4'])
def test_one_shot_prunes_attention_conv_and_einsum_exactly(mixed, method, target):
  model, params, batches = mixed
  prunable = pruning.prunable_tree(params)
  new, masks = oneshot.prune(model.apply, params, batches, method=method, prunable=prunable,
                             block_size=8, **target)
  calls = {c.path: c for c in linear.calls(model.apply, {'params': params}, batches[0])}
  kernels, new_kernels, keep = _kernels(params), _kernels(new), _kernels(masks)
  assert set(kernels) == set(calls)
  for path, kernel in kernels.items():
    mask = np.asarray(keep[path])
    assert mask.shape == kernel.shape and mask.dtype == bool
    fan_in = calls[path].view.fan_in
    per_output = method == 'wanda' and 'n' not in target  # round(0.5 * fan_in) of each output.
    want = kernel.size // fan_in * round(0.5 * fan_in) if per_output else round(0.5 * kernel.size)
    assert int((~mask).sum()) == want, path
    assert bool(np.all(np.where(mask, True, np.asarray(new_kernels[path]) == 0)))
    matrix = np.asarray(calls[path].view.to_matrix(mask))
    if 'n' in target:  # 2 of every 4 consecutive inputs of the kernel's matrix view.
      assert (matrix.reshape(-1, 4, matrix.shape[1]).sum(1) == 2).all(), path
    elif method == 'wanda':  # Each output unit loses the same number of inputs.
      assert (matrix.sum(0) == fan_in - round(0.5 * fan_in)).all(), path
  if method == 'sparsegpt':
    out_dense = model.apply({'params': params}, batches[0])
    out_masked = model.apply({'params': pruning.apply_masks(params, masks)}, batches[0])
    out_new = model.apply({'params': new}, batches[0])
    # Its weight updates reconstruct: nearer the dense outputs than the same mask alone.
    assert float(jnp.mean((out_new - out_dense) ** 2)) < float(
        jnp.mean((out_masked - out_dense) ** 2))


def test_wanda_on_an_attention_out_kernel_uses_its_matrix_view(mixed):
  model, params, batches = mixed
  prunable = pruning.prunable_tree(params, ('attn/out/kernel',))
  _, masks = oneshot.prune(model.apply, params, batches, method='wanda', prunable=prunable,
                           sparsity=0.5)
  stats = oneshot.collect_stats(model.apply, params, batches, ['attn/out/kernel'])
  kernel = params['attn']['out']['kernel']  # [heads, head_dim, embed]
  want = layerwise.wanda_mask(kernel.reshape(-1, kernel.shape[-1]), stats['attn/out/kernel'], 0.5)
  np.testing.assert_array_equal(masks['attn']['out']['kernel'], want.reshape(kernel.shape))


class Nested(nn.Module):
  """Blocks nested under one parent: 'body/block_i/dense'."""

  @nn.compact
  def __call__(self, x):
    class Body(nn.Module):
      @nn.compact
      def __call__(self, x):
        for i in range(3):
          x = nn.tanh(nn.Dense(16, name=f'block_{i}')(x))
        return x
    return Body(name='body')(x)


def test_group_by_calibrates_nested_blocks_in_turn():
  model = Nested()
  rng = np.random.default_rng(1)
  batches = [rng.normal(size=(32, 16)).astype(np.float32) for _ in range(2)]
  params = model.init(jax.random.PRNGKey(0), batches[0])['params']
  prunable = pruning.prunable_tree(params)
  lines = []
  run = lambda **kw: oneshot.prune(model.apply, params, batches, method='sparsegpt',
                                   prunable=prunable, sparsity=0.6, log=lines.append, **kw)
  one_group, _ = run()
  assert lines[0].endswith("3 layers in 1 groups (group_by=1)")
  by_depth, _ = run(group_by=2)
  by_pattern, _ = run(group_by=('body/block_*',))
  jax.tree.map(np.testing.assert_array_equal, by_depth, by_pattern)
  # By hand: block 1 is pruned on the outputs of the pruned block 0.
  only = lambda name: pruning.prunable_tree(params, (f'body/{name}/kernel',))
  step, _ = oneshot.prune(model.apply, params, batches, method='sparsegpt',
                          prunable=only('block_0'), sparsity=0.6)
  step, _ = oneshot.prune(model.apply, step, batches, method='sparsegpt',
                          prunable=only('block_1'), sparsity=0.6)
  np.testing.assert_array_equal(by_depth['body']['block_1']['kernel'],
                                step['body']['block_1']['kernel'])
  assert not np.array_equal(one_group['body']['block_1']['kernel'],
                            step['body']['block_1']['kernel'])
  for bad, match in ((('body/blk_*', 'body/block_*'), "'body/blk_\\*' matches no"),
                     (('nothing',), 'lies under none'), ('body/*', 'bare string'), (0, 'depth')):
    with pytest.raises(ConfigError, match=match):
      run(group_by=bad)


def test_calibration_batches_any_iterable_arrays_dicts_tuples():
  model = Nested()
  rng = np.random.default_rng(2)
  arrays = [rng.normal(size=(8, 16)).astype(np.float32) for _ in range(2)]
  params = model.init(jax.random.PRNGKey(0), arrays[0])['params']
  prunable = pruning.prunable_tree(params)
  run = lambda batches, **kw: oneshot.prune(model.apply, params, batches, method='wanda',
                                            prunable=prunable, sparsity=0.5, **kw)[1]
  want = run(arrays)
  for batches, kw in (((a for a in arrays), {}),
                      ([{'x': a, 'y': 0} for a in arrays], {'input_key': 'x'}),
                      ([(a, 0) for a in arrays], {'input_key': 0}),
                      ([{'x': a} for a in arrays], {'input_key': lambda b: b['x']})):
    jax.tree.map(np.testing.assert_array_equal, run(batches, **kw), want)
  for batches, kw, match in (([], {}, 'batches is empty'),
                             ((a for a in ()), {}, 'batches is empty'),
                             ([{'x': a} for a in arrays], {}, "keys x: pass input_key="),
                             ([(a, 0) for a in arrays], {}, 'tuple: pass input_key='),
                             ([{'x': a} for a in arrays], {'input_key': 'image'},
                              "no input_key='image'; its keys: x"),
                             (arrays[0], {}, r'of shape \(8, 16\): split it'),
                             (None, {}, 'iterable')):
    with pytest.raises(ConfigError, match=match):
      run(batches, **kw)


def test_errors_name_the_arguments(mixed):
  model, params, batches = mixed

  class Depthwise(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(4, (3, 3), feature_group_count=4)(x)

  class Batched(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.DenseGeneral(4, batch_dims=(0,))(x)
  for module, x in ((Depthwise(), batches[0]), (Batched(), np.ones((2, 3, 5), np.float32))):
    p = module.init(jax.random.PRNGKey(0), x)['params']
    with pytest.raises(ConfigError, match=r'prunable is True for .*(feature_group_count|batch_d)'):
      oneshot.prune(module.apply, p, [x], method='wanda', prunable=pruning.prunable_tree(p),
                    sparsity=0.5)
  embed = nn.Embed(10, 4)
  p = embed.init(jax.random.PRNGKey(0), jnp.zeros((2,), jnp.int32))['params']
  with pytest.raises(ConfigError, match='prunable is True for .embedding.') as error:
    oneshot.prune(embed.apply, p, [np.zeros((2,), np.int32)], method='wanda',
                  prunable={'embedding': True}, sparsity=0.5)
  assert 'prune.include' not in str(error.value)
  with pytest.raises(ConfigError, match='method=.obs.'):
    oneshot.prune(model.apply, params, batches, method='obs',
                  prunable=pruning.prunable_tree(params), sparsity=0.5)
  with pytest.raises(ConfigError, match='prunable must be a tree'):
    oneshot.prune(model.apply, params, batches, method='wanda', prunable={'stem': True},
                  sparsity=0.5)
