"""Masked training as an Optax transformation, for any optimizer and any training loop.

`optax.masked` takes a mask per leaf, not per element, and masking only the gradients lets Adam's
momentum bring pruned weights back. `masked(tx)` multiplies the gradients by the mask before the
inner optimizer (so its moments see zeros) and the updates after it (so nothing — momentum,
weight decay, anything the inner chain adds — moves a pruned weight). With params already zero
at pruned entries (`masks.apply_masks`) and moments zeroed at prune time (`prune_opt_state`),
pruned weights stay exactly 0.0 however long training runs.

Two forms, one transformation:

    # Masks carried in the optimizer state: the stock flax TrainState and nnx.Optimizer work
    # unchanged (state.apply_gradients(grads=g), optimizer.update(model, grads)).
    tx = pruning.masked(optax.adam(1e-3), masks=masks)
    opt_state = pruning.prune_opt_state(tx, opt_state, new_masks)  # when the masks change

    # Masks beside the params (the launcher's TrainState.masks, checkpointed with the params):
    tx = pruning.masked(optax.adam(1e-3))
    updates, opt_state = tx.update(grads, opt_state, params, masks=masks)

Masks given to `update` are used (and, in the carrying form, stored); without them the carried
ones are. Masks are matched to the gradients by path (an `nnx.State` and a pure dict of the same
model match), must be bool and of each leaf's exact shape.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bigmodel_jax.pruning import masks as masks_lib
from bigmodel_jax.tree import leaf_paths, path_str


class MaskedState(NamedTuple):
  """The state of `masked(inner, masks=...)`: the inner optimizer's state and the masks."""
  inner: optax.OptState
  masks: Any


def masked(inner: optax.GradientTransformation, *, masks: Any = None,
           mask_gradients: bool = True) -> optax.GradientTransformationExtraArgs:
  """Wraps `inner` so that entries where the masks are False get zero gradient and zero update.

  Args:
    inner: the optimizer (any optax transformation, chains and wrappers included).
    masks: None: `update` must be given `masks=` (masks live beside the params). A bool tree
      like the params: `init` stores them in the state (`MaskedState`) and `update` uses them,
      so a loop that knows nothing of pruning works; change them with `prune_opt_state`.
    mask_gradients: also zero the gradients before `inner`. The updates are masked either way,
      which alone keeps pruned weights at zero; masking the gradients as well keeps the inner
      state clean and matters when `inner` looks across entries (global-norm clipping counts
      pruned gradients otherwise). False saves one pass over the gradients per step.
  """
  inner = optax.with_extra_args_support(inner)
  carry = masks is not None
  initial_masks = masks

  def init_fn(params):
    state = inner.init(params)
    if not carry:
      return state
    return MaskedState(state, masks_lib.check_masks(params, initial_masks, 'masked'))

  def update_fn(updates, state, params=None, *, masks=None, **extra_args):
    inner_state = state.inner if carry else state
    if masks is None:
      if not carry:
        raise ValueError(
            'masked(inner).update needs the masks: tx.update(grads, state, params, masks=masks); '
            'or build it as masked(inner, masks=masks) to carry them in the optimizer state (for '
            'flax TrainState.apply_gradients and nnx.Optimizer.update).')
      masks = state.masks
    masks = masks_lib.check_masks(updates, masks, 'masked(...).update')
    zero = lambda u, m: jnp.where(m, u, jnp.zeros_like(u))  # noqa: E731
    if mask_gradients:
      updates = jax.tree.map(zero, updates, masks)
    updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
    updates = jax.tree.map(zero, updates, masks)
    return updates, (MaskedState(inner_state, masks) if carry else inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _params_path(path: str, mask_paths: dict[str, Any]) -> str | None:
  """The longest params path that `path` (an optimizer-state leaf) ends with, if any."""
  parts = path.split('/')
  for i in range(len(parts)):
    suffix = '/'.join(parts[i:])
    if suffix in mask_paths:
      return suffix
  return '' if '' in mask_paths else None  # Params that are one bare array.


def prune_opt_state(tx: Any, opt_state: Any, masks: Any) -> Any:
  """Zeroes every params-shaped optimizer buffer at pruned entries and stores carried masks.

  Call it whenever masks change, so that a newly pruned weight carries no stale momentum. A
  buffer is params-shaped when its path ends with a parameter's path and it has that
  parameter's shape and a floating dtype (Adam's and Lion's moments, momentum, MultiSteps'
  accumulated gradients, through chain / inject_hyperparams / MultiSteps / nnx.Optimizer's
  state alike). Everything else is left exactly as it is: step counters, hyperparameters, and
  buffers of another shape, which this function cannot prune: adafactor's factored row and
  column statistics, SM3's per-axis accumulators, L-BFGS's memory [history, *shape]. Pruned
  weights still stay exactly zero with those (the updates are masked); only their statistics
  keep values from before pruning. The masks in a `MaskedState` (`masked(..., masks=...)`) are
  replaced by `masks`.

  Args:
    tx: the optimizer; not needed to find the buffers (kept so existing calls keep working).
    opt_state: its state (pure arrays; for an `nnx.Optimizer` use `prune_nnx_optimizer`).
    masks: bool tree like the params (an `nnx.State` or a pure dict).
  """
  del tx
  by_path = dict(zip(leaf_paths(masks), jax.tree.leaves(masks), strict=True))
  for path, m in by_path.items():
    if masks_lib.dtype_of(m) != jnp.bool_:
      raise ValueError(f'prune_opt_state: masks at {path} has dtype {masks_lib.dtype_of(m)}; '
                       'masks must be bool (True = keep).')

  def zero(path: str, leaf: Any) -> Any:
    target = _params_path(path, by_path)
    if target is None or not masks_lib.is_float(leaf):
      return leaf
    m = by_path[target]
    if tuple(jnp.shape(leaf)) != tuple(jnp.shape(m)):
      return leaf
    return jnp.where(m, leaf, jnp.zeros_like(leaf))

  def visit(tree: Any) -> Any:
    def fn(path, node):
      if isinstance(node, MaskedState):
        return MaskedState(visit(node.inner),
                           masks_lib.check_masks(node.masks, masks, 'prune_opt_state'))
      return zero(path_str(path), node)
    return jax.tree_util.tree_map_with_path(fn, tree,
                                            is_leaf=lambda x: isinstance(x, MaskedState))
  return visit(opt_state)


def prune_nnx_optimizer(optimizer: Any, masks: Any) -> None:
  """`prune_opt_state` on a Flax `nnx.Optimizer`, in place (NNX objects are mutable).

  Zeroes its params-shaped moments at pruned entries and, if its `tx` is
  `masked(..., masks=...)`, stores `masks` as the ones the next updates use. The model's weights
  are pruned separately: `nnx.update(model, pruning.apply_masks(nnx.state(model, nnx.Param),
  masks))`.
  """
  from flax import nnx  # Only NNX users need it.
  pure = nnx.as_pure(optimizer.opt_state)
  nnx.update(optimizer.opt_state, nnx.state(prune_opt_state(optimizer.tx, pure, masks)))
