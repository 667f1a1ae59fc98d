"""Structured compression of `models.Llama`: whole key/value groups and SwiGLU units, removed.

    groups, units = llama_structured.calibration_scores(model, params, batches)
    keep_groups = llama_structured.keep_by_fraction(groups, 1 / 3)   # {block: bool [kv heads]}
    keep_units = llama_structured.keep_by_fraction(units, 0.25)      # {block: bool [mlp units]}
    masks = llama_structured.structured_masks(model, params, keep_groups, keep_units)
    keep_groups, keep_units = llama_structured.kept_from_masks(model, masks)   # read back
    small, small_params = llama_structured.shrink(model, params, keep_groups, keep_units)

A *group* is one key/value head together with the `model.group_size` query heads that read it
(query head h reads key/value head h // group_size): removing key/value head g removes query
heads g * group_size .. (g + 1) * group_size - 1 with it, so the group size never changes and a
shrunk block is still grouped-query attention. A *unit* is one SwiGLU hidden unit: its `gate`
and `up` columns (and biases) and its `down` row.

Scores, from the dense model on calibration tokens, both in residual-stream units (the size of
what removing the part takes away from the block's output at a token, other parts unchanged):
  group g of a block: mean over tokens of || sum_{h in g} o_h W_out[h] ||_2, o_h [head_dim] the
    attention output of query head h and W_out[h] its head_dim rows of `attn/out`;
  unit j of a block: mean over tokens of |silu(gate_j) * up_j| * ||W_down[j]||_2, which is the
    norm of its contribution (a scalar times its `down` row).
Interactions between removed parts and their effect on later blocks are not modelled.

`structured_masks` zeroes the same weights in place (True = keep; the query/key/value columns
and biases and `out` rows of a removed group, the gate/up columns and biases and `down` rows of
a removed unit); `shrink` physically drops them into a Llama whose `kv_heads_per_layer` /
`mlp_dims_per_layer` say what each block kept, with the masked model's logits, and faster.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models.llama import Llama
from bigmodel_jax.pruning import selection
from bigmodel_jax.tree import path_str

SCOPES = ('layerwise', 'global')
Keep = Mapping[str, Any]  # {'block_i': bool [kv heads] or [mlp units]}


def batch_scores(model: Llama, params: Any, tokens: jax.Array
                 ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Group and unit scores of one batch of tokens [batch, length]; pure and jittable.

  Returns:
    ({block: [kv heads] float32}, {block: [mlp units] float32}): means over the batch's tokens.
  """
  group_size = model.group_size
  groups, units = {}, {}

  def capture(next_fun, args, kwargs, context):
    module, path = context.module, context.module.path
    if isinstance(module, nn.Dense) and context.method_name == '__call__' and len(path) == 3:
      block, layer = path[0], path[1:]
      # A Dense subclass is intercepted twice (its __call__ and the parent's): the first counts.
      if layer == ('attn', 'out') and block not in groups:
        groups[block] = _group_scores(args[0], module, group_size * model.resolved_head_dim)
      elif layer == ('mlp', 'down') and block not in units:
        x = args[0].astype(jnp.float32).reshape(-1, args[0].shape[-1])  # [tokens, units]
        kernel = module.variables['params']['kernel'].astype(jnp.float32)
        units[block] = jnp.mean(jnp.abs(x), axis=0) * jnp.linalg.norm(kernel, axis=-1)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    model.apply({'params': params}, tokens)
  return groups, units


