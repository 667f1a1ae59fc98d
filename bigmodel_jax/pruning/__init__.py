"""Model compression by pruning: scores -> masks -> masked training, as pure pytree functions.

    scores = pruning.magnitude(params)
    masks = pruning.masks_from_scores(scores, 0.9, scope='global',
                                      prunable=pruning.prunable_tree(params))
    params = pruning.apply_masks(params, masks)
    tx = pruning.masked(optax.adam(1e-3))             # pruned weights stay exactly zero
    opt_state = pruning.prune_opt_state(tx, tx.init(params), masks)

Masks are bool trees shaped like the params (True = keep). `METHODS` is the registry of pruning
methods (`methods.Method`: score function, kinds, schedules). See each module for details.
"""

from bigmodel_jax.pruning import heads, layerwise, linear, methods, oneshot
from bigmodel_jax.pruning.export import load_compact, save_compact
from bigmodel_jax.pruning.masks import (
  DEFAULT_INCLUDE,
  apply_masks,
  leaf_paths,
  ones_like,
  prunable_tree,
  sparsity_stats,
)
from bigmodel_jax.pruning.methods import METHODS, compute_scores
from bigmodel_jax.pruning.optimizer import masked, prune_opt_state
from bigmodel_jax.pruning.schedules import (
  SCHEDULES,
  is_update_step,
  iterative_sparsities,
  polynomial_sparsity,
)
from bigmodel_jax.pruning.scores import (
  batch_loss_fn,
  magnitude,
  random,
  saliency,
  sensitivity,
)
from bigmodel_jax.pruning.selection import (
  lowest_k_masks,
  masks_from_scores,
  nm_mask,
  nm_masks,
)
from bigmodel_jax.pruning.structured import neuron_keep, neuron_masks, neuron_scores, shrink_mlp

__all__ = [
    'DEFAULT_INCLUDE', 'METHODS', 'SCHEDULES', 'apply_masks', 'batch_loss_fn', 'compute_scores',
    'heads', 'is_update_step', 'iterative_sparsities', 'layerwise', 'leaf_paths', 'linear',
    'load_compact', 'lowest_k_masks', 'magnitude', 'masked', 'masks_from_scores', 'methods',
    'neuron_keep', 'neuron_masks', 'neuron_scores', 'nm_mask', 'nm_masks', 'ones_like',
    'oneshot', 'polynomial_sparsity', 'prunable_tree', 'prune_opt_state', 'random', 'saliency',
    'save_compact', 'sensitivity', 'shrink_mlp', 'sparsity_stats',
]
