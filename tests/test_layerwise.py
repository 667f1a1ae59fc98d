"""One-shot LLM pruning of single layers: calibration stats, Wanda, SparseGPT."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax.pruning import layerwise, selection

IN, OUT, TOKENS = 256, 64, 2048
BLOCK = 96  # Does not divide IN: the last block is padded, and block counts must still add up.


@pytest.fixture(scope='module')
def layer():
  """A random layer with correlated inputs of uneven scale, like an LLM's, and its stats."""
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(IN, IN)) / np.sqrt(IN)
  scale = np.exp(rng.normal(scale=0.5, size=IN))
  x = ((rng.normal(size=(TOKENS, IN)) @ mix) * scale).astype(np.float32)
  kernel = rng.normal(size=(IN, OUT)).astype(np.float32) / np.sqrt(IN)
  stats = layerwise.accumulate(layerwise.init_stats(IN), jnp.asarray(x))
  return jnp.asarray(x), jnp.asarray(kernel), stats


def _stats_for(kernel, rng):
  x = rng.normal(size=(128, kernel.shape[0])).astype(np.float32)
  return layerwise.accumulate(layerwise.init_stats(kernel.shape[0]), jnp.asarray(x))


def _assert_nm(mask, n, m):
  groups = np.asarray(mask).reshape(-1, m, mask.shape[-1])
  assert np.all(groups.sum(axis=1) == n)


_sparsegpt_jit = jax.jit(layerwise.sparsegpt, static_argnames=('sparsity', 'n', 'm', 'block_size'))
_wanda_jit = jax.jit(layerwise.wanda_mask, static_argnames=('n', 'm'))


