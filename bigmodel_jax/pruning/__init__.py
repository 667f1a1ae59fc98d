"""Model compression by pruning: scores -> masks -> masked training, as pure pytree functions.

    scores = pruning.magnitude(params)
    masks = pruning.masks_from_scores(scores, 0.9, scope='global',
                                      prunable=pruning.prunable_tree(params))
    params = pruning.apply_masks(params, masks)
    tx = pruning.masked(optax.adam(1e-3), masks=masks)  # pruned weights stay exactly zero
    opt_state = pruning.prune_opt_state(tx, tx.init(params), masks)

Params, scores and masks may be Linen dicts, pure dicts or Flax NNX `nnx.State`s (leaves matched
by path). `masked(tx, masks=...)` carries the masks in the optimizer state, so the stock flax
TrainState and `nnx.Optimizer` need nothing special; `masked(tx)` takes them per update
(`tx.update(..., masks=masks)`), as the launcher's TrainState does.

Masks are bool trees shaped like the params (True = keep). `METHODS` is the registry of pruning
methods (`methods.Method`: score function, kinds, schedules). `distributions` spreads a target
over layers (uniform, ERK), `ste` trains straight-through, `dynamic` drops and regrows (SET,
RigL). See each module for details.
"""

from bigmodel_jax.pruning import (
  distributions,
  dynamic,
  gradual,
  heads,
  layerwise,
  linear,
  llama_structured,
  methods,
  oneshot,
  sequential,
  ste,
)
from bigmodel_jax.pruning.distributions import DISTRIBUTIONS, layer_sparsities
from bigmodel_jax.pruning.export import load_compact, save_compact
from bigmodel_jax.pruning.gradual import mask_updater
from bigmodel_jax.pruning.masks import (
  DEFAULT_INCLUDE,
  apply_masks,
  check_masks,
  leaf_paths,
  ones_like,
  prunable_tree,
  sparsity_stats,
)
from bigmodel_jax.pruning.methods import METHODS, compute_scores
from bigmodel_jax.pruning.optimizer import (
  MaskedState,
  masked,
  prune_nnx_optimizer,
  prune_opt_state,
)
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
  nm_prunable,
)
from bigmodel_jax.pruning.structured import neuron_keep, neuron_masks, neuron_scores, shrink_mlp

__all__ = [
    'DEFAULT_INCLUDE', 'DISTRIBUTIONS', 'METHODS', 'SCHEDULES', 'MaskedState', 'apply_masks',
    'batch_loss_fn', 'check_masks', 'compute_scores', 'distributions', 'dynamic', 'gradual',
    'heads', 'is_update_step', 'iterative_sparsities', 'layer_sparsities', 'layerwise',
    'leaf_paths', 'linear', 'llama_structured', 'load_compact', 'lowest_k_masks', 'magnitude',
    'mask_updater', 'masked', 'masks_from_scores', 'methods', 'neuron_keep', 'neuron_masks',
    'neuron_scores', 'nm_mask', 'nm_masks', 'nm_prunable', 'ones_like', 'oneshot',
    'polynomial_sparsity', 'prunable_tree', 'prune_nnx_optimizer', 'prune_opt_state', 'random',
    'saliency', 'save_compact', 'sensitivity', 'sequential', 'shrink_mlp', 'sparsity_stats', 'ste',
]
