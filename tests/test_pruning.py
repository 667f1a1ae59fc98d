"""Pruning library: scores, exact selection, N:M, masked optimizer, structured shrink, export."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigmodel_jax import models, pruning
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import gradual, selection


@pytest.fixture(scope='module')
def mlp():
  model = models.MLP(hidden_sizes=(32, 16), num_outputs=10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))['params']
  return model, params


def _batches(n=3, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return [{'inputs': rng.normal(size=(size, 64)).astype(np.float32),
           'targets': rng.integers(0, 10, size)} for _ in range(n)]


def _pruned_count(masks, params=None):
  return sum(int(np.sum(~np.asarray(m))) for m in jax.tree.leaves(masks))


def test_prunable_tree_defaults_to_kernels_and_rejects_unknown_patterns(mlp):
  _, params = mlp
  flags = pruning.prunable_tree(params)
  assert flags['Dense_0']['kernel'] and not flags['Dense_0']['bias']
  only = pruning.prunable_tree(params, include=('Dense_[01]/kernel',))
  assert not only['Dense_2']['kernel']
  with pytest.raises(ConfigError, match='matches no parameter'):
    pruning.prunable_tree(params, include=('Conv_0/kernel',))
  with pytest.raises(ConfigError, match='No parameter is left'):
    pruning.prunable_tree(params, include=('*kernel',), exclude=('*',))


@pytest.mark.parametrize('scope', ['global', 'layerwise'])
@pytest.mark.parametrize('sparsity', [0.0, 0.5, 0.9, 0.987])
def test_selection_is_exact(mlp, scope, sparsity):
  _, params = mlp
  prunable = pruning.prunable_tree(params)
  masks = pruning.masks_from_scores(pruning.magnitude(params), sparsity, scope=scope,
                                    prunable=prunable)
  kernels = [params[n]['kernel'] for n in ('Dense_0', 'Dense_1', 'Dense_2')]
  if scope == 'global':
    assert _pruned_count(masks) == round(sparsity * sum(k.size for k in kernels))
  else:
    for name, k in zip(('Dense_0', 'Dense_1', 'Dense_2'), kernels, strict=True):
      assert int(np.sum(~masks[name]['kernel'])) == round(sparsity * k.size)
  assert all(bool(np.all(masks[n]['bias'])) for n in masks)  # Biases are never pruned.


def test_selection_prunes_lowest_and_breaks_ties_by_position():
  scores = [jnp.array([3.0, 1.0, 1.0, 1.0, 5.0]), jnp.array([[1.0, 0.5], [7.0, 1.0]])]
  keep = selection.lowest_k_masks(scores, 4)  # 0.5 then three of the five 1.0s, first first.
  np.testing.assert_array_equal(keep[0], [True, False, False, False, True])
  np.testing.assert_array_equal(keep[1], [[True, False], [True, True]])
  constant = [jnp.zeros((7, 3))]
  assert int(np.sum(~selection.lowest_k_masks(constant, 11)[0])) == 11


def test_selection_handles_negative_scores_and_traced_sparsity():
  x = jnp.array([-2.0, 3.0, -0.0, 0.0, -7.5, 1e-30, jnp.inf])
  keep = selection.lowest_k_masks([x], 3)[0]
  np.testing.assert_array_equal(keep, [False, True, False, True, False, True, True])
  jitted = jax.jit(lambda s: pruning.masks_from_scores({'w': x}, s)['w'])
  assert int(np.sum(~jitted(0.5))) == round(0.5 * 7)


def test_selection_matches_a_sort(mlp):
  rng = np.random.default_rng(1)
  scores = [jnp.asarray(rng.normal(size=(50, 20)).astype(np.float32)) for _ in range(3)]
  keep = selection.lowest_k_masks(scores, 1234)
  flat = np.concatenate([np.asarray(s).ravel() for s in scores])
  threshold = np.sort(flat)[1233]
  pruned = np.concatenate([~np.asarray(k).ravel() for k in keep])
  assert pruned.sum() == 1234 and flat[pruned].max() == threshold


def test_selection_rejects_bad_sparsity(mlp):
  _, params = mlp
  for bad in (-0.1, 1.0, 1.5):
    with pytest.raises(ConfigError, match=r'\[0, 1\)'):
      pruning.masks_from_scores(params, bad)
  with pytest.raises(ConfigError, match='scope'):
    pruning.masks_from_scores(params, 0.5, scope='per-row')


def test_overrides_prune_their_layers_at_their_own_sparsity(mlp):
  _, params = mlp
  prunable = pruning.prunable_tree(params)
  masks = pruning.masks_from_scores(pruning.magnitude(params), 0.8, prunable=prunable,
                                    overrides={'Dense_2/kernel': 0.25})
  assert int(np.sum(~masks['Dense_2']['kernel'])) == round(0.25 * 160)
  rest = 64 * 32 + 32 * 16
  assert int(np.sum(~masks['Dense_0']['kernel'])) + int(np.sum(~masks['Dense_1']['kernel'])) \
      == round(0.8 * rest)
  with pytest.raises(ConfigError, match='matches no prunable'):
    pruning.masks_from_scores(params, 0.5, prunable=prunable, overrides={'*bias': 0.5})


@pytest.mark.parametrize('n,m', [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern(mlp, n, m):
  _, params = mlp
  masks = pruning.nm_masks(pruning.magnitude(params), n, m,
                           prunable=pruning.prunable_tree(params, include=('Dense_[01]/kernel',)))
  for name in ('Dense_0', 'Dense_1'):
    k = np.asarray(masks[name]['kernel'])
    groups = k.reshape(k.shape[0] // m, m, k.shape[1]).sum(axis=1)
    assert np.all(groups == n)
    # The kept entries are the n largest |w| of each group.
    w = np.abs(np.asarray(params[name]['kernel'])).reshape(k.shape[0] // m, m, k.shape[1])
    kept_min = np.where(k.reshape(w.shape), w, np.inf).min(axis=1)
    dropped_max = np.where(k.reshape(w.shape), -np.inf, w).max(axis=1)
    assert np.all(kept_min >= dropped_max)
  assert np.all(masks['Dense_2']['kernel'])


def test_nm_mask_equals_a_stable_sort_with_ties():
  rng = np.random.default_rng(7)
  scores = rng.integers(-3, 4, size=(3, 32, 40)).astype(np.float32)  # Many ties; 3-D kernel.
  scores[0, 0, :5] = -0.0  # Ties with +0.0, as in a sort.
  scores[1, 4, 3] = np.nan  # Ranks lowest: its group still keeps exactly n.
  for n, m in ((2, 4), (1, 4), (4, 8), (5, 16)):
    grouped = scores.reshape(-1, m, 40)
    order = np.argsort(-np.nan_to_num(grouped, nan=-np.inf), axis=1, kind='stable')
    expected = (np.argsort(order, axis=1, kind='stable') < n).reshape(scores.shape)
    np.testing.assert_array_equal(pruning.nm_mask(jnp.asarray(scores), n, m), expected)


def test_nm_rejects_bad_patterns(mlp):
  _, params = mlp
  with pytest.raises(ConfigError, match='0 < N < M'):
    pruning.nm_mask(params['Dense_0']['kernel'], 4, 4)
  with pytest.raises(ConfigError, match='divisible by 5'):
    pruning.nm_mask(params['Dense_0']['kernel'], 2, 5, 'Dense_0/kernel')


def test_scores(mlp):
  model, params = mlp
  loss_fn = pruning.batch_loss_fn(model.apply)
  batches = _batches()
  mag = pruning.magnitude(params)
  np.testing.assert_array_equal(mag['Dense_1']['kernel'], np.abs(params['Dense_1']['kernel']))
  sal = pruning.saliency(params, loss_fn, batches)
  grads = [jax.grad(loss_fn)(params, b) for b in batches]
  expected = np.mean([np.abs(params['Dense_0']['kernel'] * g['Dense_0']['kernel'])
                      for g in grads], axis=0)
  np.testing.assert_allclose(sal['Dense_0']['kernel'], expected, rtol=1e-5, atol=1e-9)
  r1 = pruning.random(params, jax.random.PRNGKey(1))
  r2 = pruning.random(params, jax.random.PRNGKey(2))
  assert not np.allclose(r1['Dense_0']['kernel'], r2['Dense_0']['kernel'])


def test_sensitivity_is_obd_with_per_example_fisher(mlp):
  model, params = mlp
  loss_fn = pruning.batch_loss_fn(model.apply)
  batch = _batches(1, size=8)[0]
  sens = pruning.sensitivity(params, loss_fn, [batch], micro_batch=4)
  per_example = [jax.grad(loss_fn)(params, {k: v[i:i + 1] for k, v in batch.items()})
                 for i in range(8)]
  fisher = np.mean([e['Dense_1']['kernel'] ** 2 for e in per_example], axis=0)
  w = np.asarray(params['Dense_1']['kernel'])
  np.testing.assert_allclose(sens['Dense_1']['kernel'], 0.5 * fisher * w * w,
                             rtol=1e-4, atol=1e-9)
  assert float(jnp.min(jax.tree.leaves(sens)[0])) >= 0  # A loss increase, never negative.


@pytest.mark.parametrize('mask_gradients', [True, False])
def test_masked_adam_keeps_pruned_weights_exactly_zero(mlp, mask_gradients):
  model, params = mlp
  loss_fn = pruning.batch_loss_fn(model.apply)
  tx = pruning.masked(optax.adamw(1e-2, weight_decay=1e-2), mask_gradients=mask_gradients)
  opt_state = tx.init(params)
  # Build up momentum densely first, so that stale moments would revive pruned weights.
  dense = pruning.ones_like(params)
  for batch in _batches(5):
    updates, opt_state = tx.update(jax.grad(loss_fn)(params, batch), opt_state, params,
                                   masks=dense)
    params = optax.apply_updates(params, updates)
  masks = pruning.masks_from_scores(pruning.magnitude(params), 0.7,
                                    prunable=pruning.prunable_tree(params))
  params = pruning.apply_masks(params, masks)
  opt_state = pruning.prune_opt_state(tx, opt_state, masks)
  assert float(jnp.abs(opt_state[0].mu['Dense_0']['kernel'] *
                       ~masks['Dense_0']['kernel']).max()) == 0.0

  @jax.jit
  def step(params, opt_state, batch):
    updates, opt_state = tx.update(jax.grad(loss_fn)(params, batch), opt_state, params,
                                   masks=masks)
    return optax.apply_updates(params, updates), opt_state
  for batch in _batches(100, seed=3):
    params, opt_state = step(params, opt_state, batch)
  for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks), strict=True):
    assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
  assert float(jnp.abs(params['Dense_0']['kernel']).max()) > 0  # Kept weights did train.
  with pytest.raises(ValueError, match='needs the masks'):
    tx.update(params, opt_state, params)


def test_masking_only_gradients_would_not_be_enough(mlp):
  """The failure `masked` exists for: Adam momentum revives weights whose gradient is masked."""
  model, params = mlp
  loss_fn = pruning.batch_loss_fn(model.apply)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  for batch in _batches(5):
    updates, opt_state = tx.update(jax.grad(loss_fn)(params, batch), opt_state)
    params = optax.apply_updates(params, updates)
  masks = pruning.masks_from_scores(pruning.magnitude(params), 0.7)
  params = pruning.apply_masks(params, masks)
  for batch in _batches(3, seed=4):
    grads = pruning.apply_masks(jax.grad(loss_fn)(params, batch), masks)
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(params, updates)
  revived = np.asarray(params['Dense_0']['kernel'])[~np.asarray(masks['Dense_0']['kernel'])]
  assert np.abs(revived).max() > 1e-4


def test_structured_shrink_equals_masked_dense(mlp):
  model, params = mlp
  keep = pruning.neuron_keep(pruning.magnitude(params), 0.5)
  assert [int(k.sum()) for k in keep] == [16, 8]
  masks = pruning.neuron_masks(params, keep)
  small_model, small_params = pruning.shrink_mlp(model, params, keep)
  assert small_model.hidden_sizes == (16, 8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 64)), jnp.float32)
  masked_out = model.apply({'params': pruning.apply_masks(params, masks)}, x)
  np.testing.assert_allclose(small_model.apply({'params': small_params}, x), masked_out,
                             rtol=1e-5, atol=1e-6)
  # The kept neurons of layer 0 are those with the largest L1 norm of incoming weights.
  norms = np.abs(np.asarray(params['Dense_0']['kernel'])).sum(0) + np.abs(params['Dense_0']['bias'])
  assert set(np.flatnonzero(keep[0])) == set(np.argsort(norms)[-16:])


@pytest.mark.parametrize('quantize', ['none', 'int8'])
def test_export_round_trip(tmp_path, quantize):
  model = models.MLP(hidden_sizes=(256,), num_outputs=10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))['params']
  prunable = pruning.prunable_tree(params)
  masks = pruning.masks_from_scores(pruning.magnitude(params), 0.9, prunable=prunable)
  params = pruning.apply_masks(params, masks)
  path = str(tmp_path / 'model.npz')
  sizes = pruning.save_compact(path, params, masks, prunable, quantize=quantize)
  # 10% of the weights at 4 (1) bytes plus 1 bit each: 6.2x (13x) smaller than float32.
  assert sizes['file_bytes'] < sizes['dense_float32_bytes'] / (6 if quantize == 'none' else 12)
  loaded, loaded_masks = pruning.load_compact(path)
  jax.tree.map(np.testing.assert_array_equal, loaded_masks, jax.device_get(masks))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(50, 784)), jnp.float32)
  ref = model.apply({'params': params}, x)
  out = model.apply({'params': loaded}, x)
  if quantize == 'none':
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))
    np.testing.assert_array_equal(out, ref)
  else:
    np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))
    assert np.mean(np.argmax(out, -1) == np.argmax(ref, -1)) >= 0.9


def test_sparsity_stats(mlp):
  _, params = mlp
  prunable = pruning.prunable_tree(params)
  masks = pruning.masks_from_scores(pruning.magnitude(params), 0.75, prunable=prunable)
  stats = pruning.sparsity_stats(pruning.apply_masks(params, masks), masks, prunable)
  kernels = 64 * 32 + 32 * 16 + 16 * 10
  assert stats['prunable_size'] == kernels
  assert stats['prunable_nonzero'] == kernels - round(0.75 * kernels)
  assert set(stats['layers']) == {'Dense_0/kernel', 'Dense_1/kernel', 'Dense_2/kernel'}
  assert stats['compressed_bytes'] < stats['dense_bytes']


def test_schedules():
  sched = [float(pruning.polynomial_sparsity(s, final_sparsity=0.9, begin_step=100,
                                             end_step=1000, frequency=100))
           for s in (0, 99, 100, 150, 200, 550, 1000, 5000)]
  assert sched[:3] == [0.0, 0.0, 0.0]
  assert sched[3] == sched[2]  # Constant between updates.
  assert 0 < sched[4] < sched[5] < sched[6] == pytest.approx(0.9)
  assert sched[7] == pytest.approx(0.9)
  assert pruning.iterative_sparsities(0.96, 2) == pytest.approx([0.8, 0.96])
  assert bool(pruning.is_update_step(300, begin_step=100, end_step=1000, frequency=100))
  assert not bool(pruning.is_update_step(1100, begin_step=100, end_step=1000, frequency=100))


def test_gradual_updater_ramps_overrides_on_their_own_schedule():
  from bigmodel_jax import train_state
  model = models.MLP(hidden_sizes=(32, 16), num_outputs=10)
  state = train_state.create_train_state(0, model=model, tx=pruning.masked(optax.adam(1e-3)),
                                         input_shape=(64,), masked=True)
  prunable = pruning.prunable_tree(state.params)
  ramp = dict(begin_step=0, end_step=100, frequency=10)
  hook = jax.jit(gradual.mask_updater(final_sparsity=0.8, prunable=prunable,
                                              overrides={'Dense_2/kernel': 0.3}, **ramp))
  rest = 64 * 32 + 32 * 16
  for step in (50, 100):
    out = hook(state.replace(step=jnp.asarray(step, jnp.int32)))
    target = {name: float(pruning.polynomial_sparsity(step, final_sparsity=s, **ramp))
              for name, s in (('rest', 0.8), ('Dense_2', 0.3))}
    assert 0 < target['Dense_2'] < target['rest']
    assert int(np.sum(~out.masks['Dense_2']['kernel'])) == round(target['Dense_2'] * 160)
    assert int(np.sum(~out.masks['Dense_0']['kernel'])) + \
        int(np.sum(~out.masks['Dense_1']['kernel'])) == round(target['rest'] * rest)
    assert np.all(np.asarray(out.params['Dense_2']['kernel'])[~out.masks['Dense_2']['kernel']]
                  == 0)
  assert target['Dense_2'] == pytest.approx(0.3)  # Step 100: each at its own final sparsity.
  with pytest.raises(ConfigError, match='matches no prunable'):
    gradual.mask_updater(final_sparsity=0.8, prunable=prunable,
                                 overrides={'*bias': 0.5}, **ramp)
  with pytest.raises(ConfigError, match=r'\[0, 1\)'):
    gradual.mask_updater(final_sparsity=0.8, prunable=prunable,
                                 overrides={'Dense_2/kernel': 1.0}, **ramp)
