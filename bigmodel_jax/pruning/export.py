"""Compact export of a pruned model: a 1-bit mask plus the kept values per pruned leaf.

One `.npz` file (uncompressed, so its size is the honest storage cost) holds, for every leaf:
  - prunable leaves: the mask packed 8 entries per byte (`np.packbits`) and the kept values in
    row-major order, as float32 or (with `quantize='int8'`) as int8 with one float32 scale per
    output channel (the last axis);
  - other leaves (biases, norms, embeddings): dense.
A JSON header records shapes, dtypes and the format version. `load_compact` rebuilds the params
tree; with float32 values it is bit-identical to the masked params, so predictions are equal.
"""

import json
import os
from typing import Any

import jax
import numpy as np

from bigmodel_jax.pruning import masks as masks_lib

FORMAT_VERSION = 1
QUANTIZE = ('none', 'int8')


def _nest(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def save_compact(path: str, params: Any, masks: Any, prunable: Any | None = None, *,
                 quantize: str = 'none') -> dict[str, int]:
  """Writes the compact file; returns {'file_bytes', 'dense_float32_bytes'}.

  Args:
    path: destination, e.g. 'model.npz'.
    params, masks: the pruned model (masked-out entries are dropped whatever their value).
    prunable: tree of bools saying which leaves to store sparse (default: every leaf that has a
      masked-out entry).
    quantize: 'none' (float32 values) or 'int8' (symmetric, per output channel).
  """
  if quantize not in QUANTIZE:
    raise ValueError(f'quantize={quantize!r}; use one of: {", ".join(QUANTIZE)}.')
  params, masks = jax.device_get(params), jax.device_get(masks)
  paths = masks_lib.leaf_paths(params)
  leaves, mask_leaves = jax.tree.leaves(params), jax.tree.leaves(masks)
  flags = (jax.tree.leaves(prunable) if prunable is not None
           else [not np.all(m) for m in mask_leaves])
  arrays, header = {}, {'version': FORMAT_VERSION, 'quantize': quantize, 'leaves': {}}
  dense_bytes = 0
  for name, x, m, flag in zip(paths, leaves, mask_leaves, flags, strict=True):
    x, m = np.asarray(x), np.asarray(m, bool)
    dense_bytes += x.size * 4
    header['leaves'][name] = {'shape': list(x.shape), 'dtype': str(x.dtype), 'sparse': bool(flag)}
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


def load_compact(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a file of `save_compact`: (params as a nested dict of numpy arrays, masks alike)."""
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
  return _nest(params), _nest(masks)
