"""Parity with jaxpruner: ERK / uniform distributions, straight-through training, SET / RigL,
and N:M that skips layers it cannot group."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigmodel_jax import losses, models, pruning, train
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import distributions, dynamic, ste
from bigmodel_jax.train_state import create_train_state

SHAPES = {'Dense_0': (64, 32), 'Dense_1': (32, 16), 'Dense_2': (16, 10)}


def _params():
  rng = np.random.default_rng(0)
  return {name: {'kernel': jnp.asarray(rng.normal(size=shape).astype(np.float32)),
                 'bias': jnp.zeros(shape[-1])} for name, shape in SHAPES.items()}


def _pruned(masks, name):
  return int(np.sum(~np.asarray(masks[name]['kernel'])))


def test_erk_densities_match_a_hand_computation():
  # raw (sum/prod): 96/2048, 48/512, 26/160; sum(raw * size) = 170; 10% of 2720 kept = 272.
  np.testing.assert_allclose(distributions.erk_densities(list(SHAPES.values()), 0.9),
                             [0.075, 0.15, 0.26], rtol=1e-12)
  # At 50% the last layer would keep 8 * 26/160 = 1.3: dense; the others share 1360 - 160.
  np.testing.assert_allclose(distributions.erk_densities(list(SHAPES.values()), 0.5),
                             [1200 / 144 * 96 / 2048, 1200 / 144 * 48 / 512, 1.0], rtol=1e-12)


@pytest.mark.parametrize('sparsity,counts', [(0.9, (1895, 435, 118)), (0.5, (1248, 112, 0))])
def test_erk_selection_prunes_the_hand_counts_and_the_exact_total(sparsity, counts):
  params = _params()
  prunable = pruning.prunable_tree(params)
  spread = pruning.layer_sparsities(params, sparsity, distribution='erk', prunable=prunable)
  assert spread['Dense_0']['bias'] is None
  masks = pruning.masks_from_scores(pruning.magnitude(params), sparsity, prunable=prunable,
                                    overrides=distributions.as_overrides(params, spread))
  assert tuple(_pruned(masks, n) for n in SHAPES) == counts
  assert sum(counts) == round(sparsity * 2720)


def test_uniform_prunes_each_layer_alike_and_erk_handles_conv_kernels():
  params = _params()
  spread = pruning.layer_sparsities(params, 0.8, distribution='uniform',
                                    prunable=pruning.prunable_tree(params))
  masks = pruning.masks_from_scores(pruning.magnitude(params), 0.8,
                                    prunable=pruning.prunable_tree(params),
                                    overrides=distributions.as_overrides(params, spread))
  assert [_pruned(masks, n) for n in SHAPES] == [1638, 410, 128]  # 0.8 * size, total exact.
  conv = {'Conv_0': {'kernel': jnp.ones((3, 3, 8, 16))}, 'Dense_0': {'kernel': jnp.ones((64, 4))}}
  d = distributions.erk_densities([(3, 3, 8, 16), (64, 4)], 0.7)
  assert d[0] < d[1]  # 30 / 1152 vs 68 / 256: the conv kernel is sparser.
  out = pruning.layer_sparsities(conv, 0.7, distribution='erk')
  total = sum(round(s * x.size) for s, x in zip(jax.tree.leaves(out), jax.tree.leaves(conv),
                                                strict=True))
  assert total == round(0.7 * (1152 + 256))
  with pytest.raises(ConfigError, match='per-leaf distribution'):
    pruning.layer_sparsities(params, 0.5, distribution='global')


def test_user_overrides_keep_their_sparsity_and_the_rest_is_spread():
  params = _params()
  prunable = pruning.prunable_tree(params)
  out = distributions.spread_overrides(params, 0.9, distribution='erk', prunable=prunable,
                                       overrides={'Dense_2/kernel': 0.5})
  assert out['Dense_2/kernel'] == 0.5 and set(out) == {'Dense_0/kernel', 'Dense_1/kernel',
                                                       'Dense_2/kernel'}
  kept = (1 - out['Dense_0/kernel']) * 2048 + (1 - out['Dense_1/kernel']) * 512
  assert round(kept) == round(0.1 * (2048 + 512))


# --- straight-through ---------------------------------------------------------------------------


def test_straight_through_forwards_masked_weights_and_sends_gradients_to_pruned_ones():
  w = jnp.array([[1.0, -2.0], [3.0, 0.5]])
  m = jnp.array([[True, False], [True, True]])
  x = jnp.array([[1.0, 1.0]])
  loss = lambda w: jnp.sum((x @ ste.straight_through({'w': w}, {'w': m})['w']) ** 2)  # noqa: E731
  np.testing.assert_allclose(loss(w), jnp.sum((x @ jnp.where(m, w, 0)) ** 2))
  g = jax.grad(loss)(w)
  masked_g = jax.grad(lambda w: jnp.sum((x @ w) ** 2))(jnp.where(m, w, 0))
  np.testing.assert_allclose(g, masked_g)  # The gradient at the masked point, everywhere.
  assert float(jnp.abs(g[0, 1])) > 0  # A pruned weight gets its gradient.


def _state(tx, masked=True):
  model = models.MLP(hidden_sizes=(16,), num_outputs=4)
  return create_train_state(0, model=model, tx=tx, input_shape=(8,), masked=masked)


def _batch(seed=0, n=64):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 8)).astype(np.float32)
  return {'inputs': jnp.asarray(x), 'targets': jnp.asarray((x[:, 0] > 0).astype(np.int32) +
                                                           2 * (x[:, 1] > 0))}


def test_ste_training_moves_pruned_dense_weights_and_keeps_params_sparse():
  state = _state(ste.optimizer(optax.adam(1e-2)))
  prunable = pruning.prunable_tree(state.params)
  hook = ste.mask_updater(final_sparsity=0.75, begin_step=0, end_step=20, frequency=5,
                          prunable=prunable)
  step = jax.jit(lambda s, b: train.train_step(s, b, before_step=hook))
  losses_seen = []
  for i in range(40):
    before = state
    state, metrics = step(state, _batch(i))
    losses_seen.append(float(metrics['loss']))
  masks, dense = before.masks, before.opt_state.dense
  after = state.opt_state.dense
  kernel = 'Dense_0'
  pruned = ~np.asarray(masks[kernel]['kernel'])
  assert pruned.mean() > 0.5
  # Pruned entries: zero in the params, still trained in the dense copy.
  assert np.all(np.asarray(state.params[kernel]['kernel'])[~np.asarray(
      state.masks[kernel]['kernel'])] == 0)
  moved = np.asarray(after[kernel]['kernel'] - dense[kernel]['kernel'])[pruned]
  assert np.count_nonzero(moved) == pruned.sum()
  stats = pruning.sparsity_stats(state.params, state.masks, prunable)
  assert stats['prunable_nonzero'] == round(0.25 * stats['prunable_size'])
  assert np.mean(losses_seen[-5:]) < losses_seen[0]


# --- SET / RigL ---------------------------------------------------------------------------------


def test_drop_fraction_is_rigls_cosine():
  f = lambda t: float(dynamic.drop_fraction(t, initial_fraction=0.3, end_step=100))  # noqa: E731
  assert f(0) == pytest.approx(0.3) and f(50) == pytest.approx(0.15) and f(100) == 0.0
  due = [int(t) for t in range(0, 120) if dynamic.is_update_step(t, every=25, end_step=100)]
  assert due == [25, 50, 75]


def test_rigl_drops_smallest_and_regrows_largest_gradients():
  w = jnp.array([[0.1, 5.0, 0.0, 0.0], [3.0, 0.2, 0.0, 0.0]])
  m = jnp.array([[True, True, False, False], [True, True, False, False]])
  g = jnp.array([[0.0, 0.0, 9.0, 1.0], [0.0, 0.0, 2.0, 8.0]])
  new = dynamic.rigl_masks({'w': w}, {'w': m}, {'w': g}, fraction=0.5)['w']
  np.testing.assert_array_equal(new, [[False, True, True, False], [True, False, False, True]])


@pytest.mark.parametrize('method', ['set', 'rigl'])
def test_drop_and_regrow_keeps_counts_and_zeroes_new_weights_and_moments(method):
  params = _params()
  prunable = pruning.prunable_tree(params)
  masks = pruning.masks_from_scores(pruning.magnitude(params), 0.8, scope='layerwise',
                                    prunable=prunable)
  params = pruning.apply_masks(params, masks)
  tx = pruning.masked(optax.adam(1e-2))
  grads = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(1).normal(size=x.shape),
                                             jnp.float32), params)
  opt_state = tx.init(params)
  _, opt_state = tx.update(grads, opt_state, params, masks=masks)  # Non-zero moments.
  if method == 'rigl':
    new = dynamic.rigl_masks(params, masks, grads, fraction=0.3, prunable=prunable)
  else:
    new = dynamic.set_masks(params, masks, jax.random.PRNGKey(3), fraction=0.3,
                            prunable=prunable)
  for name in SHAPES:
    assert _pruned(new, name) == _pruned(masks, name)
    changed = np.asarray(new[name]['kernel']) != np.asarray(masks[name]['kernel'])
    # k dropped, k regrown; a weight just dropped may come back, so at most 2k entries change.
    assert 0 < changed.sum() <= 2 * round(0.3 * np.sum(np.asarray(masks[name]['kernel'])))
  params2, opt_state2 = dynamic.apply_new_masks(tx, params, opt_state, masks, new)
  grown = jax.tree.map(lambda a, b: np.asarray(b & ~a), masks, new)
  mu = opt_state2[0].mu
  for name in SHAPES:
    g = grown[name]['kernel']
    assert g.any()
    assert np.all(np.asarray(params2[name]['kernel'])[g] == 0)
    assert np.all(np.asarray(mu[name]['kernel'])[g] == 0)
    assert np.all(np.asarray(params2[name]['kernel'])[~np.asarray(new[name]['kernel'])] == 0)
    assert np.all(np.asarray(mu[name]['kernel'])[~np.asarray(new[name]['kernel'])] == 0)


@pytest.mark.parametrize('method', ['set', 'rigl'])
def test_dynamic_optimizer_trains_at_an_exact_count(method):
  base = _state(optax.adam(1e-2), masked=False)
  prunable = pruning.prunable_tree(base.params)
  masks = pruning.masks_from_scores(pruning.magnitude(base.params), 0.7, scope='layerwise',
                                    prunable=prunable)
  tx = dynamic.optimizer(optax.adam(1e-2), method=method, prunable=prunable, every=4,
                         end_step=30, initial_fraction=0.3)
  state = _state(tx)
  state = state.replace(params=pruning.apply_masks(base.params, masks), masks=masks,
                        opt_state=dynamic.with_masks(tx.init(base.params), masks))
  step = jax.jit(lambda s, b: train.train_step(s, b, before_step=dynamic.sync_masks,
                                               loss_fn=losses.cross_entropy))
  seen, changes = [], []
  for i in range(40):
    previous = state.opt_state.masks
    state, metrics = step(state, _batch(i))
    seen.append(float(metrics['loss']))
    now = state.opt_state.masks
    grown = jax.tree.map(lambda a, b: np.asarray(b & ~a), previous, now)
    if any(g.any() for g in jax.tree.leaves(grown)):
      changes.append(i)
      for g, x, mu in zip(jax.tree.leaves(grown), jax.tree.leaves(state.params),
                          jax.tree.leaves(state.opt_state.inner[0].mu), strict=True):
        assert np.all(np.asarray(x)[g] == 0) and np.all(np.asarray(mu)[g] == 0)
    for name in ('Dense_0', 'Dense_1'):
      assert _pruned(now, name) == _pruned(masks, name)
      assert np.all(np.asarray(state.params[name]['kernel'])[~np.asarray(now[name]['kernel'])]
                    == 0)
  # Steps 4, 8, ..., 28 (late ones may move nothing: the cosine-decayed fraction rounds to 0).
  assert set(changes) <= {4, 8, 12, 16, 20, 24, 28} and len(changes) >= 5
  assert np.mean(seen[-5:]) < seen[0]


# --- N:M ----------------------------------------------------------------------------------------


def test_nm_skips_layers_it_cannot_group_when_asked(capsys):
  params = {'Dense_0': {'kernel': jnp.ones((8, 6))}, 'Dense_1': {'kernel': jnp.ones((6, 3))}}
  with pytest.raises(ConfigError, match='divisible by 4'):
    pruning.nm_masks(params, 2, 4)
  skipped = []
  masks = pruning.nm_masks(params, 2, 4, skip_indivisible=True, skipped=skipped)
  assert skipped == ['Dense_1/kernel']
  assert bool(np.all(masks['Dense_1']['kernel']))
  assert int(np.sum(masks['Dense_0']['kernel'])) == 24
  assert 'Dense_1/kernel' in capsys.readouterr().out


def test_ste_with_fixed_masks_trains_the_kept_weights_as_masked_training_does():
  # Once the masks stop changing, STE is masked training of the kept weights (the pruned dense
  # weights move but are never seen): the two trajectories agree.
  plain = _state(pruning.masked(optax.adam(1e-2)))
  prunable = pruning.prunable_tree(plain.params)
  masks = pruning.masks_from_scores(pruning.magnitude(plain.params), 0.7, prunable=prunable)
  params = pruning.apply_masks(plain.params, masks)
  plain = plain.replace(params=params, masks=masks)
  tx = ste.optimizer(optax.adam(1e-2))
  through = _state(tx).replace(params=params, masks=masks, opt_state=tx.init(plain.params))
  step = jax.jit(train.train_step)
  for i in range(20):
    plain, _ = step(plain, _batch(i))
    through, _ = step(through, _batch(i))
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(through.params), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
