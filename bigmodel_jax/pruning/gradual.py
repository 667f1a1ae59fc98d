"""Gradual magnitude pruning (Zhu & Gupta 2017) inside the compiled train step.

`mask_updater(...)` returns a `before_step` hook for `train.train_step`: on the schedule's update
steps it recomputes the masks from the current weights at the scheduled sparsity, zeroes the
newly pruned weights and their optimizer moments, and on other steps does nothing (a `lax.cond`,
so the skipped branch costs nothing). Selection counts by bisection, no sort, so an update every
100 steps adds little to training time.
"""

from collections.abc import Mapping
from typing import Any

import jax

from bigmodel_jax.pruning import masks as masks_lib
from bigmodel_jax.pruning import methods, optimizer, schedules, scores, selection


def mask_updater(*, final_sparsity: float, begin_step: int, end_step: int, frequency: int,
                 prunable: Any, scope: str = 'global', method: str = 'magnitude',
                 initial_sparsity: float = 0.0, seed: int = 0,
                 overrides: Mapping[str, float] | None = None):
  """A state -> state hook that prunes on the polynomial schedule (see `schedules`).

  For `train.train_step(state, batch, before_step=hook)`: `state` is the library's
  `train_state.TrainState` (it reads `step`, `params`, `masks`, `opt_state`, `tx` and writes
  new `params`, `masks` and `opt_state`, whose moments of newly pruned weights are zeroed and
  whose carried masks, for `masked(..., masks=...)`, are replaced). `prunable` is matched to
  the params by path.

  Args:
    final_sparsity: sparsity reached at `end_step` and kept afterwards.
    begin_step, end_step, frequency: masks change on begin_step + i * frequency and end_step.
    prunable: tree of bools (`masks.prunable_tree`).
    scope: 'global' or 'layerwise'.
    method: 'magnitude' (scores from the current weights) or 'random' (a control; a pruned
      weight, being zero, stays pruned as the sparsity rises).
    overrides: {path pattern: final sparsity} for leaves pruned on their own (layer-wise) to
      their own target, outside the global ranking (`selection.masks_from_scores`). Each follows
      the same cubic ramp, from min(initial_sparsity, its target) to its target.

  Raises:
    ConfigError: a sparsity outside [0, 1), or an override pattern that matches no prunable
      leaf (or a leaf that two patterns match).
  """
  selection.check_sparsity(final_sparsity, 'mask_updater: final_sparsity')
  selection.check_sparsity(initial_sparsity, 'mask_updater: initial_sparsity')
  overrides = dict(overrides or {})
  for pattern, value in overrides.items():
    selection.check_sparsity(value, f'mask_updater: overrides[{pattern!r}]')
  masks_lib.overrides_by_leaf(prunable, prunable, overrides)  # Fails early on a bad pattern.
  if method not in methods.supporting(schedule='gradual'):
    raise ValueError('mask_updater: method must be one of '
                     f'{", ".join(methods.supporting(schedule="gradual"))}; got {method!r}.')
  kwargs = dict(begin_step=begin_step, end_step=end_step, frequency=frequency)

  def update(state):
    sparsity = schedules.polynomial_sparsity(state.step, final_sparsity=final_sparsity,
                                             initial_sparsity=initial_sparsity, **kwargs)
    leaf_sparsity = {
        pattern: schedules.polynomial_sparsity(state.step, final_sparsity=value,
                                               initial_sparsity=min(initial_sparsity, value),
                                               **kwargs)
        for pattern, value in overrides.items()}
    score = scores.magnitude(state.params)
    if method == 'random':
      noise = scores.random(state.params, jax.random.PRNGKey(seed))
      # Already-pruned weights score 0 and go first; the rest in a fixed random order.
      score = jax.tree.map(lambda w, r, m: jax.numpy.where(m, 1.0 + r, 0.0), score, noise,
                           state.masks)
    masks = selection.masks_from_scores(score, sparsity, scope=scope, prunable=prunable,
                                        overrides=leaf_sparsity)
    return state.replace(params=masks_lib.apply_masks(state.params, masks), masks=masks,
                         opt_state=optimizer.prune_opt_state(state.tx, state.opt_state, masks))

  def hook(state):
    return jax.lax.cond(schedules.is_update_step(state.step, **kwargs), update,
                        lambda s: s, state)
  return hook
