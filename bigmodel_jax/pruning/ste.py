"""Straight-through (STE) sparse training: the forward pass sees masked weights, the gradient
updates the dense ones, and masks are recomputed from the dense weights on a schedule, so a
pruned weight that grows back large enough returns (Zhou et al. 2021, jaxpruner's STE pruners).

Research code, in its own loss:

    logits = model.apply({'params': ste.straight_through(params, masks)}, x)

`straight_through` is the masked params in the forward pass and the identity in the backward
one, so every dense weight (pruned ones included) gets the gradient of its masked position;
recompute `masks` from |params| (`selection.masks_from_scores`) on your schedule.
A pruned weight whose dense value grows back past the threshold returns at the next update.

Or with the library's train step (what the launcher uses): `optimizer(inner)` keeps the dense
weights in its state (`STEState.dense`) and sets the train state's params to the masked dense
weights after every update, so evaluation, checkpoints and export see the sparse model as usual
and the step's gradient, taken at the masked params, is the straight-through one;
`mask_updater(...)` is the train-step hook that recomputes the masks from the dense weights
on the gradual schedule's update steps.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bigmodel_jax.pruning import schedules, selection


def straight_through(params: Any, masks: Any) -> Any:
  """Masked params forward, identity backward: d loss / d params = d loss / d masked params."""
  def one(x, m):
    return x + jax.lax.stop_gradient(jnp.where(m, x, jnp.zeros_like(x)) - x)
  return jax.tree.map(one, params, masks)


class STEState(NamedTuple):
  """The state of `optimizer`: the dense weights and the inner optimizer's state."""
  dense: Any
  inner: Any


def optimizer(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`inner` applied to the dense weights; the params become the masked dense weights.

  `update(grads, state, params, masks=masks)`: grads are taken at the (masked) params, the
  inner optimizer moves the dense weights by them (no entry is frozen) and the returned update
  takes the params to where(masks, dense, 0).
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return STEState(params, inner.init(params))

  def update_fn(updates, state, params=None, *, masks=None, **extra_args):
    if masks is None or params is None:
      raise ValueError('STE training needs the params and masks: tx.update(grads, state, '
                       'params, masks=masks).')
    step, inner_state = inner.update(updates, state.inner, state.dense, **extra_args)
    dense = optax.apply_updates(state.dense, step)
    sparse = jax.tree.map(lambda d, m: jnp.where(m, d, jnp.zeros_like(d)), dense, masks)
    return jax.tree.map(jnp.subtract, sparse, params), STEState(dense, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mask_updater(*, final_sparsity: float, begin_step: int, end_step: int, frequency: int,
                 prunable: Any, scope: str = 'global', initial_sparsity: float = 0.0,
                 overrides: Mapping[str, float] | None = None):
  """A train-step hook (`train.train_step(before_step=...)`) for a state whose optimizer is
  `optimizer(...)`: on the gradual schedule's update steps (`schedules.is_update_step`: begin,
  every `frequency`, end), masks from the magnitude of the dense weights at the polynomial
  schedule's sparsity (`overrides` per leaf, each on the same ramp), and params = the masked
  dense weights. Other steps leave the state alone; after end_step the masks stay fixed, as
  jaxpruner's STE pruners do (recomputing them to the end measured worse: see docs/pruning.md)."""
  selection.check_sparsity(final_sparsity, 'final_sparsity')
  overrides = dict(overrides or {})
  kwargs = dict(begin_step=begin_step, end_step=end_step, frequency=frequency)

  def update(state):
    dense = state.opt_state.dense
    sparsity = schedules.polynomial_sparsity(state.step, final_sparsity=final_sparsity,
                                             initial_sparsity=initial_sparsity, **kwargs)
    per_leaf = {pattern: schedules.polynomial_sparsity(
        state.step, final_sparsity=value, initial_sparsity=min(initial_sparsity, value),
        **kwargs) for pattern, value in overrides.items()}
    masks = selection.masks_from_scores(jax.tree.map(jnp.abs, dense), sparsity, scope=scope,
                                        prunable=prunable, overrides=per_leaf)
    params = jax.tree.map(lambda d, m: jnp.where(m, d, jnp.zeros_like(d)), dense, masks)
    return state.replace(params=params, masks=masks)

  def hook(state):
    return jax.lax.cond(schedules.is_update_step(state.step, **kwargs), update, lambda s: s,
                        state)
  return hook
