"""Sparsity distributions: how a global target is spread over the prunable leaves.

    sparsities = pruning.distributions.layer_sparsities(params, 0.9, distribution='erk',
                                                        prunable=prunable)
    masks = pruning.masks_from_scores(scores, 0.9, prunable=prunable,
                                      overrides=pruning.distributions.as_overrides(params,
                                                                                   sparsities))

    uniform  every prunable leaf loses the same fraction (the target)
    erk      Erdos-Renyi-Kernel (Evci et al. 2020, RigL; jaxpruner's 'erk'): a leaf of shape
             (d_1, ..., d_k) keeps a density proportional to ((d_1 + ... + d_k) / (d_1 ... d_k))
             ** power_scale, so small layers stay denser. The factor is chosen so that the
             kept weights add up to the target over all leaves; a leaf whose density would pass
             1 is kept dense and the factor is found again for the rest.

A third spread, 'global', is no distribution: one ranking of all scores picks the per-leaf
sparsities itself (`selection.masks_from_scores(scope='global')`).

The per-leaf counts are whole numbers: round(target * total) weights are pruned in all, split
among leaves by largest remainder, and each leaf's sparsity is its count / size, so selection
at these sparsities prunes exactly the target's count over the whole tree.
"""

import fnmatch
import math
from typing import Any

import jax
import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import masks as masks_lib
from bigmodel_jax.pruning import selection

DISTRIBUTIONS = ('global', 'uniform', 'erk')


def erk_densities(shapes: list[tuple[int, ...]], sparsity: float,
                  power_scale: float = 1.0) -> list[float]:
  """ERK densities (kept fractions) of leaves of `shapes` reaching `sparsity` over all of them.

  Leaves whose ERK density would exceed 1 get density 1 and the rest are re-scaled, until every
  density is at most 1. The kept total sum(density * size) equals (1 - sparsity) * total size
  (up to float rounding).
  """
  sizes = np.array([math.prod(s) for s in shapes], np.float64)
  raw = np.array([(sum(s) / math.prod(s)) ** power_scale for s in shapes], np.float64)
  kept_total = (1.0 - sparsity) * sizes.sum()
  dense = np.zeros(len(shapes), bool)
  while True:
    budget = kept_total - sizes[dense].sum()
    scale = budget / max(float(np.sum(raw[~dense] * sizes[~dense])), 1e-300)
    density = np.where(dense, 1.0, scale * raw)
    over = ~dense & (density > 1.0)
    if not over.any():
      return [float(d) for d in density]
    dense |= over  # Keep these dense; the others share what is left.


def _whole_counts(fractions: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
  """Integers near fractions * sizes that add up to `total`, each within [0, size - 1] (every
  leaf keeps a weight: a sparsity of 1 is no layer)."""
  top = sizes - 1
  if total > top.sum():
    raise ConfigError(f'Pruning {total} of {sizes.sum()} weights leaves a leaf empty.')
  want = np.minimum(np.clip(fractions, 0.0, 1.0) * sizes, top)
  counts = np.floor(want).astype(np.int64)
  remainder = want - counts
  order = np.argsort(-remainder, kind='stable')  # Largest remainder first, ties by position.
  i = 0
  while counts.sum() < total:  # Hand out what rounding down left, one weight at a time.
    j = order[i % len(order)]
    if counts[j] < top[j]:
      counts[j] += 1
    i += 1
  while counts.sum() > total:
    j = order[::-1][i % len(order)]
    if counts[j] > 0:
      counts[j] -= 1
    i += 1
  return counts


def layer_sparsities(params: Any, sparsity: float, *, distribution: str = 'erk',
                     prunable: Any = None, power_scale: float = 1.0) -> Any:
  """Per-leaf sparsities spreading `sparsity` over the prunable leaves.

  Args:
    params: the params tree (arrays or ShapeDtypeStructs; only shapes are read).
    sparsity: the target over all prunable weights, a Python number in [0, 1).
    distribution: 'uniform' or 'erk' (module docstring).
    prunable: a tree of bools (`masks.prunable_tree`); default every leaf.
    power_scale: ERK's exponent (1 = ERK; 0 = uniform).

  Returns:
    A tree like `params`: a Python float per prunable leaf, None elsewhere. The pruned counts
    round(s_leaf * size_leaf) add up to round(sparsity * prunable size).

  Raises:
    ConfigError: an unknown distribution, or a sparsity outside [0, 1).
  """
  if distribution not in ('uniform', 'erk'):
    raise ConfigError(f'distribution={distribution!r} is not a per-leaf distribution; use '
                      "'uniform' or 'erk' ('global' ranks all scores together instead).")
  selection.check_sparsity(sparsity)
  leaves, treedef = jax.tree.flatten(params)
  flags = jax.tree.leaves(prunable) if prunable is not None else [True] * len(leaves)
  chosen = [i for i, f in enumerate(flags) if f]
  shapes = [tuple(int(d) for d in np.shape(leaves[i])) for i in chosen]
  sizes = np.array([math.prod(s) for s in shapes], np.int64)
  if distribution == 'erk':
    pruned_fraction = 1.0 - np.array(erk_densities(shapes, sparsity, power_scale))
  else:
    pruned_fraction = np.full(len(shapes), float(sparsity))
  counts = _whole_counts(pruned_fraction, sizes, int(round(sparsity * sizes.sum())))
  result: list[float | None] = [None] * len(leaves)
  for i, count, size in zip(chosen, counts, sizes, strict=True):
    result[i] = float(count) / float(size)
  return jax.tree.unflatten(treedef, result)


def _escape(path: str) -> str:
  """A glob that matches exactly `path` (brackets, stars and question marks escaped)."""
  return ''.join(f'[{c}]' if c in '[]*?' else c for c in path)


def as_overrides(params: Any, sparsities: Any) -> dict[str, float]:
  """{exact-path pattern: sparsity} of `layer_sparsities`' result, for the `overrides` argument
  of `selection.masks_from_scores` and `gradual.mask_updater`."""
  values = jax.tree.leaves(sparsities, is_leaf=lambda x: x is None)
  paths = masks_lib.leaf_paths(params)
  return {_escape(p): v for p, v in zip(paths, values, strict=True) if v is not None}


def spread_overrides(params: Any, sparsity: float, *, distribution: str, prunable: Any,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """`overrides` plus the distribution's sparsity for every prunable leaf they leave alone.

  The leaves the given overrides match keep their own sparsity; `distribution` spreads
  `sparsity` over the others. With distribution 'global' the overrides come back unchanged.
  """
  overrides = dict(overrides or {})
  if distribution == 'global':
    return overrides
  paths = masks_lib.leaf_paths(params)
  taken = {p for pattern in overrides for p in paths if fnmatch.fnmatchcase(p, pattern)}
  rest = jax.tree.unflatten(jax.tree.structure(params),
                            [bool(f) and p not in taken
                             for p, f in zip(paths, jax.tree.leaves(prunable), strict=True)])
  if not any(jax.tree.leaves(rest)):
    return overrides
  spread = layer_sparsities(params, sparsity, distribution=distribution, prunable=rest)
  return {**overrides, **as_overrides(params, spread)}
