"""Leaf paths of pytrees as strings: the one copy that pruning, checkpoints and sharding share.

A leaf's path is its keys joined by '/': 'params/Dense_0/kernel' for a dict entry,
'opt_state/0/mu/Dense_0/kernel' through a tuple and a namedtuple field. Patterns that select
leaves (pruning's include / exclude globs, sharding rules) match these strings.

A leaf inside a box is named by the box: the array of a Flax NNX `Variable` (whose key path ends
in the attribute `.value`) is 'l1/kernel', not 'l1/kernel/value', so an `nnx.State`, the pure
dict of `nnx.to_pure_dict` and a Linen params dict of the same model have the same paths.
"""

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import jax


def key_str(key: Any) -> str:
  """One path entry as text: a dict key, an attribute (namedtuple field) or a sequence index."""
  for attribute in ('key', 'name', 'idx'):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey.
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _is_box_value(key: Any) -> bool:
  """The `.value` attribute by which an NNX Variable (or a Linen meta box) holds its array."""
  return isinstance(key, jax.tree_util.GetAttrKey) and key.name == 'value'


def path_str(path: Sequence[Any]) -> str:
  """'Dense_0/kernel' for a jax key path (as `jax.tree_util.tree_leaves_with_path` gives).

  A trailing `.value` attribute (the array inside an NNX Variable) is left out.
  """
  if path and _is_box_value(path[-1]):
    path = path[:-1]
  return '/'.join(key_str(k) for k in path)


def named_leaves(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
  """(path string, leaf) pairs of `tree`, in `jax.tree.leaves` order."""
  return [(path_str(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)]


def leaf_paths(tree: Any) -> list[str]:
  """Path strings of the leaves of `tree`, in `jax.tree.leaves` order."""
  return [name for name, _ in named_leaves(tree)]


def map_with_path(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
  """`jax.tree.map` whose `fn(path, leaf, *others)` also gets each leaf's path string."""
  return jax.tree_util.tree_map_with_path(lambda p, *xs: fn(path_str(p), *xs), tree, *rest)


def match_paths(paths: Sequence[str], pattern: str) -> list[str]:
  """Paths that the glob `pattern` matches (`*` spans '/', e.g. '*kernel', 'Dense_[01]/kernel')."""
  return [p for p in paths if fnmatch.fnmatchcase(p, pattern)]
