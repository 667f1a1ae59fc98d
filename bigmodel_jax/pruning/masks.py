"""Masks as pytrees: which leaves are prunable, applying masks, and sparsity statistics.

A mask tree has the structure and shapes of the params tree with dtype bool (True = keep). Leaves
that are not prunable carry an all-True mask, so every tree function can map params and masks
together and sharding rules that fit the params fit the masks.

Trees may be Linen params dicts, pure dicts or Flax NNX `nnx.State`s: leaves are matched by
their path ('l1/kernel', the same for all three, see `bigmodel_jax.tree`), never by position, and
a mask must be bool with its leaf's exact shape (no broadcasting); `check_masks` says which leaf
breaks a rule. Only floating-point leaves are ever prunable.
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


def patterns(value: str | Sequence[str], name: str) -> tuple[str, ...]:
  """`value` as a tuple of glob patterns; one string is one pattern (not its letters)."""
  if isinstance(value, str):
    return (value,)
  value = tuple(value)
  if not all(isinstance(p, str) for p in value):
    raise ConfigError(f'{name}={value!r} is invalid: give a pattern string or a sequence of them.')
  return value


def dtype_of(x: Any) -> np.dtype:
  """The dtype of an array, tracer, ShapeDtypeStruct or Python scalar."""
  return np.dtype(x.dtype) if hasattr(x, 'dtype') else np.asarray(x).dtype


def is_float(x: Any) -> bool:
  """True for a floating-point array (or array-like): the only kind of leaf that is pruned."""
  return bool(jnp.issubdtype(dtype_of(x), jnp.floating))


def prunable_tree(params: Any, include: str | Sequence[str] = DEFAULT_INCLUDE,
                  exclude: str | Sequence[str] = ()) -> Any:
  """A tree of Python bools: True where a floating-point leaf matches an `include` and no
  `exclude` pattern. A string is one pattern. Integer and bool leaves are never prunable.

  Raises:
    ConfigError: a pattern matches no parameter (a typo would otherwise prune nothing silently),
      or nothing is left to prune.
  """
  include, exclude = patterns(include, 'include'), patterns(exclude, 'exclude')
  paths = leaf_paths(params)
  for name, group in (('include', include), ('exclude', exclude)):
    for pattern in group:
      if not match_paths(paths, pattern):
        raise ConfigError(f'prunable_tree: the {name} pattern {pattern!r} matches no parameter; '
                          f'parameters are: {", ".join(paths)}.')
  chosen = {p for pattern in include for p in match_paths(paths, pattern)}
  chosen -= {p for pattern in exclude for p in match_paths(paths, pattern)}
  floats = {p for p, x in zip(paths, jax.tree.leaves(params), strict=True) if is_float(x)}
  if not chosen & floats:
    raise ConfigError(f'prunable_tree: No parameter is left to prune by include={list(include)} '
                      f'exclude={list(exclude)} (only floating-point leaves can be pruned).')
  flags = [p in chosen and p in floats for p in paths]
  return jax.tree.unflatten(jax.tree.structure(params), flags)


def _by_path(tree: Any, what: str, fn: str) -> dict[str, Any]:
  named = list(zip(leaf_paths(tree), jax.tree.leaves(tree), strict=True))
  result = dict(named)
  if len(result) != len(named):
    raise ValueError(f'{fn}: two leaves of {what} have the same path.')
  return result


def align(params: Any, other: Any, *, what: str, fn: str) -> list[Any]:
  """The leaves of `other` in the order of `params`' leaves, matched by path (not position).

  Raises:
    ValueError: naming `fn` and the argument `what`, when a path of one tree is missing from the
      other.
  """
  paths = leaf_paths(params)
  found = _by_path(other, what, fn)
  missing = [p for p in paths if p not in found]
  extra = sorted(set(found) - set(paths))
  if missing or extra:
    raise ValueError(f'{fn}: {what} must have the leaves of params, matched by path; '
                     f'missing: {", ".join(missing) or "none"}; '
                     f'not in params: {", ".join(extra) or "none"}.')
  return [found[p] for p in paths]


def check_masks(params: Any, masks: Any, fn: str, what: str = 'masks') -> Any:
  """`masks` rebuilt in the structure of `params`, after checking each is a bool array of its
  leaf's exact shape (matched by path; an nnx.State and a pure dict of the same model match).

  Raises:
    ValueError: a missing or extra path, a mask that is not bool (a float 0.5 would otherwise
      count as keep) or whose shape differs from its leaf's (it would broadcast).
  """
  leaves = align(params, masks, what=what, fn=fn)
  for path, x, m in zip(leaf_paths(params), jax.tree.leaves(params), leaves, strict=True):
    dtype = dtype_of(m)
    if dtype != np.bool_:
      raise ValueError(f'{fn}: {what} at {path} has dtype {dtype}; masks must be bool '
                       '(True = keep).')
    if tuple(jnp.shape(m)) != tuple(jnp.shape(x)):
      raise ValueError(f'{fn}: {what} at {path} has shape {tuple(jnp.shape(m))}, its parameter '
                       f'{tuple(jnp.shape(x))}; they must be equal.')
  return jax.tree.unflatten(jax.tree.structure(params), leaves)


def check_flags(params: Any, prunable: Any, fn: str) -> list[bool]:
  """The `prunable` flags in the order of `params`' leaves, matched by path.

  Raises:
    ValueError: a path mismatch, or a flag that is not a Python bool.
  """
  flags = align(params, prunable, what='prunable', fn=fn)
  for path, flag in zip(leaf_paths(params), flags, strict=True):
    if not isinstance(flag, bool | np.bool_):
      raise ValueError(f'{fn}: prunable at {path} is {flag!r}; prunable is a tree of Python bools '
                       '(pruning.prunable_tree).')
  return [bool(f) for f in flags]


def ones_like(params: Any) -> Any:
  """An all-True mask tree: the dense model."""
  return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), jnp.bool_), params)


def apply_masks(params: Any, masks: Any) -> Any:
  """Params with every masked-out entry set to exactly zero (masks checked by `check_masks`)."""
  masks = check_masks(params, masks, 'apply_masks')
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
  masks = check_masks(params, masks, 'sparsity_stats')
  flags = (check_flags(params, prunable, 'sparsity_stats') if prunable is not None
           else [True] * len(jax.tree.leaves(params)))
  params_np = jax.device_get(params)
  masks_np = jax.device_get(masks)
  layers, prunable_size, prunable_kept, total_size, total_kept = {}, 0, 0, 0, 0
  dense_bytes, compressed_bytes = 0, 0
  for path, x, m, flag in zip(leaf_paths(params_np), jax.tree.leaves(params_np),
                              jax.tree.leaves(masks_np), flags, strict=True):
    x, m = np.asarray(x), np.asarray(m)
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
  flags = check_flags(params, prunable, 'overrides')
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
