"""Dynamic sparse training: drop and regrow weights on a schedule at a fixed count per layer.

    SET   (Mocanu et al. 2018): drop the smallest-magnitude active weights, regrow at random.
    RigL  (Evci et al. 2020): drop the same way, regrow where the dense gradient is largest.

Every `every` steps until `end_step`, each prunable leaf drops a fraction of its active weights
(`drop_fraction`: cosine-decayed from `initial_fraction` to 0 at `end_step`, as in RigL) and
regrows exactly as many among the inactive ones (a weight just dropped may come back), so every
leaf keeps its number of active weights. Regrown weights start at exactly zero with zeroed
optimizer moments; dropped weights become zero and lose their moments.

Research code calls the pure functions in its own step:

    grads = jax.grad(loss)(params)                 # dense gradient: pruned entries included
    new = dynamic.rigl_masks(params, masks, grads, fraction=dynamic.drop_fraction(step, ...))
    params, opt_state = dynamic.apply_new_masks(tx, params, opt_state, masks, new)

or lets the optimizer do it (`optimizer(...)`, what the launcher uses): a transformation that
holds the masks in its state (`DynamicState.masks`) and updates them on schedule from the
gradients it receives; `sync_masks` is a train-step hook that copies them into the train state.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bigmodel_jax.pruning import optimizer as optimizer_lib
from bigmodel_jax.pruning import selection

METHODS = ('set', 'rigl')


def drop_fraction(step, *, initial_fraction: float, end_step: int):
  """RigL's cosine decay: initial / 2 * (1 + cos(pi * step / end_step)), 0 from end_step on."""
  step = jnp.asarray(step, jnp.float32)
  value = 0.5 * initial_fraction * (1 + jnp.cos(jnp.pi * jnp.minimum(step / end_step, 1.0)))
  return jnp.where(step < end_step, value, 0.0)


def is_update_step(step, *, every: int, end_step: int, begin_step: int = 0):
  """True on begin_step + i * every (i >= 1) before end_step: when masks are redrawn."""
  step = jnp.asarray(step)
  return (step > begin_step) & (step < end_step) & ((step - begin_step) % every == 0)


def _drop_and_regrow(mask, weight, grow_score, fraction):
  """New mask of one leaf: the `fraction` of its active entries with the smallest |weight|
  dropped, as many regrown where `grow_score` is highest among the entries not kept."""
  active = jnp.sum(mask, dtype=jnp.int32)
  k = jnp.round(jnp.asarray(fraction, jnp.float32) * active).astype(jnp.int32)
  # Inactive entries rank above every active one, so the k lowest are active weights.
  drop_score = jnp.where(mask, jnp.abs(weight).astype(jnp.float32), jnp.inf)
  kept = mask & selection.lowest_k_masks([drop_score], k)[0]
  # Among the candidates (not kept), the k with the highest grow score; kept ones rank last.
  grow = jnp.where(kept, jnp.inf, -grow_score.astype(jnp.float32))
  grown = ~selection.lowest_k_masks([grow], k)[0]
  return kept | grown


def _map_prunable(fn, prunable, masks, *trees):
  """fn(mask, *leaves of trees) on the prunable leaves of `masks`; others unchanged."""
  leaves, treedef = jax.tree.flatten(masks)
  flags = jax.tree.leaves(prunable) if prunable is not None else [True] * len(leaves)
  others = [jax.tree.leaves(t) for t in trees]
  out = [fn(m, *(o[i] for o in others)) if flags[i] else m for i, m in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def set_masks(params: Any, masks: Any, key: jax.Array, *, fraction, prunable: Any = None) -> Any:
  """SET: per prunable leaf, drop `fraction` of the active weights by magnitude, regrow as many
  at random (uniformly among the entries not kept). Counts per leaf are unchanged."""
  count = len(jax.tree.leaves(masks))
  keys = jax.tree.unflatten(jax.tree.structure(masks), list(jax.random.split(key, count)))
  return _map_prunable(
      lambda m, w, k: _drop_and_regrow(m, w, jax.random.uniform(k, m.shape), fraction),
      prunable, masks, params, keys)


def rigl_masks(params: Any, masks: Any, grads: Any, *, fraction, prunable: Any = None) -> Any:
  """RigL: per prunable leaf, drop `fraction` of the active weights by magnitude, regrow as many
  where |dense gradient| is largest. `grads` must be the loss gradient with respect to the
  params (pruned entries included: not masked). Counts per leaf are unchanged."""
  return _map_prunable(lambda m, w, g: _drop_and_regrow(m, w, jnp.abs(g), fraction),
                       prunable, masks, params, grads)


def apply_new_masks(tx: optax.GradientTransformation, params: Any, opt_state: Any, old_masks: Any,
                    new_masks: Any) -> tuple[Any, Any]:
  """(params, opt_state) after a mask change: dropped and regrown weights are exactly zero and
  their params-shaped optimizer buffers (moments) zeroed; weights kept throughout are untouched.
  """
  both = jax.tree.map(jnp.logical_and, old_masks, new_masks)
  params = jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), params, both)
  return params, optimizer_lib.prune_opt_state(tx, opt_state, both)


