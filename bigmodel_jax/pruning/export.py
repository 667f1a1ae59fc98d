"""Compact export of a pruned model: a 1-bit mask plus the kept values per pruned leaf.

One `.npz` file (uncompressed, so its size is the honest storage cost) holds, for every leaf:
  - prunable leaves: the mask packed 8 entries per byte (`np.packbits`) and the kept values in
    row-major order, as float32 or (with `quantize='int8'`) as int8 with one float32 scale per
    output channel (the last axis);
  - other leaves (biases, norms, embeddings): dense.
A JSON header records shapes, dtypes, the format version and the kind of each path entry (dict
key, integer dict key as NNX uses for `nnx.List` layers, or list index), so `load_compact` rebuilds
the params tree with lists as lists; with float32 values it is bit-identical to the masked params,
so predictions are equal. Any tree with array leaves works: Linen params, pure dicts, an
`nnx.State` (`load_compact(path, like=nnx.state(model, nnx.Param))` gives one back).
"""

import json
import os
from typing import Any

import jax
import numpy as np

from bigmodel_jax.pruning import masks as masks_lib
from bigmodel_jax.tree import path_str

FORMAT_VERSION = 1
QUANTIZE = ('none', 'int8')


def _kinds(tree: Any) -> list[str]:
  """Per leaf, one letter per path entry: 's' a key or field, 'i' an integer dict key, 'l' a
  list or tuple index (the `.value` inside an NNX Variable is no entry, as in `path_str`)."""
  result = []
  for path, _ in jax.tree_util.tree_leaves_with_path(tree):
    names = path_str(path).split('/')
    kinds = ''.join('l' if isinstance(k, jax.tree_util.SequenceKey)
                    else 'i' if isinstance(getattr(k, 'key', None), int) else 's'
                    for k in path[:len(names)])
    result.append(kinds)
  return result


def _nest(flat: dict[str, np.ndarray], kinds: dict[str, str]) -> dict[str, Any]:
  """The nested tree of `flat` ({path: array}); entries of kind 'l' become lists."""
  tree: dict[Any, Any] = {}
  lists = set()
  for path, value in flat.items():
    node, prefix = tree, ()
    names = path.split('/')
    kind = kinds.get(path) or 's' * len(names)  # Files before kinds were recorded: all keys.
    for i, (name, k) in enumerate(zip(names, kind, strict=True)):
      key = int(name) if k in 'il' else name
      if k == 'l':
        lists.add(prefix)
      prefix = (*prefix, key)
      if i == len(names) - 1:
        node[key] = value
      else:
        node = node.setdefault(key, {})

  def listify(node, prefix):
    if not isinstance(node, dict):
      return node
    children = {k: listify(v, (*prefix, k)) for k, v in node.items()}
    if prefix in lists:
      return [children[i] for i in range(len(children))]
    return children
  return listify(tree, ())