def _group_scores(x: jax.Array, out: nn.Dense, group_width: int) -> jax.Array:
  """[kv heads] mean norm of each group's share of `out`(x), x [..., heads * head_dim]."""
  x = x.astype(jnp.float32).reshape(-1, x.shape[-1] // group_width, group_width)
  kernel = out.variables['params']['kernel'].astype(jnp.float32)
  rows = kernel.reshape(x.shape[1], group_width, kernel.shape[-1])  # [kv, group width, embed]
  added = jnp.einsum('tgi,gie->tge', x, rows)  # [tokens, kv, embed]
  return jnp.mean(jnp.linalg.norm(added, axis=-1), axis=0)


_batch_scores = jax.jit(batch_scores, static_argnums=0)


def calibration_scores(model: Llama, params: Any, batches: Sequence
                       ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Group and unit scores (see the module docstring) over calibration token batches.

  Args:
    model: a `models.Llama` (dense or already shrunk).
    params: its params.
    batches: int token arrays [batch, length]; every token counts once.

  Returns:
    ({block: [kv heads]}, {block: [mlp units]}) numpy float32 scores; higher = more important.
  """
  if not batches:
    raise ConfigError('No calibration batches were given; pass a list of [batch, length] token '
                      'arrays.')
  totals, count = None, 0
  for tokens in batches:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ConfigError(f'A calibration batch must be int tokens [batch, length]; got '
                        f'{tokens.dtype} {tuple(tokens.shape)}.')
    found = _batch_scores(model, params, tokens)
    weighted = jax.tree.map(lambda s, n=tokens.size: s * n, found)
    totals = weighted if totals is None else jax.tree.map(jnp.add, totals, weighted)
    count += tokens.size
  return tuple({k: np.asarray(v / count) for k, v in part.items()} for part in totals)


def keep_by_fraction(scores: Mapping[str, Any], fraction: float, *,
                     scope: str = 'layerwise') -> dict[str, np.ndarray]:
  """Keep-vectors removing the lowest-scored `fraction` of groups (or units).

  'layerwise' keeps round((1 - fraction) * n) of the n in every block; 'global' removes
  round(fraction * total) over all blocks together (the scores are in the same units
  everywhere). Either way every block keeps at least its best one (so 'global' may remove
  slightly fewer). Ties go to the lower index.

  Returns:
    {block: bool [n]}, True = keep.
  """
  selection.check_sparsity(fraction, 'fraction')
  if scope not in SCOPES:
    raise ConfigError(f'scope={scope!r} is invalid; use one of: {", ".join(SCOPES)}.')
  scores = {k: np.asarray(v, np.float32) for k, v in scores.items()}
  if not scores or not all(s.ndim == 1 and len(s) for s in scores.values()):
    raise ConfigError('scores must map block names to non-empty score vectors; got '
                      f'{ {k: s.shape for k, s in scores.items()} }.')
  if scope == 'layerwise':
    counts = {k: max(1, int(round((1 - fraction) * len(s)))) for k, s in scores.items()}
    return {k: _top(s, counts[k]) for k, s in scores.items()}
  names = list(scores)
  flat = np.concatenate([scores[k] for k in names])
  owner = np.concatenate([np.full(len(scores[k]), i) for i, k in enumerate(names)])
  removed = np.zeros(len(flat), bool)
  order = np.argsort(-flat, kind='stable')  # Best first; the last of equal scores goes first.
  removed[order[len(flat) - int(round(fraction * len(flat))):]] = True
  keep = {k: ~removed[owner == i] for i, k in enumerate(names)}
  for k, s in scores.items():
    keep[k][np.argmax(s)] = True
  return keep


def _top(s: np.ndarray, n: int) -> np.ndarray:
  keep = np.zeros(len(s), bool)
  keep[np.argsort(-s, kind='stable')[:n]] = True
  return keep


def _resolve(model: Llama, keep_groups: Keep | None,
             keep_units: Keep | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Per block, checked bool keep-vectors (a block left out, or None, keeps everything)."""
  names = [f'block_{i}' for i in range(model.num_layers)]
  out = []
  for what, keep, index in (('keep_groups', keep_groups, 1), ('keep_units', keep_units, 2)):
    keep = dict(keep or {})
    unknown = sorted(set(keep) - set(names))
    if unknown:
      raise ConfigError(f'{what} names {unknown[0]!r}, which is not a block of this model '
                        f'(block_0 .. block_{model.num_layers - 1}).')
    vectors = []
    for i, name in enumerate(names):
      size = model.layer_sizes(i)[index]
      k = np.asarray(jax.device_get(keep.get(name, np.ones(size, bool))))
      if k.dtype != np.bool_ or k.shape != (size,) or not k.any():
        raise ConfigError(f'{what}[{name!r}] must be a bool vector of shape ({size},) keeping at '
                          f'least one; got {k.dtype} {k.shape} keeping {int(k.sum())}.')
      vectors.append(k)
    out.append(vectors)
  return out[0], out[1]


def _columns(model: Llama, keep_group: np.ndarray) -> dict[str, np.ndarray]:
  """Bool keep over the output columns of query and key/value projections of one block."""
  d = model.resolved_head_dim
  return {'query': np.repeat(keep_group, model.group_size * d), 'kv': np.repeat(keep_group, d)}


def structured_masks(model: Llama, params: Any, keep_groups: Keep | None,
                     keep_units: Keep | None) -> Any:
  """Element masks like `params` (True = keep) that zero the removed groups and units.

  Args:
    model: the `models.Llama` the params belong to.
    params: its params (only shapes are read).
    keep_groups, keep_units: {block: bool [kv heads] / [mlp units]}; a block left out (or None)
      keeps everything.
  """
  groups, units = _resolve(model, keep_groups, keep_units)
  per_block = {}
  for i, (g, u) in enumerate(zip(groups, units, strict=True)):
    cols = _columns(model, g)
    # (layer, leaf) -> (keep vector, axis of the kernel it runs along).
    per_block[f'block_{i}'] = {
        ('query', 'kernel'): (cols['query'], 1), ('query', 'bias'): (cols['query'], 0),
        ('key', 'kernel'): (cols['kv'], 1), ('key', 'bias'): (cols['kv'], 0),
        ('value', 'kernel'): (cols['kv'], 1), ('value', 'bias'): (cols['kv'], 0),
        ('out', 'kernel'): (cols['query'], 0),
        ('gate', 'kernel'): (u, 1), ('gate', 'bias'): (u, 0),
        ('up', 'kernel'): (u, 1), ('up', 'bias'): (u, 0), ('down', 'kernel'): (u, 0)}

  def mask_for(path, leaf):
    names = path_str(path).split('/')
    rule = per_block.get(names[0], {}).get(tuple(names[-2:])) if len(names) == 4 else None
    if rule is None:
      return jnp.ones(jnp.shape(leaf), jnp.bool_)
    vector, axis = rule
    shape = [1] * len(jnp.shape(leaf))
    shape[axis] = -1
    return jnp.broadcast_to(jnp.asarray(vector.reshape(shape)), jnp.shape(leaf))
  return jax.tree_util.tree_map_with_path(mask_for, params)


def kept_from_masks(model: Llama, masks: Any) -> tuple[dict[str, np.ndarray],
                                                       dict[str, np.ndarray]]:
  """(keep_groups, keep_units) that `masks` keep, read from the `out` and `down` kernel rows."""
  groups, units = {}, {}
  for i in range(model.num_layers):
    block = masks[f'block_{i}']
    rows = np.asarray(block['attn']['out']['kernel']).any(axis=1)
    groups[f'block_{i}'] = rows.reshape(model.layer_sizes(i)[1], -1).any(axis=1)
    units[f'block_{i}'] = np.asarray(block['mlp']['down']['kernel']).any(axis=1)
  return groups, units


def _take(layer: Mapping, index: np.ndarray, kernel_axis: int, bias_too: bool) -> dict:
  out = dict(layer)
  out['kernel'] = jnp.take(jnp.asarray(layer['kernel']), index, axis=kernel_axis)
  if bias_too and 'bias' in layer:
    out['bias'] = jnp.take(jnp.asarray(layer['bias']), index, axis=0)
  return out


def shrink(model: Llama, params: Any, keep_groups: Keep | None,
           keep_units: Keep | None) -> tuple[Llama, Any]:
  """A smaller Llama without the removed groups and units, and its params.

  The new model's `kv_heads_per_layer` / `mlp_dims_per_layer` hold what each block kept (its
  logits equal the masked model's); everything else (norms, embeddings, the `out` and `down`
  biases) is copied unchanged.
  """
  groups, units = _resolve(model, keep_groups, keep_units)
  params = dict(params)
  for i, (g, u) in enumerate(zip(groups, units, strict=True)):
    name = f'block_{i}'
    cols = {k: np.flatnonzero(v) for k, v in _columns(model, g).items()}
    unit_index = np.flatnonzero(u)
    attn, mlp = params[name]['attn'], params[name]['mlp']
    attn = {'query': _take(attn['query'], cols['query'], 1, True),
            'key': _take(attn['key'], cols['kv'], 1, True),
            'value': _take(attn['value'], cols['kv'], 1, True),
            'out': _take(attn['out'], cols['query'], 0, False)}
    mlp = {'gate': _take(mlp['gate'], unit_index, 1, True),
           'up': _take(mlp['up'], unit_index, 1, True),
           'down': _take(mlp['down'], unit_index, 0, False)}
    params[name] = {**params[name], 'attn': attn, 'mlp': mlp}
  small = model.clone(kv_heads_per_layer=tuple(int(g.sum()) for g in groups),
                      mlp_dims_per_layer=tuple(int(u.sum()) for u in units))
  return small, params
