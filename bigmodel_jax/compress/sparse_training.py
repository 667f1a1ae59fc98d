"""Drivers of `prune.training` other than 'masked': straight-through and dynamic sparse training.

    ste         the gradual ramp with straight-through training (`pruning.ste`): the dense
                weights live in the optimizer state and keep training; masks are recomputed
                from their magnitude every `prune.gradual_every_steps`.
    set | rigl  prune once (the variant's selection and `prune.distribution`), then retrain with
                drop-and-regrow every `prune.dst_every_steps` (`pruning.dynamic`) until
                `prune.dst_end_fraction` of the phase; per-layer counts stay exact.

Same signature and row fields as `schedules.DRIVERS`; the train state's checkpoints keep the
masks beside the params, and the optimizer state holds what these methods need (the dense
weights, or the current masks).
"""

import dataclasses
import os
from typing import Any

from bigmodel_jax import optim, pruning
from bigmodel_jax.compress import phases, schedules
from bigmodel_jax.compress.context import Context
from bigmodel_jax.config import Variant, parse_overrides
from bigmodel_jax.pruning import dynamic as dynamic_lib
from bigmodel_jax.pruning import ste as ste_lib


def _run_with(ctx: Context, epochs: int, wrap):
  """The retraining run with `wrap(configured optimizer)` in place of the masked one."""
  run = ctx.retrain_run(epochs)
  base, _ = optim.create_optimizer(run.config.optimizer, run.steps.per_epoch, run.steps.total)
  return dataclasses.replace(run, tx=wrap(base))


def _row(p) -> dict[str, Any]:
  row = {'retrain_epochs': p.retrain_epochs, 'training': p.training}
  if p.retrain_steps:
    row['retrain_steps'] = p.retrain_steps
  return row


def ste(ctx: Context, run_dir: str, dense_dir: str, dense_state, variant: Variant,
        sparsity: float, prunable, prefix: str) -> tuple[Any, Any, Any, dict[str, Any]]:
  """Straight-through training along the gradual ramp, from the dense model."""
  del dense_dir
  p = ctx.config.prune
  begin, end = schedules.gradual_ramp(ctx)
  hook = ste_lib.mask_updater(
      final_sparsity=sparsity, begin_step=begin, end_step=end, frequency=p.gradual_every_steps,
      prunable=prunable, scope=variant.kind,
      overrides=schedules.leaf_targets(ctx, dense_state.params, sparsity, prunable))
  run = _run_with(ctx, p.retrain_epochs, ste_lib.optimizer)
  state = phases.retrain(ctx, os.path.join(run_dir, 'retrained'), dense_state.params,
                         pruning.ones_like(dense_state.params), prunable, p.retrain_epochs,
                         before_step=hook, prefix=prefix, run=run,
                         opt_state_fn=lambda tx, params, masks: tx.init(params))
  return state.params, state.masks, None, {'one_shot_test_accuracy': None, **_row(p)}


def dynamic(ctx: Context, run_dir: str, dense_dir: str, dense_state, variant: Variant,
            sparsity: float, prunable, prefix: str) -> tuple[Any, Any, Any, dict[str, Any]]:
  """One-shot pruning, then retraining with SET / RigL drop-and-regrow."""
  del dense_dir
  p = ctx.config.prune
  params, masks, _, meta = phases.prune(ctx, os.path.join(run_dir, 'pruned'), variant, sparsity,
                                        dense_state.params, prunable,
                                        overrides=parse_overrides(p.overrides))
  ctx.console.line(f'{prefix}pruned to {meta["sparsity"]:.4f}: test_accuracy before '
                   f'{p.training} retraining {meta["test_accuracy"]:.4f}')
  steps = ctx.retrain_run(p.retrain_epochs).steps.total
  end = max(1, int(p.dst_end_fraction * steps))

  def wrap(base):
    return dynamic_lib.optimizer(base, method=p.training, prunable=prunable,
                                 every=p.dst_every_steps, end_step=end,
                                 initial_fraction=p.dst_drop_fraction, seed=ctx.config.seed + 2)
  state = phases.retrain(
      ctx, os.path.join(run_dir, 'retrained'), params, masks, prunable, p.retrain_epochs,
      before_step=dynamic_lib.sync_masks, prefix=prefix, run=_run_with(ctx, p.retrain_epochs, wrap),
      opt_state_fn=lambda tx, params, masks: dynamic_lib.with_masks(tx.init(params), masks))
  row = {'one_shot_test_accuracy': meta['test_accuracy'],
         'one_shot_test_loss': meta.get('test_loss'), 'dst_end_step': end, **_row(p)}
  return state.params, state.opt_state.masks, None, row


DRIVERS = {'ste': ste, 'set': dynamic, 'rigl': dynamic}