def save_compact(path: str, params: Any, masks: Any, prunable: Any | None = None, *,
                 quantize: str = 'none') -> dict[str, int]:
  """Writes the compact file; returns {'file_bytes', 'dense_float32_bytes'}.

  Args:
    path: destination, e.g. 'model.npz'.
    params, masks: the pruned model (masked-out entries are dropped whatever their value).
    prunable: tree of bools saying which leaves to store sparse (default: every leaf that has a
      masked-out entry).
    quantize: 'none' (float32 values) or 'int8' (symmetric, per output channel).

  Raises:
    ValueError: masks not bool, of another shape or matched to no leaf (`masks.check_masks`).
  """
  if quantize not in QUANTIZE:
    raise ValueError(f'save_compact: quantize={quantize!r}; use one of: {", ".join(QUANTIZE)}.')
  masks = masks_lib.check_masks(params, masks, 'save_compact')
  paths = masks_lib.leaf_paths(params)
  kinds = _kinds(params)
  params, masks = jax.device_get(params), jax.device_get(masks)
  leaves, mask_leaves = jax.tree.leaves(params), jax.tree.leaves(masks)
  flags = (masks_lib.check_flags(params, prunable, 'save_compact') if prunable is not None
           else [not np.all(m) for m in mask_leaves])
  arrays, header = {}, {'version': FORMAT_VERSION, 'quantize': quantize, 'leaves': {}}
  dense_bytes = 0
  for name, kind, x, m, flag in zip(paths, kinds, leaves, mask_leaves, flags, strict=True):
    x, m = np.asarray(x), np.asarray(m)
    dense_bytes += x.size * 4
    header['leaves'][name] = {'shape': list(x.shape), 'dtype': str(x.dtype), 'sparse': bool(flag),
                              'kinds': kind}
    if not flag:
      arrays[f'{name}::dense'] = x
      continue
    arrays[f'{name}::bits'] = np.packbits(m.ravel())
    if quantize == 'int8':
      channels = x.shape[-1] if x.ndim else 1
      kept = np.where(m, np.abs(x), 0).reshape(-1, channels)
      scale = np.maximum(kept.max(axis=0), 1e-12) / 127.0
      q = np.clip(np.round(x.reshape(-1, channels) / scale), -127, 127).astype(np.int8)
      arrays[f'{name}::values'] = q.reshape(x.shape)[m]
      arrays[f'{name}::scale'] = scale.astype(np.float32)
    else:
      arrays[f'{name}::values'] = x[m].astype(np.float32)
  arrays['__header__'] = np.frombuffer(json.dumps(header).encode(), np.uint8)
  # Atomic: a reader never sees half a file, and hosts writing the same file do not collide.
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)
  return {'file_bytes': os.path.getsize(path), 'dense_float32_bytes': dense_bytes}


def load_compact(path: str, like: Any = None) -> tuple[Any, Any]:
  """Reads a file of `save_compact`: (params, masks) as numpy arrays.

  Args:
    path: the file.
    like: optional tree of the saved structure (e.g. `nnx.state(model, nnx.Param)`, or abstract
      arrays): params and masks come back in its structure, matched by path and shape-checked.
      Without it, nested dicts (integer keys where the saved tree had them, lists for lists).
  """
  with np.load(path) as data:
    header = json.loads(bytes(data['__header__']).decode())
    if header.get('version') != FORMAT_VERSION:
      raise ValueError(f'{path} has compact format {header.get("version")}; this library reads '
                       f'version {FORMAT_VERSION}.')
    params, masks = {}, {}
    for name, info in header['leaves'].items():
      shape, dtype = tuple(info['shape']), np.dtype(info['dtype'])
      if not info['sparse']:
        params[name] = data[f'{name}::dense']
        masks[name] = np.ones(shape, bool)
        continue
      size = int(np.prod(shape))
      mask = np.unpackbits(data[f'{name}::bits'], count=size).astype(bool).reshape(shape)
      values = data[f'{name}::values']
      full = np.zeros(shape, np.float32)
      if header['quantize'] == 'int8':
        channels = shape[-1] if shape else 1
        scale = np.broadcast_to(data[f'{name}::scale'], (size // channels, channels))
        full[mask] = values.astype(np.float32) * scale.reshape(shape)[mask]
      else:
        full[mask] = values
      params[name], masks[name] = full.astype(dtype), mask
  kinds = {name: info.get('kinds') for name, info in header['leaves'].items()}
  if like is None:
    return _nest(params, kinds), _nest(masks, kinds)
  return _like(like, params, 'params'), _like(like, masks, 'masks')


def _like(like: Any, flat: dict[str, np.ndarray], what: str) -> Any:
  """`flat` ({path: array}) in the structure of `like`, shapes checked."""
  leaves = masks_lib.align(like, _nest(flat, {}), what=f'the file\'s {what}', fn='load_compact')
  for name, x, ref in zip(masks_lib.leaf_paths(like), leaves, jax.tree.leaves(like), strict=True):
    if tuple(x.shape) != tuple(np.shape(ref)):
      raise ValueError(f'load_compact: {name} has shape {tuple(x.shape)} in the file, '
                       f'{tuple(np.shape(ref))} in like.')
  return jax.tree.unflatten(jax.tree.structure(like), leaves)
