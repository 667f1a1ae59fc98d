"""Block-by-block one-shot pruning of a decoder LM: the papers' sequential procedure."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import GPT, Llama
from bigmodel_jax.pruning import masks as masks_lib
from bigmodel_jax.pruning import oneshot, sequential


@pytest.fixture(scope='module')
def setup():
  model = Llama(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                mlp_dim=64)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))['params'])
  noise = lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape)
  params = jax.tree.map(noise, params)  # Norm scales away from 1, so inputs differ per channel.
  text = np.random.default_rng(0).integers(0, 64, 2000)
  return model, params, sequential.calibration_windows(text, 8, 16, seed=0)


def _block_kernels(params):
  return jax.tree_util.tree_map_with_path(
      lambda p, x: masks_lib.path_str(p).startswith('block_') and
      masks_lib.path_str(p).endswith('kernel'), params)


@pytest.mark.parametrize('method,target', [('wanda', dict(sparsity=0.5)),
                                           ('sparsegpt', dict(n=2, m=4)),
                                           ('magnitude', dict(sparsity=0.5))])
def test_equals_the_generic_sequential_pass(setup, method, target):
  # oneshot.prune calibrates each top-level group on the outputs of the groups already pruned,
  # running the whole model; the block-by-block pass must give the very same result.
  model, params, windows = setup
  ours, masks, _ = sequential.prune(model, params, windows, method=method, batch_size=4,
                                    block_size=16, **target)
  theirs, their_masks = oneshot.prune(model.apply, params, [windows[:4], windows[4:]],
                                      method=method, prunable=_block_kernels(params),
                                      block_size=16, **target)
  jax.tree.map(np.testing.assert_array_equal, masks, their_masks)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), ours, theirs)
  assert ours['wte']['embedding'] is params['wte']['embedding']  # Never the embedding.
  kept = np.asarray(masks['block_1']['mlp']['down']['kernel'])
  assert kept.mean() == 0.5


def test_owl_keeps_the_total_and_prunes_outlier_blocks_less(setup):
  model, params, windows = setup
  _, masks, info = sequential.prune(model, params, windows, method='wanda', sparsity=0.6,
                                    owl=sequential.Owl(lam=0.05), batch_size=4)
  sparsities, ratios = np.asarray(info['block_sparsity']), np.asarray(info['outlier_ratio'])
  assert sparsities.mean() == pytest.approx(0.6, abs=1e-6)
  assert np.ptp(sparsities) == pytest.approx(0.1, abs=1e-6)  # 2 * lam between the extremes.
  assert np.argmin(sparsities) == np.argmax(ratios)
  for i, s in enumerate(sparsities):
    kept = np.asarray(masks[f'block_{i}']['mlp']['gate']['kernel'])
    assert 1 - kept.mean() == pytest.approx(s, abs=1 / kept.shape[0])


def test_sharded_params_give_the_same_masks(setup):
  model, params, windows = setup
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ('fsdp', 'tensor'))
  spec = lambda x: PartitionSpec('fsdp', 'tensor') if x.ndim == 2 else PartitionSpec()
  sharded = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), params)
  for method in ('wanda', 'sparsegpt'):
    plain, plain_masks, _ = sequential.prune(model, params, windows, method=method,
                                             sparsity=0.5, batch_size=4, block_size=16)
    ours, masks, _ = sequential.prune(model, sharded, windows, method=method, sparsity=0.5,
                                      batch_size=4, block_size=16)
    jax.tree.map(np.testing.assert_array_equal, masks, plain_masks)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), ours, plain)


def test_bad_requests_say_what_is_wrong(setup):
  model, params, windows = setup
  cases = {
      "method='obs' is not a one-shot method": dict(method='obs', sparsity=0.5),
      'does not apply to N:M': dict(method='wanda', n=2, m=4, owl=sequential.Owl()),
      "no layer 'mlp/fc'": dict(method='wanda', sparsity=0.5, layers=('mlp/fc',)),
      'lower lam': dict(method='wanda', sparsity=0.97, owl=sequential.Owl(lam=0.2)),
  }
  for message, kwargs in cases.items():
    with pytest.raises(ConfigError, match=message):
      sequential.prune(model, params, windows, **kwargs)
  gpt = GPT(vocab_size=8)
  with pytest.raises(ConfigError, match='use oneshot.prune'):
    sequential.prune(gpt, {}, windows, method='wanda', sparsity=0.5)
  with pytest.raises(ConfigError, match='too few'):
    sequential.calibration_windows(np.arange(10), 4, 16, seed=0)


class _Inner(nn.Module):
  @nn.compact
  def __call__(self, x):
    up = nn.Dense(x.shape[-1], name='up')  # Called twice: shared weights.
    return nn.Dense(x.shape[-1], name='down')(nn.relu(up(nn.relu(up(x)))))


class _Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    return _Inner(name='inner')(x)


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, positions):
    del positions
    x = x + nn.MultiHeadDotProductAttention(num_heads=2, name='attn')(x)
    return x + _Mlp(name='mlp')(x)


class _TinyLM(nn.Module):
  """A user's LM with embed / block(i): Flax attention (DenseGeneral) and a nested shared MLP."""
  num_layers: int = 2

  def setup(self):
    self.wte = nn.Embed(16, 8)
    self.blocks = [self.block(i) for i in range(self.num_layers)]

  @nn.nowrap
  def block(self, i):
    return _Block(name=f'block_{i}')

  def embed(self, tokens):
    return self.wte(tokens)

  def __call__(self, tokens):
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, jnp.arange(tokens.shape[1]))
    return self.wte.attend(x)


@pytest.mark.parametrize('method', ['wanda', 'sparsegpt'])
def test_any_linear_layer_at_any_depth_of_a_block(method):
  model = _TinyLM()
  windows = sequential.calibration_windows(np.random.default_rng(3).integers(0, 16, 500), 8, 12,
                                           seed=0)
  params = model.init(jax.random.PRNGKey(0), windows[:1])['params']
  layers = ('attn/query', 'attn/out', 'mlp/inner/up', 'mlp/inner/down')
  ours, masks, _ = sequential.prune(model, params, windows, method=method, sparsity=0.5,
                                    layers=layers, batch_size=4, block_size=8)
  chosen = tuple(f'block_*/{name}/kernel' for name in layers)
  theirs, their_masks = oneshot.prune(model.apply, params, [windows[:4], windows[4:]],
                                      method=method, prunable=masks_lib.prunable_tree(
                                          params, chosen), sparsity=0.5, block_size=8)
  jax.tree.map(np.testing.assert_array_equal, masks, their_masks)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), ours, theirs)
  out = np.asarray(masks['block_1']['attn']['out']['kernel'])  # [heads, head_dim, embed]
  assert out.shape == (2, 4, 8) and out.mean() == 0.5
