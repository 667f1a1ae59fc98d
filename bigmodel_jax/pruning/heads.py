"""Structured pruning of attention heads in `models.GPT` / `models.ViT`: score, mask, remove.

    scores = heads.head_scores(model.apply, params, batches, head_dim=head_dim)  # {block: [heads]}
    keep = heads.keep_heads(scores, 0.5)                                   # {block: bool [heads]}
    masks = heads.head_masks(params, keep, head_dim)        # same effect, weights zeroed
    keep = heads.kept_heads(masks, head_dim)                 # the same keep, read back from masks
    small_model, small_params = heads.shrink_heads(model, params, keep)  # fewer heads, faster

Score of a head: the mean L2 norm, over calibration tokens, of what it adds to the residual
stream (its slice of the attention output times its rows of the `out` projection) - the part of
the block's output that removing it takes away. A removed head's query/key/value columns and
its `out` rows go; the head width stays embed_dim / num_heads.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import masks as masks_lib
from bigmodel_jax.pruning import selection


def head_scores(apply_fn: Callable, params: Any, batches: list, *,
                head_dim: int) -> dict[str, np.ndarray]:
  """{block name: [heads] float} importance of every head over the calibration batches."""

  def one_batch(params, inputs):
    found = {}

    def capture(next_fun, args, kwargs, context):
      module = context.module
      if (isinstance(module, nn.Dense) and context.method_name == '__call__'
          and module.path[-1] == 'out' and len(module.path) >= 2 and module.path[-2] == 'attn'):
        x = args[0]  # [batch, length, heads * head_dim]: the heads' outputs side by side.
        kernel = module.variables['params']['kernel']
        heads = x.shape[-1] // head_dim
        parts = x.reshape(*x.shape[:-1], heads, head_dim)
        rows = kernel.reshape(heads, head_dim, kernel.shape[-1])
        added = jnp.einsum('...hd,hde->...he', parts, rows)
        found[module.path[0]] = jnp.mean(jnp.linalg.norm(added, axis=-1).reshape(-1, heads), 0)
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(capture):
      apply_fn({'params': params}, inputs)
    return found

  step = jax.jit(one_batch)
  totals = None
  for inputs in batches:
    found = step(params, jnp.asarray(inputs))
    totals = found if totals is None else jax.tree.map(jnp.add, totals, found)
  if not totals:
    raise ConfigError('No attention heads were found (the model has no attn/out layers) or no '
                      'calibration batches were given.')
  return {name: np.asarray(v) / len(batches) for name, v in totals.items()}


def keep_heads(scores: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
  """Per block, keeps the heads with the highest scores: round((1 - sparsity) * heads), >= 1."""
  selection.check_sparsity(sparsity, 'head sparsity')
  keep = {}
  for name, s in scores.items():
    n = max(1, int(round((1 - sparsity) * len(s))))
    order = np.argsort(-s, kind='stable')
    mask = np.zeros(len(s), bool)
    mask[order[:n]] = True
    keep[name] = mask
  return keep


def _columns(keep: np.ndarray, head_dim: int) -> np.ndarray:
  return np.repeat(keep, head_dim)


def head_masks(params: Any, keep: dict[str, np.ndarray], head_dim: int) -> Any:
  """Masks (True = keep) like `params` that zero the removed heads' q/k/v columns and out rows."""
  def mask_for(path, leaf):
    names = masks_lib.path_str(path).split('/')
    if len(names) >= 3 and names[0] in keep and names[1] == 'attn':
      cols = _columns(keep[names[0]], head_dim)
      layer, kind = names[2], names[-1]
      if layer in ('query', 'key', 'value'):
        return jnp.broadcast_to(jnp.asarray(cols), leaf.shape) if kind == 'kernel' else \
            jnp.asarray(cols)
      if layer == 'out' and kind == 'kernel':
        return jnp.broadcast_to(jnp.asarray(cols)[:, None], leaf.shape)
    return jnp.ones(leaf.shape, jnp.bool_)
  return jax.tree_util.tree_map_with_path(mask_for, params)


def kept_heads(masks: Any, head_dim: int) -> dict[str, np.ndarray]:
  """{block: bool [heads]}: the heads whose rows of the `out` kernel `masks` keep."""
  kept = {}
  for name, block in masks.items():
    if isinstance(block, dict) and 'attn' in block:
      rows = np.asarray(block['attn']['out']['kernel']).any(axis=1)
      kept[name] = rows.reshape(-1, head_dim).any(axis=1)
  return kept


def shrink_heads(model: nn.Module, params: Any,
                 keep: dict[str, np.ndarray]) -> tuple[nn.Module, Any]:
  """A GPT without the removed heads, and its params (the rest copied unchanged)."""
  head_dim = model.embed_dim // model.num_heads
  heads = list(model.heads_per_layer or (model.num_heads,) * model.num_layers)
  params = jax.tree.map(lambda x: x, params)  # A copy of the containers, arrays shared.
  for i in range(model.num_layers):
    name = f'block_{i}'
    if name not in keep:
      continue
    cols = np.flatnonzero(_columns(keep[name], head_dim))
    attn = dict(params[name]['attn'])
    for layer in ('query', 'key', 'value'):
      attn[layer] = {k: (v[:, cols] if k == 'kernel' else v[cols])
                     for k, v in attn[layer].items()}
    attn['out'] = {k: (v[cols] if k == 'kernel' else v) for k, v in attn['out'].items()}
    params[name] = {**params[name], 'attn': attn}
    heads[i] = int(keep[name].sum())
  return model.clone(heads_per_layer=tuple(heads)), params
