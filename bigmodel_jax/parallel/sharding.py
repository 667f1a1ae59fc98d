"""Sharding rules as data: which mesh axes each leaf of a pytree is split over.

A strategy is a sequence of `(regex, rule)` pairs. For each leaf, the first pair whose regex
matches the leaf's whole path ('params/Dense_0/kernel', see `bigmodel_jax.tree`) and whose rule
gives a PartitionSpec decides; a rule may decline (None) to let later pairs decide, and a leaf that
no rule takes is replicated. A rule is a name in `RULES` or a function
`(path, shape, context) -> PartitionSpec | None`.

Params, their optimizer moments and their masks share the same shapes and the same path suffix,
so every rule here gives them one layout.
"""

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bigmodel_jax import tree as tree_lib
from bigmodel_jax.parallel.mesh import BATCH_AXES

# Logical parameter axes (models/transformer.py) -> mesh axes, used when the mesh has a 'tensor'
# axis: Megatron-style splits of heads and MLP width over 'tensor', the embedding dimension over
# 'fsdp'. A dimension that the mesh axis does not divide stays whole.
LOGICAL_RULES = (('embed', 'fsdp'), ('heads', 'tensor'), ('mlp', 'tensor'), ('vocab', 'tensor'))


@dataclasses.dataclass(frozen=True)
class RuleContext:
  """What rules may look at besides a leaf's path and shape.

  Attributes:
    axis_sizes: the mesh's axis sizes, e.g. {'data': 4, 'fsdp': 2, 'tensor': 1}.
    fsdp_min_size: leaves with fewer elements stay replicated under the 'fsdp' rule.
    logical: params path -> logical axis names of its dimensions (`logical_axes_table`).
  """
  axis_sizes: dict[str, int]
  fsdp_min_size: int = 1024
  logical: dict[str, tuple] = dataclasses.field(default_factory=dict)


Rule = Callable[[str, tuple[int, ...], RuleContext], P | None]
Strategy = Sequence[tuple[str, str | Rule]]


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  """PartitionSpec that splits a leaf over 'fsdp' along its largest divisible dimension."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: (-shape[d], d))
  for d in dims:
    if shape[d] % fsdp == 0:
      return P(*(['fsdp' if i == d else None for i in range(len(shape))]))
  return P()


def logical_axes_table(params_axes: Any) -> dict[str, tuple]:
  """Params path -> logical axis names, from a tree of PartitionSpecs of names (e.g. from
  `nn.get_partition_spec`); leaves without names are left out."""
  named = tree_lib.named_leaves(params_axes, is_leaf=lambda x: isinstance(x, P))
  return {path: tuple(spec) for path, spec in named if len(tuple(spec))}


def replicate_rule(path: str, shape: tuple[int, ...], context: RuleContext) -> P:
  """Every device holds the whole leaf."""
  del path, shape, context
  return P()


def fsdp_rule(path: str, shape: tuple[int, ...], context: RuleContext) -> P:
  """Split over 'fsdp' along the largest dimension it divides (`fsdp_spec`)."""
  del path
  return fsdp_spec(shape, context.axis_sizes['fsdp'], context.fsdp_min_size)


def logical_rule(path: str, shape: tuple[int, ...], context: RuleContext) -> P | None:
  """Split by the logical names registered for the parameter that `path` ends with, mapped by
  `LOGICAL_RULES`; declines without a 'tensor' axis or without names for this leaf."""
  if context.axis_sizes.get('tensor', 1) == 1:
    return None
  for name, axes in context.logical.items():
    if (path == name or path.endswith('/' + name)) and len(axes) == len(shape):
      mesh_axes = [dict(LOGICAL_RULES).get(a) for a in axes]
      return P(*[m if m and dim % context.axis_sizes[m] == 0 else None
                 for m, dim in zip(mesh_axes, shape, strict=True)])
  return None


RULES: dict[str, Rule] = {'replicate': replicate_rule, 'fsdp': fsdp_rule,
                          'logical': logical_rule}
# The sharded path's default: logical names where the mesh has a 'tensor' axis, else FSDP.
FSDP_STRATEGY: Strategy = (('.*', 'logical'), ('.*', 'fsdp'))
REPLICATED: Strategy = (('.*', 'replicate'),)


def infer_spec(path: str, shape: tuple[int, ...], strategy: Strategy,
               context: RuleContext) -> P:
  """The PartitionSpec of one leaf under `strategy` (replicated if no rule takes it)."""
  for pattern, rule in strategy:
    if re.fullmatch(pattern, path):
      spec = (RULES[rule] if isinstance(rule, str) else rule)(path, shape, context)
      if spec is not None:
        return spec
  return P()


def infer_shardings(tree: Any, mesh: Mesh, strategy: Strategy = FSDP_STRATEGY, *,
                    fsdp_min_size: int = 1024, logical: dict[str, tuple] | None = None) -> Any:
  """A NamedSharding over `mesh` per leaf of `tree` (arrays or ShapeDtypeStructs)."""
  context = RuleContext(dict(mesh.shape), fsdp_min_size, dict(logical or {}))
  return tree_lib.map_with_path(
      lambda path, x: NamedSharding(mesh, infer_spec(path, tuple(np.shape(x)), strategy,
                                                     context)), tree)


def batch_sharding(mesh: Mesh, *, stacked: bool) -> NamedSharding:
  """Batches [rows, ...] (or chunks [steps, rows, ...]) split over the batch axes."""
  return NamedSharding(mesh, P(*([None] * stacked), BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())

