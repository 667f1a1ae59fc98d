"""Masked training with any optax optimizer: the stock flax TrainState, nnx.Optimizer, and
`prune_opt_state` on every kind of optimizer state (issue 16)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

from bigmodel_jax import pruning

OPTIMIZERS = {
    'adam': lambda: optax.adam(1e-2),
    'adamw': lambda: optax.adamw(1e-2, weight_decay=0.1),
    'sgd_momentum': lambda: optax.sgd(1e-2, momentum=0.9),
    'lion': lambda: optax.lion(1e-3),
    'adafactor': lambda: optax.adafactor(1e-2),  # Factors the [256, 130] kernel.
    'sm3': lambda: optax.sm3(1e-2),
    'chain': lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
    'multi_steps': lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
    'inject_hyperparams': lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
}


def _params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return {'a': {'kernel': jax.random.normal(k1, (256, 130)) * 0.05, 'bias': jnp.zeros(130)},
          'b': {'kernel': jax.random.normal(k2, (130, 4)) * 0.1, 'bias': jnp.zeros(4)}}


def _apply(variables, x):
  p = variables['params']
  h = jax.nn.relu(x @ p['a']['kernel'] + p['a']['bias'])
  return h @ p['b']['kernel'] + p['b']['bias']


X = jax.random.normal(jax.random.PRNGKey(1), (32, 256))
Y = jax.random.normal(jax.random.PRNGKey(2), (32, 4))


def _loss(params):
  return jnp.mean((_apply({'params': params}, X) - Y) ** 2)


def _masks(params, sparsity=0.5):
  return pruning.masks_from_scores(pruning.magnitude(params), sparsity,
                                   prunable=pruning.prunable_tree(params))


def _check_pruned_buffers(before, after, masks):
  """Same structure, shapes and dtypes; params-shaped float buffers zero where pruned."""
  assert jax.tree.structure(before) == jax.tree.structure(after)
  mask_by_path = dict(zip(pruning.leaf_paths(masks), jax.tree.leaves(masks), strict=True))
  zeroed = 0
  for path, b, a in zip(pruning.leaf_paths(before), jax.tree.leaves(before),
                        jax.tree.leaves(after), strict=True):
    assert (a.shape, a.dtype) == (b.shape, b.dtype), path
    target = next((q for q in mask_by_path if path.endswith('/' + q)), None)
    if target and a.shape == mask_by_path[target].shape and jnp.issubdtype(a.dtype, jnp.floating):
      m = np.asarray(mask_by_path[target])
      np.testing.assert_array_equal(np.asarray(a)[~m], 0.0)
      np.testing.assert_array_equal(np.asarray(a)[m], np.asarray(b)[m])
      zeroed += 1
    else:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  return zeroed


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_stock_train_state_keeps_pruned_weights_zero(name):
  """flax's own TrainState.apply_gradients(grads=g) with masks carried in the optimizer state:
  before, a masked optimizer raised there (masks reached `replace`, not `tx.update`); and
  prune_opt_state corrupted adafactor's factored state and raised on sm3."""
  params = _params()
  tx = pruning.masked(OPTIMIZERS[name](), masks=pruning.ones_like(params))
  state = train_state.TrainState.create(apply_fn=_apply, params=params, tx=tx)
  step = jax.jit(lambda s: s.apply_gradients(grads=jax.grad(_loss)(s.params)))
  for _ in range(4):  # Dense steps first, so the moments are non-zero when we prune.
    state = step(state)
  masks = _masks(state.params)
  opt_state = pruning.prune_opt_state(tx, state.opt_state, masks)
  zeroed = _check_pruned_buffers(state.opt_state.inner, opt_state.inner, masks)
  if name not in ('sm3', 'adafactor'):
    assert zeroed >= 4, f'{name}: only {zeroed} params-shaped buffers found'
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), opt_state.masks, masks))
  state = state.replace(params=pruning.apply_masks(state.params, masks), opt_state=opt_state)
  start = state.params
  for _ in range(100):
    state = step(state)
  for path, w, m in zip(pruning.leaf_paths(masks), jax.tree.leaves(state.params),
                        jax.tree.leaves(masks), strict=True):
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0), f'{name}: {path} revived'
    assert np.all(np.isfinite(np.asarray(w)))
  moved = np.asarray(state.params['a']['kernel'] != start['a']['kernel'])
  assert moved[np.asarray(masks['a']['kernel'])].mean() > 0.5  # Kept weights do train.


def test_lbfgs_keeps_pruned_weights_zero():
  """L-BFGS (extra args value/grad/value_fn reach the inner line search through `masked`)."""
  params = _params()
  masks = _masks(params)
  tx = pruning.masked(optax.lbfgs(), masks=masks)
  params = pruning.apply_masks(params, masks)
  opt_state = tx.init(params)
  value_and_grad = optax.value_and_grad_from_state(_loss)

  @jax.jit
  def step(params, opt_state):
    value, grad = value_and_grad(params, state=opt_state.inner)
    updates, opt_state = tx.update(grad, opt_state, params, value=value, grad=grad,
                                   value_fn=_loss)
    return optax.apply_updates(params, updates), opt_state

  before = _loss(params)
  for _ in range(100):
    params, opt_state = step(params, opt_state)
  assert _loss(params) < before
  for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks), strict=True):
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
  # Its memory [history, *shape] is not params-shaped: left exactly as it is, not broadcast.
  _check_pruned_buffers(opt_state, pruning.prune_opt_state(tx, opt_state, masks), masks)


