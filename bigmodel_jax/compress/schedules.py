"""The schedule drivers: how one (variant, sparsity) goes from the dense params to pruned ones.

    one_shot   prune once, then retrain (`prune.retrain_epochs` / `retrain_steps`, may be 0)
    iterative  `prune.rounds` prune-retrain rounds, each removing the same fraction of what is
               left (optionally rewinding the kept weights, `prune.rewind_epoch`)
    gradual    one retraining phase whose compiled step prunes on Zhu & Gupta's cubic ramp

Each driver returns (params, masks, kept units or None, its fields of the sweep's row).
"""

import os
from typing import Any

from bigmodel_jax import pruning
from bigmodel_jax.compress import phases
from bigmodel_jax.compress.context import Context
from bigmodel_jax.config import Variant, parse_overrides
from bigmodel_jax.pruning import distributions
from bigmodel_jax.pruning import gradual as gradual_lib


def gradual_ramp(ctx: Context) -> tuple[int, int]:
  """(begin, end) step of the gradual ramp in the retraining phase."""
  p = ctx.config.prune
  if p.gradual_begin_step >= 0:
    return p.gradual_begin_step, p.gradual_end_step
  begin, end = (int(e * ctx.steps_per_epoch) for e in (p.gradual_begin_epoch,
                                                        p.gradual_end_epoch))
  return begin, end


def leaf_targets(ctx: Context, params, sparsity: float, prunable) -> dict[str, float]:
  """`prune.overrides` plus, for `prune.distribution` uniform | erk, every other prunable leaf's
  own target (`pruning.distributions.spread_overrides`)."""
  return distributions.spread_overrides(params, sparsity,
                                        distribution=ctx.config.prune.distribution,
                                        prunable=prunable,
                                        overrides=parse_overrides(ctx.config.prune.overrides))


def gradual(ctx: Context, run_dir: str, dense_dir: str, dense_state, variant: Variant,
            sparsity: float, prunable, prefix: str) -> tuple[Any, Any, Any, dict[str, Any]]:
  """Gradual pruning inside one masked retraining phase, from all-True masks."""
  del dense_dir
  p = ctx.config.prune
  begin, end = gradual_ramp(ctx)
  hook = gradual_lib.mask_updater(
      final_sparsity=sparsity, begin_step=begin, end_step=end, frequency=p.gradual_every_steps,
      prunable=prunable, scope=variant.kind, method=variant.score, seed=ctx.config.seed + 1,
      overrides=leaf_targets(ctx, dense_state.params, sparsity, prunable))
  state = phases.retrain(ctx, os.path.join(run_dir, 'retrained'), dense_state.params,
                         pruning.ones_like(dense_state.params), prunable, p.retrain_epochs,
                         before_step=hook, prefix=prefix)
  row = {'one_shot_test_accuracy': None, 'retrain_epochs': p.retrain_epochs}
  if p.retrain_steps:
    row['retrain_steps'] = p.retrain_steps
  return state.params, state.masks, None, row


def rounds(ctx: Context, run_dir: str, dense_dir: str, dense_state, variant: Variant,
           sparsity: float, prunable, prefix: str) -> tuple[Any, Any, Any, dict[str, Any]]:
  """One-shot (one round) or iterative pruning, each round followed by masked retraining."""
  p = ctx.config.prune
  count = p.rounds if p.schedule == 'iterative' else 1

  def per_round(target):  # Each iterative round removes the same fraction of what is left.
    return (pruning.iterative_sparsities(target, count) if p.schedule == 'iterative'
            else [target])
  # Per-layer overrides follow the same rounds as the global target.
  overrides = {pattern: per_round(value)
               for pattern, value in parse_overrides(p.overrides).items()}
  rewind = None
  if p.schedule == 'iterative' and p.rewind_epoch >= 0:
    rewind = (ctx.template if p.rewind_epoch == 0 else
              ctx.dense_state(dense_dir, p.rewind_epoch * ctx.steps_per_epoch)).params
  params, masks, keep, row = dense_state.params, None, None, {'retrain_epochs': 0}
  for r, target in enumerate(per_round(sparsity)):
    where = run_dir if count == 1 else os.path.join(run_dir, f'round_{r + 1}')
    params, masks, keep, meta = phases.prune(
        ctx, os.path.join(where, 'pruned'), variant, target, params, prunable, masks,
        overrides={pattern: values[r] for pattern, values in overrides.items()})
    if r == 0:
      row['one_shot_test_accuracy'] = meta['test_accuracy']
      row['one_shot_test_loss'] = meta.get('test_loss')
    ctx.console.line(f'{prefix}pruned to {meta["sparsity"]:.4f} (round {r + 1}/{count}): '
                     f'test_accuracy before retraining {meta["test_accuracy"]:.4f}')
    if rewind is not None:
      params = pruning.apply_masks(rewind, masks)
    if p.retrain_epochs > 0 or p.retrain_steps > 0:
      state = phases.retrain(ctx, os.path.join(where, 'retrained'), params, masks, prunable,
                             p.retrain_epochs, prefix=prefix)
      params, masks = state.params, state.masks
      row['retrain_epochs'] += p.retrain_epochs
      row['retrain_steps'] = row.get('retrain_steps', 0) + p.retrain_steps
  return params, masks, keep, row


DRIVERS = {'one_shot': rounds, 'iterative': rounds, 'gradual': gradual}
