"""Masked training as an Optax transformation.

`optax.masked` takes a mask per leaf, not per element, and masking only the gradients lets Adam's
momentum bring pruned weights back. `masked(tx)` multiplies the gradients by the mask before the
inner optimizer (so its moments see zeros) and the updates after it (so nothing — momentum,
weight decay, anything the inner chain adds — moves a pruned weight). With params already zero
at pruned entries (`masks.apply_masks`) and moments zeroed at prune time (`prune_opt_state`),
pruned weights stay exactly 0.0 however long training runs.

The masks are an argument of `update`, not state: they live in the train state beside the
params, are checkpointed with them, and can change between steps (gradual pruning) without
recompiling:

    tx = pruning.masked(optax.adam(1e-3))
    updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax


def masked(inner: optax.GradientTransformation, *,
           mask_gradients: bool = True) -> optax.GradientTransformationExtraArgs:
  """Wraps `inner` so that entries where `masks` is False get zero gradient and zero update.

  Args:
    inner: the optimizer.
    mask_gradients: also zero the gradients before `inner`. The updates are masked either way,
      which alone keeps pruned weights at zero; masking the gradients as well keeps the inner
      state clean and matters when `inner` looks across entries (global-norm clipping counts
      pruned gradients otherwise). False saves one pass over the gradients per step.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return inner.init(params)

  def update_fn(updates, state, params=None, *, masks=None, **extra_args):
    if masks is None:
      raise ValueError('A masked optimizer needs the masks: tx.update(grads, state, params, '
                       'masks=masks).')
    zero = lambda u, m: jnp.where(m, u, jnp.zeros_like(u))  # noqa: E731
    if mask_gradients:
      updates = jax.tree.map(zero, updates, masks)
    updates, state = inner.update(updates, state, params, **extra_args)
    return jax.tree.map(zero, updates, masks), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def prune_opt_state(tx: optax.GradientTransformation, opt_state: Any, masks: Any) -> Any:
  """Zeroes every params-shaped optimizer buffer (Adam's moments, momentum) at pruned entries.

  Call it whenever masks change, so that a newly pruned weight carries no stale momentum.
  Non-param state (step counters, schedules) is left as it is.
  """
  return optax.tree_utils.tree_map_params(
      tx, lambda v, m: jnp.where(m, v, jnp.zeros_like(v)), opt_state, masks,
      transform_non_params=lambda v: v)