def test_stats_accumulate_over_batches_equals_one_pass():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(96, 24)).astype(np.float32)
  step = jax.jit(layerwise.accumulate)
  stats = layerwise.init_stats(24)
  for chunk in np.split(x, [10, 40, 41]):
    stats = step(stats, jnp.asarray(chunk))
  whole = layerwise.accumulate(layerwise.init_stats(24), jnp.asarray(x))
  assert int(stats.count) == int(whole.count) == 96
  np.testing.assert_allclose(stats.sq_norm, whole.sq_norm, rtol=1e-5)
  np.testing.assert_allclose(stats.xtx, whole.xtx, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(stats.sq_norm, np.sum(x.astype(np.float64) ** 2, 0), rtol=1e-5)
  np.testing.assert_allclose(stats.xtx, x.astype(np.float64).T @ x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('sparsity', [0.5, 0.7])
def test_wanda_prunes_exactly_per_output(layer, sparsity):
  _, kernel, stats = layer
  mask = np.asarray(_wanda_jit(kernel, stats, sparsity))
  assert mask.shape == kernel.shape and mask.dtype == bool
  assert np.all((~mask).sum(axis=0) == round(sparsity * IN))
  assert (~mask).sum() == OUT * round(sparsity * IN)


@pytest.mark.parametrize('n,m', [(2, 4), (4, 8)])
def test_wanda_nm_pattern(layer, n, m):
  _, kernel, stats = layer
  _assert_nm(_wanda_jit(kernel, stats, n=n, m=m), n, m)


def test_wanda_with_equal_norms_is_per_output_magnitude():
  rng = np.random.default_rng(2)
  kernel = jnp.asarray(rng.normal(size=(32, 8)).astype(np.float32))
  stats = layerwise.LayerStats(jnp.full((32,), 7.0), jnp.eye(32), jnp.int32(1))
  mask = layerwise.wanda_mask(kernel, stats, 0.5)
  magnitude = np.abs(np.asarray(kernel))
  expected = magnitude >= np.median(magnitude, axis=0, keepdims=True)
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(mask, layerwise.per_output_mask(jnp.abs(kernel), 0.5))
  np.testing.assert_array_equal(layerwise.wanda_mask(kernel, stats, n=2, m=4),
                                selection.nm_mask(jnp.abs(kernel), 2, 4))


def test_wanda_keeps_the_weights_of_a_loud_input():
  rng = np.random.default_rng(3)
  kernel = rng.normal(size=(32, 8)).astype(np.float32)
  kernel[5] = 0.1 * np.sign(kernel[5])  # Among the smallest weights of every column...
  x = rng.normal(size=(64, 32)).astype(np.float32)
  x[:, 5] *= 100  # ...but on an input 100x louder than the others.
  stats = layerwise.accumulate(layerwise.init_stats(32), jnp.asarray(x))
  assert not np.any(np.asarray(layerwise.per_output_mask(jnp.abs(jnp.asarray(kernel)), 0.7))[5])
  assert np.all(np.asarray(layerwise.wanda_mask(jnp.asarray(kernel), stats, 0.7))[5])
  assert np.all(np.asarray(layerwise.wanda_mask(jnp.asarray(kernel), stats, n=1, m=4))[5])


@pytest.mark.parametrize('sparsity', [0.5, 0.7])
def test_sparsegpt_prunes_exactly_and_zeroes_the_pruned(layer, sparsity):
  _, kernel, stats = layer
  new_kernel, mask = _sparsegpt_jit(kernel, stats, sparsity=sparsity, block_size=BLOCK)
  mask, new_kernel = np.asarray(mask), np.asarray(new_kernel)
  assert mask.shape == new_kernel.shape == kernel.shape and mask.dtype == bool
  assert (~mask).sum() == round(sparsity * kernel.size)
  assert np.all(new_kernel[~mask] == 0)
  assert np.all(np.isfinite(new_kernel))


@pytest.mark.parametrize('n,m', [(2, 4), (4, 8)])
def test_sparsegpt_nm_pattern(layer, n, m):
  _, kernel, stats = layer
  new_kernel, mask = _sparsegpt_jit(kernel, stats, n=n, m=m, block_size=BLOCK)
  _assert_nm(mask, n, m)
  assert np.all(np.asarray(new_kernel)[~np.asarray(mask)] == 0)


def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(layer):
  x, kernel, stats = layer
  error = functools.partial(layerwise.reconstruction_error, x, kernel)
  magnitude = jnp.abs(kernel)
  results = {}
  for name, kwargs in (('50%', {'sparsity': 0.5}), ('2:4', {'n': 2, 'm': 4})):
    if 'n' in kwargs:
      magnitude_mask = selection.nm_mask(magnitude, 2, 4)
    else:
      magnitude_mask = selection.lowest_k_masks([magnitude], round(0.5 * kernel.size))[0]
    wanda_mask = _wanda_jit(kernel, stats, **kwargs)
    new_kernel, _ = _sparsegpt_jit(kernel, stats, **kwargs, block_size=BLOCK)
    results[name] = {
        'magnitude': float(error(jnp.where(magnitude_mask, kernel, 0))),
        'wanda': float(error(jnp.where(wanda_mask, kernel, 0))),
        'sparsegpt': float(error(new_kernel)),
    }
    print(f'relative reconstruction error at {name}: ' +
          ', '.join(f'{k} {v:.4f}' for k, v in results[name].items()))
  for r in results.values():
    assert r['sparsegpt'] < 0.8 * r['wanda']
    assert r['sparsegpt'] < 0.8 * r['magnitude']


def test_sparsegpt_zero_sparsity_keeps_the_layer_and_dead_inputs_are_zeroed():
  rng = np.random.default_rng(4)
  kernel = jnp.asarray(rng.normal(size=(16, 8)).astype(np.float32))
  x = rng.normal(size=(64, 16)).astype(np.float32)
  x[:, 3] = 0.0
  stats = layerwise.accumulate(layerwise.init_stats(16), jnp.asarray(x))
  new_kernel, mask = _sparsegpt_jit(kernel, stats, sparsity=0.0, block_size=8)
  assert np.all(np.asarray(mask))
  np.testing.assert_array_equal(np.asarray(new_kernel)[3], 0)
  keep = np.arange(16) != 3
  np.testing.assert_allclose(np.asarray(new_kernel)[keep], np.asarray(kernel)[keep], atol=1e-5)


def test_sparsity_may_be_traced(layer):
  _, kernel, stats = layer
  wanda = jax.jit(layerwise.wanda_mask)
  sparsegpt = jax.jit(functools.partial(layerwise.sparsegpt, block_size=BLOCK))
  for s in (0.5, 0.7):
    assert (~np.asarray(wanda(kernel, stats, jnp.float32(s)))).sum() == OUT * round(s * IN)
    _, mask = sparsegpt(kernel, stats, jnp.float32(s))
    assert (~np.asarray(mask)).sum() == round(s * kernel.size)


def test_bad_inputs_raise_value_error():
  rng = np.random.default_rng(5)
  kernel = jnp.asarray(rng.normal(size=(12, 4)).astype(np.float32))
  stats = _stats_for(kernel, rng)
  for fn in (layerwise.wanda_mask, layerwise.sparsegpt):
    for bad in (1.0, -0.1):
      with pytest.raises(ValueError, match=r'must be a number in \[0, 1\)'):
        fn(kernel, stats, bad)
    with pytest.raises(ValueError, match='0 < N < M'):
      fn(kernel, stats, n=4, m=4)
    with pytest.raises(ValueError, match='divisible by 8'):
      fn(kernel, stats, n=2, m=8)
    with pytest.raises(ValueError, match='give one'):
      fn(kernel, stats, 0.5, n=2, m=4)
    with pytest.raises(ValueError, match='No pruning target'):
      fn(kernel, stats)
    with pytest.raises(ValueError, match='must be \\(12,\\)'):
      fn(kernel, layerwise.init_stats(16), 0.5)
    with pytest.raises(ValueError, match=r'single linear layer kernel \[in, out\]'):
      fn(kernel[None], stats, 0.5)
  bad_xtx = stats._replace(xtx=jnp.zeros((12, 10)))
  with pytest.raises(ValueError, match=r'xtx has shape \(12, 10\)'):
    layerwise.sparsegpt(kernel, bad_xtx, 0.5)
  with pytest.raises(ValueError, match='multiple of m=4'):
    layerwise.sparsegpt(kernel, stats, n=2, m=4, block_size=6)
  with pytest.raises(ValueError, match=r'must be \[tokens, 12\]'):
    layerwise.accumulate(stats, jnp.zeros((5, 13)))


def _sorted_per_output_mask(scores, k):
  """The contract, by a stable sort: the k lowest of each column pruned, earlier ties first."""
  rank = np.argsort(np.argsort(scores, axis=0, kind='stable'), axis=0, kind='stable')
  return rank >= k


def test_per_output_mask_equals_a_stable_sort_with_ties():
  rng = np.random.default_rng(6)
  scores = rng.integers(0, 5, size=(101, 37)).astype(np.float32)  # Mostly ties.
  scores[:, 0] = 2.0  # A column of one value: position alone decides.
  scores[:7, 1] = -0.0  # -0 ties with +0, as in a sort.
  scores[3, 2] = np.nan  # Sorts last.
  scores[:, 3] = rng.normal(size=101)  # No ties.
  masks = jax.jit(layerwise.per_output_mask, static_argnums=1)
  for sparsity in (0.0, 0.3, 0.5, 0.99):
    expected = _sorted_per_output_mask(scores, round(sparsity * 101))
    np.testing.assert_array_equal(masks(jnp.asarray(scores), sparsity), expected)
    np.testing.assert_array_equal(  # Traced sparsity, and scores without ties.
        jax.jit(layerwise.per_output_mask)(jnp.asarray(scores[:, 3:]), jnp.float32(sparsity)),
        expected[:, 3:])


def test_gram_of_a_wide_layer_is_exactly_symmetric_and_right():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(64, 600)).astype(np.float32)  # Wide enough to be split in 4 groups.
  xtx = np.asarray(layerwise.accumulate(layerwise.init_stats(600), jnp.asarray(x)).xtx)
  np.testing.assert_array_equal(xtx, xtx.T)
  np.testing.assert_allclose(xtx, x.astype(np.float64).T @ x, rtol=1e-4, atol=1e-3)


def test_inverse_hessian_factor_is_the_upper_cholesky_factor_of_the_inverse(layer):
  _, _, stats = layer
  factor, dead = layerwise._inverse_hessian_factor(stats.xtx, 0.01)
  h = np.asarray(stats.xtx, np.float64)
  h += 0.01 * np.mean(np.diag(h)) * np.eye(IN)
  expected = np.linalg.cholesky(np.linalg.inv(h)).T
  assert not np.any(dead)
  np.testing.assert_array_equal(np.tril(np.asarray(factor), -1), 0)
  np.testing.assert_allclose(factor, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def _plain_sparsegpt(kernel, xtx, sparsity, n, m, block, damp=0.01):
  """SparseGPT as the reference `fasterprune` loops it, in float64 and the Flax layout: rows one
  by one, each updating all later rows of its block; the exact per-block counts of ours."""
  w = np.asarray(kernel, np.float64).copy()
  h = np.asarray(xtx, np.float64) + damp * np.mean(np.diag(xtx)) * np.eye(len(w))
  u = np.linalg.cholesky(np.linalg.inv(h)).T
  keep = np.ones(w.shape, bool)
  for a in range(0, len(w), block):
    b = min(a + block, len(w))
    scores = w[a:b] ** 2 / np.diag(u)[a:b, None] ** 2
    if not n:
      count = round(sparsity * b * w.shape[1]) - round(sparsity * a * w.shape[1])
      order = np.argsort(scores.ravel(), kind='stable')[:count]
      keep[a:b].flat[order] = False
    errors = np.zeros_like(w[a:b])
    for i in range(a, b):
      if n and (i - a) % m == 0:
        group = w[i:i + m] ** 2 / np.diag(u)[i:i + m, None] ** 2
        rank = np.argsort(np.argsort(-group, axis=0, kind='stable'), axis=0, kind='stable')
        keep[i:i + m] = rank < n
      q = np.where(keep[i], w[i], 0.0)
      errors[i - a] = (w[i] - q) / u[i, i]
      w[i:b] -= u[i, i:b, None] * errors[i - a]
      w[i] = q
    w[b:] -= u[a:b, b:].T @ errors
  return w, keep


@pytest.mark.parametrize('kwargs', [{'sparsity': 0.6}, {'n': 2, 'm': 4}])
def test_sparsegpt_equals_the_plain_row_by_row_loop(layer, kwargs):
  """The blocked and recursive updates change only the order of float sums."""
  _, kernel, stats = layer
  kernel, xtx = kernel[:160, :48], stats.xtx[:160, :160]  # Blocks 64, 64 and a padded 32.
  sub = layerwise.LayerStats(stats.sq_norm[:160], xtx, stats.count)
  new_kernel, mask = _sparsegpt_jit(kernel, sub, **kwargs, block_size=64)
  expected, expected_keep = _plain_sparsegpt(kernel, xtx, kwargs.get('sparsity'),
                                             kwargs.get('n', 0), kwargs.get('m', 0), 64)
  np.testing.assert_array_equal(mask, expected_keep)
  np.testing.assert_allclose(new_kernel, np.where(expected_keep, expected, 0), atol=2e-5)
