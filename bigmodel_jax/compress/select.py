"""Masks for one variant at one sparsity: the registry's method scores, the kind selects.

`pruning.methods` says what each method scores with; this module applies it to the sweep's
params: layer-by-layer methods (Wanda, SparseGPT) through `pruning.oneshot`, whole attention
heads through `pruning.heads`, and every other method through its weight scores and the kind's
selector (`SELECTORS`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax import pruning
from bigmodel_jax.compress.context import Context
from bigmodel_jax.config import Variant
from bigmodel_jax.errors import ConfigError


def _global_or_layerwise(scores, variant, sparsity, params, prunable, overrides):
  del params
  return jax.jit(lambda s: pruning.masks_from_scores(
      s, sparsity, scope=variant.kind, prunable=prunable, overrides=overrides))(scores), None


def _neurons(scores, variant, sparsity, params, prunable, overrides):
  del variant, prunable, overrides
  keep = pruning.neuron_keep(scores, sparsity, scope='layerwise')
  return pruning.neuron_masks(params, keep), keep


def _n_of_m(scores, variant, sparsity, params, prunable, overrides):
  del sparsity, params, overrides
  return pruning.nm_masks(scores, variant.n, variant.m, prunable=prunable), None


# Kind -> (scores, variant, sparsity, params, prunable, overrides) -> (masks, kept units or None).
SELECTORS = {'global': _global_or_layerwise, 'layerwise': _global_or_layerwise,
             'neuron': _neurons, 'nm': _n_of_m}


def select(ctx: Context, variant: Variant, sparsity: float, params, prunable,
           previous_masks=None, overrides=None) -> tuple[Any, Any, Any]:
  """Scores `params` by the variant's method and selects (`overrides`: per-layer sparsities).

  Returns:
    (masks, kept neurons / heads or None, params: SparseGPT's updated ones, else the given ones).
  """
  method = variant.method
  p = ctx.config.prune
  if variant.kind == 'nm' and p.nm_skip_indivisible:  # ASP's rule: leave those layers dense.
    prunable, _ = pruning.nm_prunable(params, variant.m, prunable)
  if variant.kind in ('global', 'layerwise') and method.score is not None:
    overrides = pruning.distributions.spread_overrides(
        params, sparsity, distribution=p.distribution, prunable=prunable, overrides=overrides)
  if method.layer_rule is not None:
    calibration = [b['inputs'] for b in ctx.score_batches()]
    target = ({'n': variant.n, 'm': variant.m} if variant.kind == 'nm'
              else {'sparsity': sparsity})
    try:
      params, masks = pruning.oneshot.prune(ctx.model.apply, params, calibration,
                                            method=method.layer_rule, prunable=prunable,
                                            log=ctx.console.line, **target)
    except ConfigError as error:  # Its errors name its arguments; say which key sets them.
      if 'prunable' not in str(error):
        raise
      raise ConfigError(f'{error} (prune.include chooses the prunable kernels.)') from error
    return masks, None, params
  if variant.kind == 'heads':
    return _head_masks(ctx, variant, sparsity, params, previous_masks) + (params,)
  batches = ctx.score_batches() if method.needs_batches else ()
  scores = method.score(params, loss_fn=pruning.batch_loss_fn(ctx.model.apply,
                                                              ctx.run.eval_loss_fn),
                        batches=batches, key=ctx.seed_key())
  if previous_masks is not None:  # Masks only grow sparser: pruned weights go first.
    scores = jax.tree.map(lambda s, m: jnp.where(m, s, -jnp.inf), scores, previous_masks)
  masks, keep = SELECTORS[variant.kind](scores, variant, sparsity, params, prunable, overrides)
  return masks, keep, params


def _head_masks(ctx: Context, variant: Variant, sparsity: float, params,
                previous_masks=None) -> tuple[Any, dict[str, np.ndarray]]:
  """(masks, {block: bool [heads] kept}) removing `sparsity` of the heads of every block."""
  model = ctx.model  # A GPT or ViT (the sweep checked).
  head_dim = model.embed_dim // model.num_heads
  calibration = [b['inputs'] for b in ctx.score_batches()]
  scores = variant.method.head_score(model.apply, params, calibration, head_dim=head_dim,
                                     seed=ctx.config.seed + 1)
  if previous_masks is not None:  # Heads removed in an earlier round stay removed.
    kept = pruning.heads.kept_heads(ctx.par.to_host(previous_masks), head_dim)
    scores = {name: np.where(kept[name], s, -np.inf) for name, s in scores.items()}
  keep = pruning.heads.keep_heads(scores, sparsity)
  return pruning.heads.head_masks(params, keep, head_dim), keep


def keep_to_meta(variant: Variant, keep) -> dict[str, Any]:
  """What was kept by a structured variant, as JSON for the prune checkpoint's metadata:
  'neuron_keep' (one 0/1 list per hidden layer) or 'head_keep' ({block: 0/1 per head})."""
  neurons = variant.kind == 'neuron' and keep is not None
  heads = variant.kind == 'heads' and keep is not None
  return {'neuron_keep': [np.asarray(k).astype(int).tolist() for k in keep] if neurons else None,
          'head_keep': ({k: np.asarray(v).astype(int).tolist() for k, v in keep.items()}
                        if heads else None)}


def keep_from_meta(variant: Variant, meta: dict[str, Any]):
  """`keep_to_meta`'s inverse: a list (neurons) or dict (heads) of bool arrays, else None."""
  if variant.kind == 'neuron' and meta.get('neuron_keep'):
    return [np.asarray(k, bool) for k in meta['neuron_keep']]
  if variant.kind == 'heads' and meta.get('head_keep'):
    return {k: np.asarray(v, bool) for k, v in meta['head_keep'].items()}
  return None
