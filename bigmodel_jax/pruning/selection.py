"""Masks from scores: exact-count selection by a threshold found by bisection, and N:M patterns.

Lower scores are pruned first. Selecting the k lowest of n scores never sorts: the k-th smallest
value is found bit by bit on an order-preserving uint32 view of the float32 scores (32 counting
passes, each a sum that also adds up across devices when the scores are sharded), everything
below it is pruned, and ties at it are broken by position (tree order, then row-major) so that
exactly k entries go: each leaf's share of the ties is a count, and only the one leaf where the
tie quota runs out searches the position of its last pruned tie, again by counting. Nothing is
sorted, scanned or gathered, so sharded scores (any PartitionSpec, Auto or Explicit mesh) are
selected shard by shard with scalar all-reduces, exactly as on one device. Everything here is
jittable; `sparsity` may be a traced scalar, which is how gradual pruning updates masks inside
the compiled train step.

Checked inputs: a Python sparsity outside [0, 1) (or NaN) raises a ConfigError at once; a traced
one is checked when the computation runs (a host callback raises, which surfaces as a
`JaxRuntimeError` naming the argument), and is clamped to [0, 1] meanwhile so nothing
out of range reaches the counts. NaN scores rank lowest: they are pruned first.
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax import logs
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import masks as masks_lib

SCOPES = ('global', 'layerwise')


def check_sparsity(sparsity: float, what: str = 'sparsity') -> None:
  """Raises ConfigError unless `sparsity` is a Python number in [0, 1) (NaN is not)."""
  if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
    raise ConfigError(f'{what}={sparsity!r} is invalid: it must be a number in [0, 1).')


def _raise_if_invalid(what: str, value) -> None:
  value = np.asarray(value)
  if not np.all((value >= 0) & (value < 1)):  # False for NaN too.
    raise ConfigError(f'{what}={value.tolist()!r} is invalid: it must be a number in [0, 1).')


def checked_sparsity(sparsity, what: str = 'sparsity'):
  """A sparsity ready for counting: a Python number is checked now (`check_sparsity`); a traced
  one is checked when the computation runs (a host callback raises ConfigError, surfacing as a
  JaxRuntimeError) and clamped to [0, 1] (NaN to 0) so the counts stay in range meanwhile."""
  if isinstance(sparsity, int | float):
    check_sparsity(sparsity, what)
    return sparsity
  value = jnp.asarray(sparsity, jnp.float32)
  jax.debug.callback(functools.partial(_raise_if_invalid, what), value)
  return jnp.clip(jnp.nan_to_num(value, nan=0.0), 0.0, 1.0)


def sortable_keys(scores: jax.Array) -> jax.Array:
  """uint32 keys with the order of the float32 scores (negatives, -0/+0 and inf included)."""
  scores = scores.astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(scores, jnp.uint32)
  negative = (bits >> 31) == 1
  keys = jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))
  # NaN gets key 0, below -inf's (0x007fffff): a NaN score ranks lowest and is pruned first.
  return jnp.where(jnp.isnan(scores), jnp.uint32(0), keys)


def kth_smallest_key(keys: Sequence[jax.Array], k, bits: int = 32) -> jax.Array:
  """The smallest key value t with count(keys <= t) >= k, over all arrays in `keys` (k >= 1).

  Keys are uint32 below 2**bits. For k = 0 it returns 0, below which nothing lies, so callers
  need no special case. Each of the `bits` passes is one count per array: a reduction, which
  stays local to each shard plus one scalar all-reduce when the keys are sharded.
  """
  k = jnp.asarray(k, jnp.int32)

  def count_at_most(t):
    return sum(jnp.sum(x <= t, dtype=jnp.int32) for x in keys)

  def body(i, prefix):
    bit = jnp.uint32(bits - 1) - i.astype(jnp.uint32)
    low = prefix | ((jnp.uint32(1) << bit) - jnp.uint32(1))  # Bit `bit` clear, lower bits set.
    return jnp.where(count_at_most(low) >= k, prefix, prefix | (jnp.uint32(1) << bit))

  return jax.lax.fori_loop(0, bits, body, jnp.uint32(0))


def _positions(key: jax.Array) -> jax.Array:
  """Row-major position of every entry of `key`: uint32, laid out (sharded) as `key` is.

  Built from one iota per axis, so no reshape or scan crosses shards.
  """
  shape = key.shape
  sharding = getattr(jax.typeof(key), 'sharding', None)
  explicit = sharding is not None and any(
      t == jax.sharding.AxisType.Explicit for t in getattr(sharding.mesh, 'axis_types', ()))
  out = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis,
                                    out_sharding=sharding if explicit else None)
    out = out + iota * jnp.uint32(stride)
    stride *= shape[axis]
  return out


def _earliest_ties(tie: jax.Array, r) -> jax.Array:
  """The first r True entries of `tie` in row-major order (0 < r < count(tie)), as a bool mask.

  The position of the r-th tie is searched bit by bit (as `kth_smallest_key`): counting passes
  over the array, never a cumulative sum, which would need the whole array on one device.
  """
  size = int(np.prod(tie.shape))
  if size >= 2**32 - 1:
    raise ConfigError(f'A leaf of {size} entries is too large for exact selection (< 2**32).')
  positions = _positions(tie)
  tie_positions = jnp.where(tie, positions, jnp.uint32(size))  # Non-ties sort after all ties.
  last = kth_smallest_key([tie_positions], r, bits=size.bit_length())
  return tie & (positions <= last)


def lowest_k_masks(scores: Sequence[jax.Array], k) -> list[jax.Array]:
  """Keep-masks (bool) for `scores` that prune exactly the k lowest entries over all arrays.

  Ties at the threshold go by position: tree order, then row-major. Every step is a count or an
  elementwise op, so the masks come out laid out (sharded) as the scores, on Auto and Explicit
  meshes alike, and the result does not depend on the layout.
  """
  keys = [sortable_keys(s) for s in scores]
  threshold = kth_smallest_key(keys, k)
  below = [x < threshold for x in keys]
  ties = [x == threshold for x in keys]
  ties_needed = jnp.asarray(k, jnp.int32) - sum(jnp.sum(b, dtype=jnp.int32) for b in below)
  masks, before = [], jnp.int32(0)  # Ties in the leaves before this one.
  for low, tie in zip(below, ties, strict=True):
    count = jnp.sum(tie, dtype=jnp.int32)
    r = jnp.clip(ties_needed - before, 0, count)  # This leaf's share of the ties to prune.
    pruned_ties = jax.lax.cond(
        (r > 0) & (r < count), _earliest_ties, lambda t, r: t & (r > 0), tie, r)
    masks.append(~(low | pruned_ties))
    before = before + count
  return masks


_lowest_k_static = jax.jit(lambda scores, k: lowest_k_masks(scores, k), static_argnums=1)


def _select(scores: list[jax.Array], k) -> list[jax.Array]:
  """`lowest_k_masks`, compiled once per (shapes, k) when k is a Python int."""
  return _lowest_k_static(scores, k) if isinstance(k, int) else lowest_k_masks(scores, k)


def _count(sparsity, size: int):
  """Number of entries to prune: round(sparsity * size), exact for Python floats."""
  if isinstance(sparsity, int | float):
    return int(round(sparsity * size))
  return jnp.round(jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)


def masks_from_scores(scores: Any, sparsity, *, scope: str = 'global', prunable: Any = None,
                      overrides: Mapping[str, float] | None = None) -> Any:
  """Keep-masks pruning the lowest-scoring fraction `sparsity` of the prunable entries.

  Args:
    scores: a tree like the params (float scores; lower = less important; NaN lowest). A Linen
      params dict, a pure dict or an `nnx.State`; the masks have its structure.
    sparsity: fraction in [0, 1) to prune (Python float, or a traced scalar inside jit, checked
      when it runs: see the module docstring).
    scope: 'global' ranks all prunable leaves together; 'layerwise' prunes each leaf by the same
      fraction.
    prunable: a tree of Python bools (`masks.prunable_tree`), matched to `scores` by path;
      default every floating-point leaf. A prunable leaf with integer scores is an error.
    overrides: {path pattern: sparsity}: matching leaves are pruned layer-wise at their own
      sparsity (a Python float or a traced scalar) and take no part in the global ranking.

  Returns:
    A bool tree like `scores`; non-prunable leaves are all True. The number of pruned entries is
    round(sparsity * size) over the global group, per leaf for layer-wise and override leaves.
  """
  if scope not in SCOPES:
    raise ConfigError(f'scope={scope!r} is not accepted; use one of: {", ".join(SCOPES)}.')
  sparsity = checked_sparsity(sparsity, 'masks_from_scores: sparsity')
  overrides = {pattern: checked_sparsity(value, f'masks_from_scores: overrides[{pattern!r}]')
               for pattern, value in (overrides or {}).items()}
  leaves, treedef = jax.tree.flatten(scores)
  paths = masks_lib.leaf_paths(scores)
  if prunable is None:
    flags = [masks_lib.is_float(s) for s in leaves]
  else:
    flags = masks_lib.check_flags(scores, prunable, 'masks_from_scores')
    for path, score, flag in zip(paths, leaves, flags, strict=True):
      if flag and not masks_lib.is_float(score):
        raise ValueError(f'masks_from_scores: scores at {path} have dtype {score.dtype}, but '
                         'prunable marks it; only floating-point leaves can be pruned.')
  prunable = jax.tree.unflatten(treedef, flags)
  per_leaf = masks_lib.overrides_by_leaf(scores, prunable, overrides)
  result = [jnp.ones_like(s, dtype=jnp.bool_) for s in leaves]  # Laid out as the scores.
  group = []
  for i, (score, flag, override) in enumerate(zip(leaves, flags, per_leaf, strict=True)):
    if not flag:
      continue
    if override is not None:
      result[i] = _select([score], _count(override, score.size))[0]
    elif scope == 'layerwise':
      result[i] = _select([score], _count(sparsity, score.size))[0]
    else:
      group.append(i)
  if group:
    size = sum(leaves[i].size for i in group)
    for i, mask in zip(group, _select([leaves[i] for i in group], _count(sparsity, size)),
                       strict=True):
      result[i] = mask
  return jax.tree.unflatten(treedef, result)


def check_nm(n: int, m: int) -> None:
  if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
    raise ConfigError(f'N:M sparsity {n}:{m} is invalid: it needs integers 0 < N < M '
                      '(e.g. 2:4 keeps 2 of every 4).')


def nm_mask(scores: jax.Array, n: int, m: int, path: str = 'a kernel') -> jax.Array:
  """Keeps the n highest of every m consecutive entries along the input dimension.

  `scores` is a kernel [..., in, out] (Flax layout); groups run along the flattened input
  dimensions, so the last input axis must divide by m. Ties keep the earlier entry.
  """
  check_nm(n, m)
  shape = scores.shape
  if scores.ndim < 2 or shape[-2] % m:
    raise ConfigError(f'{path} has shape {shape}: N:M sparsity {n}:{m} groups the input '
                      f'dimension (axis -2) in blocks of {m}, which needs it divisible by {m}.')
  fan_in = int(np.prod(shape[:-1]))
  grouped = scores.reshape(fan_in // m, m, shape[-1])
  grouped = jnp.where(jnp.isnan(grouped), -jnp.inf, grouped)  # NaN ranks lowest, counts hold.
  # An entry's rank is the number of its group's entries ahead of it (higher, or equal and
  # earlier): m comparisons per entry, which is what a sort would do, without sorting (XLA:CPU
  # sorts are ~100x slower than these comparisons).
  other, this = grouped[:, :, None, :], grouped[:, None, :, :]  # [groups, other, this, out]
  earlier = (np.arange(m)[:, None] < np.arange(m)[None, :])[None, :, :, None]
  rank = jnp.sum((other > this) | ((other == this) & earlier), axis=1, dtype=jnp.int32)
  return (rank < n).reshape(shape)


def nm_divisible(shape: Sequence[int], m: int) -> bool:
  """Whether a kernel of `shape` has an input dimension (axis -2) that N:M groups of m fill."""
  return len(shape) >= 2 and shape[-2] % m == 0


def nm_prunable(params: Any, m: int, prunable: Any = None) -> tuple[Any, list[str]]:
  """(prunable without the leaves N:M cannot group, their paths), as NVIDIA's ASP skips them.

  A leaf is left out when its input dimension (axis -2) does not divide by m; the skipped
  paths are also logged in one line (`logs.say`). Use the returned tree as `prunable` of any
  N:M pruning (`nm_masks`, `oneshot.prune(n=, m=)`).
  """
  leaves, treedef = jax.tree.flatten(params)
  flags = jax.tree.leaves(prunable) if prunable is not None else [True] * len(leaves)
  paths = masks_lib.leaf_paths(params)
  skipped = [p for p, x, f in zip(paths, leaves, flags, strict=True)
             if f and not nm_divisible(jnp.shape(x), m)]
  if skipped:
    logs.say(f'N:M with M={m} leaves dense {len(skipped)} layer(s) whose input dimension does '
             f'not divide by {m}: {", ".join(skipped)}')
  kept = [bool(f) and p not in skipped for p, f in zip(paths, flags, strict=True)]
  return jax.tree.unflatten(treedef, kept), skipped


def nm_masks(scores: Any, n: int, m: int, *, prunable: Any = None,
             skip_indivisible: bool = False, skipped: list[str] | None = None) -> Any:
  """`nm_mask` on every prunable leaf; others stay all True. Sparsity is exactly 1 - n/m.

  Args:
    scores: a score tree like the params.
    n, m: keep n of every m consecutive entries along the input dimension.
    prunable: tree of bools; default every leaf.
    skip_indivisible: leave dense (all True) the prunable leaves whose input dimension does not
      divide by m, as NVIDIA's ASP does, instead of raising (`nm_prunable`: their paths are
      logged and appended to `skipped`).
    skipped: a list that receives the paths of the leaves left dense.

  Raises:
    ConfigError: a prunable leaf's input dimension does not divide by m and `skip_indivisible`
      is False.
  """
  check_nm(n, m)
  if skip_indivisible:
    prunable, left_dense = nm_prunable(scores, m, prunable)
    if skipped is not None:
      skipped.extend(left_dense)
  leaves, treedef = jax.tree.flatten(scores)
  flags = (masks_lib.check_flags(scores, prunable, 'nm_masks') if prunable is not None
           else [True] * len(leaves))
  paths = masks_lib.leaf_paths(scores)
  out = [nm_mask(s, n, m, p) if f else jnp.ones(s.shape, jnp.bool_)
         for s, f, p in zip(leaves, flags, paths, strict=True)]
  return jax.tree.unflatten(treedef, out)