class DynamicState(NamedTuple):
  """The state of `optimizer`: its step count, the current masks and the inner state."""
  count: jax.Array
  masks: Any
  inner: Any


def optimizer(inner: optax.GradientTransformation, *, method: str, prunable: Any,
              every: int, end_step: int, initial_fraction: float = 0.3, begin_step: int = 0,
              seed: int = 0) -> optax.GradientTransformationExtraArgs:
  """`inner`, masked by masks it holds and redraws by SET or RigL on the schedule.

  On an update step (`is_update_step` of the optimizer's count) the masks change first; the
  step's update then moves only the weights active before and after (regrown ones start at zero
  with zero moments, dropped ones are set to zero). A `masks=` argument is accepted and ignored:
  the state's masks are the current ones (copy them into a train state with `sync_masks`).

  Args:
    inner: the optimizer (it is wrapped by `masked`, gradients masked too).
    method: 'set' or 'rigl'.
    prunable: tree of bools; other leaves keep all-True masks.
    every, end_step, begin_step: redraw on begin_step + i * every before end_step.
    initial_fraction: drop fraction at begin_step, decayed by cosine to 0 at end_step.
    seed: SET's random regrowth (folded with the step).
  """
  if method not in METHODS:
    raise ValueError(f'method={method!r}: use one of {", ".join(METHODS)}.')
  tx = optimizer_lib.masked(inner, mask_gradients=True)

  def init_fn(params):
    masks = jax.tree.map(lambda x: jnp.ones(jnp.shape(x), jnp.bool_), params)
    return DynamicState(jnp.zeros((), jnp.int32), masks, tx.init(params))

  def redraw(grads, state, params):
    fraction = drop_fraction(state.count - begin_step, initial_fraction=initial_fraction,
                             end_step=end_step - begin_step)
    if method == 'rigl':
      return rigl_masks(params, state.masks, grads, fraction=fraction, prunable=prunable)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), state.count)
    return set_masks(params, state.masks, key, fraction=fraction, prunable=prunable)

  def update_fn(updates, state, params=None, *, masks=None, **extra_args):
    del masks  # The state's masks are the current ones.
    if params is None:
      raise ValueError('Dynamic sparse training needs the params: tx.update(grads, state, '
                       'params).')
    due = is_update_step(state.count, every=every, end_step=end_step, begin_step=begin_step)
    new_masks = jax.lax.cond(due, redraw, lambda g, s, p: s.masks, updates, state, params)
    both = jax.tree.map(jnp.logical_and, state.masks, new_masks)
    inner_state = jax.lax.cond(due, lambda s: optimizer_lib.prune_opt_state(tx, s, both),
                               lambda s: s, state.inner)
    live = jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), params, both)
    step, inner_state = tx.update(updates, inner_state, live, masks=both, **extra_args)
    # Dropped weights go to zero: the update takes them from their value to 0.
    step = jax.tree.map(lambda u, x, y: u + (y - x), step, params, live)
    return step, DynamicState(state.count + 1, new_masks, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_masks(opt_state: DynamicState, masks: Any) -> DynamicState:
  """`opt_state` of `optimizer` holding `masks` (e.g. the one-shot masks training starts from)."""
  return opt_state._replace(masks=masks)


def sync_masks(state):
  """A train-step hook (`train.train_step(before_step=...)`): the train state's masks become the
  optimizer's (`optimizer` must be the state's outermost transformation)."""
  return state.replace(masks=state.opt_state.masks)
