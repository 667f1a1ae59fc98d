"""Masks as pytrees: which leaves are prunable, applying masks, and sparsity statistics.

A mask tree has the structure and shapes of the params tree with dtype bool (True = keep). Leaves
that are not prunable carry an all-True mask, so every tree function can map params and masks
together and sharding rules that fit the params fit the masks.
"""

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.tree import leaf_paths, match_paths, path_str  # noqa: F401  (re-exported)

DEFAULT_INCLUDE = ('*kernel',)  # Dense/conv kernels; never biases, norms or embeddings.


def prunable_tree(params: Any, include: Sequence[str] = DEFAULT_INCLUDE,
                  exclude: Sequence[str] = ()) -> Any:
  """A tree of Python bools: True where a leaf matches an `include` and no `exclude` pattern.

  Raises:
    ConfigError: a pattern matches no parameter (a typo would otherwise prune nothing silently),
      or nothing is left to prune.
  """
  paths = leaf_paths(params)
  for pattern in (*include, *exclude):
    if not match_paths(paths, pattern):
      raise ConfigError(f'The pruning pattern {pattern!r} matches no parameter; parameters are: '
                        f'{", ".join(paths)}.')
  chosen = {p for pattern in include for p in match_paths(paths, pattern)}
  chosen -= {p for pattern in exclude for p in match_paths(paths, pattern)}
  if not chosen:
    raise ConfigError(f'No parameter is left to prune by include={list(include)} '
                      f'exclude={list(exclude)}.')
  flags = [p in chosen for p in paths]
  return jax.tree.unflatten(jax.tree.structure(params), flags)


def ones_like(params: Any) -> Any:
  """An all-True mask tree: the dense model."""
  return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), jnp.bool_), params)


def apply_masks(params: Any, masks: Any) -> Any:
  """Params with every masked-out entry set to exactly zero."""
  return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), params, masks)


def sparsity_stats(params: Any, masks: Any, prunable: Any | None = None) -> dict[str, Any]:
  """Per-layer and total sparsity, non-zero counts and sizes in bytes.

  Sizes: `dense_bytes` is every parameter at its dtype; `compressed_bytes` stores prunable leaves
  as a 1-bit mask plus their kept values and other leaves dense (the bitmask format of
  `pruning.export`).

  Returns:
    {'layers': {path: {'size', 'nonzero', 'sparsity'}}, 'prunable_size', 'prunable_nonzero',
     'sparsity' (over prunable leaves), 'total_size', 'total_nonzero', 'total_sparsity',
     'dense_bytes', 'compressed_bytes', 'compression_ratio'}.
  """
  params_np = jax.device_get(params)
  masks_np = jax.device_get(masks)
  flags = (jax.tree.leaves(prunable) if prunable is not None
           else [True] * len(jax.tree.leaves(params_np)))
  layers, prunable_size, prunable_kept, total_size, total_kept = {}, 0, 0, 0, 0
  dense_bytes, compressed_bytes = 0, 0
  for path, x, m, flag in zip(leaf_paths(params_np), jax.tree.leaves(params_np),
                              jax.tree.leaves(masks_np), flags, strict=True):
    x, m = np.asarray(x), np.asarray(m, bool)
    kept = int(np.count_nonzero(m & (x != 0)))
    total_size += x.size
    total_kept += kept
    dense_bytes += x.nbytes
    if flag:
      prunable_size += x.size
      prunable_kept += kept
      layers[path] = {'size': int(x.size), 'nonzero': kept, 'sparsity': 1 - kept / x.size}
      compressed_bytes += -(-x.size // 8) + kept * x.itemsize
    else:
      compressed_bytes += x.nbytes
  return {
      'layers': layers, 'prunable_size': prunable_size, 'prunable_nonzero': prunable_kept,
      'sparsity': 1 - prunable_kept / max(prunable_size, 1),
      'total_size': total_size, 'total_nonzero': total_kept,
      'total_sparsity': 1 - total_kept / max(total_size, 1),
      'dense_bytes': dense_bytes, 'compressed_bytes': compressed_bytes,
      'compression_ratio': dense_bytes / max(compressed_bytes, 1),
  }


def overrides_by_leaf(params: Any, prunable: Any,
                      overrides: Mapping[str, Any] | None) -> list[Any]:
  """For each leaf, the sparsity its matching override pattern sets, or None.

  Raises:
    ConfigError: a pattern matches no prunable leaf, or a leaf matches two patterns.
  """
  paths = leaf_paths(params)
  flags = jax.tree.leaves(prunable)
  result: list[float | None] = [None] * len(paths)
  for pattern, value in (overrides or {}).items():
    hits = [i for i, p in enumerate(paths) if flags[i] and fnmatch.fnmatchcase(p, pattern)]
    if not hits:
      names = ', '.join(p for p, f in zip(paths, flags, strict=True) if f)
      raise ConfigError(f'The sparsity override {pattern!r} matches no prunable parameter; '
                        f'prunable: {names}.')
    for i in hits:
      if result[i] is not None:
        raise ConfigError(f'{paths[i]} matches two sparsity overrides; make them disjoint.')
      result[i] = float(value) if isinstance(value, int | float) else value  # May be traced.
  return result
