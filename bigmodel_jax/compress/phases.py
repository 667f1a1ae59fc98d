"""The two phases of a sweep, each resumable in its own folder: prune, and masked retraining."""

import time
from typing import Any

import jax

from bigmodel_jax import checkpoint, pruning, training
from bigmodel_jax.compress import select
from bigmodel_jax.compress.context import Context
from bigmodel_jax.config import Variant
from bigmodel_jax.train_state import TrainState


def prune(ctx: Context, directory: str, variant: Variant, sparsity: float, params, prunable,
          previous_masks=None, overrides=None) -> tuple[Any, Any, Any, dict[str, Any]]:
  """Prunes once (or restores a finished prune from `directory`): (params, masks, keep, meta).

  The folder holds an Orbax checkpoint of {params, masks} and, as its JSON metadata, the
  variant, sparsity reached, selection time, what a structured variant kept and the test metrics
  before retraining.
  """
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  try:
    target = {'params': params, 'masks': pruning.ones_like(params)}
    if ckpt.latest_step() is not None:
      arrays, meta = ckpt.restore(ckpt.latest_step(), ctx.par.abstract(target))
      return arrays['params'], arrays['masks'], select.keep_from_meta(variant, meta), meta
    start = time.perf_counter()
    masks, keep, params = select.select(ctx, variant, sparsity, params, prunable,
                                        previous_masks, overrides)
    masks = jax.block_until_ready(ctx.par.place(masks))  # Laid out like the params.
    seconds = time.perf_counter() - start
    params = pruning.apply_masks(params, masks)
    stats = pruning.sparsity_stats(params, masks, prunable)
    meta = {'variant': variant.name, 'target_sparsity': sparsity,
            'sparsity': stats['sparsity'], 'total_sparsity': stats['total_sparsity'],
            'select_seconds': seconds, **select.keep_to_meta(variant, keep)}
    keep = select.keep_from_meta(variant, meta)  # bool numpy arrays, as after a restore.
    evaluation = ctx.test_metrics(params)
    meta['test_accuracy'], meta['test_loss'] = evaluation['accuracy'], evaluation['loss']
    ckpt.save(0, {'params': params, 'masks': masks}, meta)
    ckpt.wait()
    return params, masks, keep, meta
  finally:
    ckpt.close()


def retrain(ctx: Context, directory: str, params, masks, prunable, epochs: int,
            before_step=None, prefix: str = '', run: training.Run | None = None,
            opt_state_fn=None) -> TrainState:
  """Masked retraining from (params, masks) with a fresh optimizer; resumable in `directory`.

  Args:
    run: the phase's run; default `ctx.retrain_run(epochs)` (the masked optimizer).
    opt_state_fn: (tx, params, masks) -> the starting optimizer state; default the fresh one
      with its buffers zeroed at pruned entries.
  """
  def start(state):
    state = state.replace(params=pruning.apply_masks(params, masks), masks=masks)
    if opt_state_fn is not None:
      return state.replace(opt_state=opt_state_fn(state.tx, state.params, masks))
    return state.replace(opt_state=pruning.prune_opt_state(state.tx, state.opt_state, masks))
  run = run if run is not None else ctx.retrain_run(epochs)
  training.train(run, directory, training.Phase(initial_state=start, before_step=before_step,
                                                prunable=prunable, log_prefix=prefix))
  return ctx.restore(directory, run)