def test_prune_opt_state_leaves_factored_state_alone():
  """adafactor: 514 floats of factored statistics once became 196,609 (the mask broadcast)."""
  params = _params()
  tx = optax.adafactor(1e-2)
  opt_state = tx.init(params)
  opt_state = tx.update(jax.grad(_loss)(params), opt_state, params)[1]
  masks = _masks(params)
  pruned = pruning.prune_opt_state(tx, opt_state, masks)
  size = lambda t: sum(x.size for x in jax.tree.leaves(t))  # noqa: E731
  assert size(pruned) == size(opt_state)
  _check_pruned_buffers(opt_state, pruned, masks)


def test_explicit_masks_form_still_needs_masks():
  params = _params()
  tx = pruning.masked(optax.adam(1e-2))
  grads = jax.grad(_loss)(params)
  with pytest.raises(ValueError, match='masks=masks'):
    tx.update(grads, tx.init(params), params)
  masks = _masks(params)
  updates, _ = tx.update(grads, tx.init(params), params, masks=masks)
  assert np.all(np.asarray(updates['a']['kernel'])[~np.asarray(masks['a']['kernel'])] == 0)


class _Mlp(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(8, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.l2(jax.nn.relu(self.l1(x)))


def _nnx_setup(tx_masks: bool):
  model = _Mlp(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  masks = _masks(params)
  nnx.update(model, pruning.apply_masks(params, masks))
  tx = pruning.masked(optax.adam(1e-2), masks=masks if tx_masks else None)
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param), masks


X8 = jax.random.normal(jax.random.PRNGKey(3), (16, 8))
Y3 = jax.random.normal(jax.random.PRNGKey(4), (16, 3))


@nnx.jit
def _nnx_step(model, optimizer, masks=None):
  grads = nnx.grad(lambda m: jnp.mean((m(X8) - Y3) ** 2))(model)
  optimizer.update(model, grads, **({} if masks is None else {'masks': masks}))


def _assert_nnx_pruned(model, masks):
  for w, m in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(masks),
                  strict=True):
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)


def test_nnx_optimizer_with_carried_masks():
  model, optimizer, masks = _nnx_setup(tx_masks=True)
  for _ in range(100):
    _nnx_step(model, optimizer)
  _assert_nnx_pruned(model, masks)


def test_nnx_optimizer_with_pure_dict_masks():
  """optimizer.update(model, grads, masks=...) once worked only with an nnx.State."""
  model, optimizer, masks = _nnx_setup(tx_masks=False)
  pure = nnx.to_pure_dict(masks)
  for _ in range(20):
    _nnx_step(model, optimizer, pure)
  _assert_nnx_pruned(model, masks)


def test_prune_nnx_optimizer_zeroes_moments_and_sets_masks():
  """Before, prune_opt_state raised a structure error on nnx.Optimizer's state."""
  model, optimizer, dense = _nnx_setup(tx_masks=True)
  for _ in range(3):
    _nnx_step(model, optimizer)
  masks = _masks(nnx.state(model, nnx.Param), 0.8)
  nnx.update(model, pruning.apply_masks(nnx.state(model, nnx.Param), masks))
  pruning.prune_nnx_optimizer(optimizer, masks)
  mu = nnx.as_pure(optimizer.opt_state).inner[0].mu
  kept = np.asarray(nnx.as_pure(masks['l1']['kernel']))
  assert np.all(np.asarray(mu['l1']['kernel'])[~kept] == 0)
  assert np.any(np.asarray(mu['l1']['kernel'])[kept] != 0)
  for _ in range(30):
    _nnx_step(model, optimizer)
  _assert_nnx_pruned(model, masks)  # The new, sparser masks are the ones in use.


def test_carried_masks_found_inside_wrappers():
  """`masked` inside MultiSteps / chain: prune_opt_state still finds and replaces its masks."""
  params = _params()
  inner = pruning.masked(optax.adam(1e-2), masks=pruning.ones_like(params))
  tx = optax.MultiSteps(optax.chain(optax.clip(1.0), inner), every_k_schedule=2)
  state = train_state.TrainState.create(apply_fn=_apply, params=params, tx=tx)
  step = jax.jit(lambda s: s.apply_gradients(grads=jax.grad(_loss)(s.params)))
  state = step(step(state))
  masks = _masks(state.params)
  state = state.replace(params=pruning.apply_masks(state.params, masks),
                        opt_state=pruning.prune_opt_state(tx, state.opt_state, masks))
  for _ in range(20):
    state = step(state)
  for w, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks), strict=True):
    assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
