"""Where a run's arrays live and how its steps compile: one device, `pmap`, or sharded `jit`.

`config.parallelism.mode` picks one of three layouts (configs/default.py documents every key),
chosen once by `from_config`:

  sharded  `ShardedLayout`: `jax.jit` over a `Mesh(('data', 'fsdp', 'tensor'))`; the batch is
           split over 'data' x 'fsdp'; params, optimizer state and masks are laid out by sharding
           rules given as data (`sharding.FSDP_STRATEGY`: replicated when fsdp = 1, else each
           leaf split over 'fsdp' along its largest dimension that the axis divides, small leaves
           replicated; logical axis names over 'tensor'). XLA inserts the gathers and reductions.
           The default and the primary path.
  single   `SingleLayout`: the sharded path on the first device alone: the reference the others
           must match.
  pmap     `PmapLayout`: the classic replicated data-parallel step (`pmap.py`).

`config.batch_size` is always the *global* batch: each of the data-parallel shards (devices)
gets `batch_size / shards` examples, and on several hosts each host reads only the rows its
devices hold (`local_rows`). Multi-host runs call `initialize_distributed` before anything else
touches JAX (launch.py does). Modules: `hosts` (cluster and per-host data), `mesh`, `sharding`
(rules), `compile` (`CompiledCall`), `layout` (sharded and single), `pmap`.
"""

import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax.parallel.compile import CompiledCall
from bigmodel_jax.parallel.hosts import initialize_distributed, process_zero_first, sync, to_host
from bigmodel_jax.parallel.layout import Layout, ShardedLayout, SingleLayout
from bigmodel_jax.parallel.mesh import BATCH_AXES, MESH_AXES, MODES, devices_in_use, mesh_shape
from bigmodel_jax.parallel.pmap import PMAP_AXIS, PmapLayout
from bigmodel_jax.parallel.sharding import (
  FSDP_STRATEGY,
  LOGICAL_RULES,
  REPLICATED,
  RULES,
  fsdp_spec,
  infer_shardings,
)

LAYOUTS: dict[str, type[Layout]] = {'sharded': ShardedLayout, 'single': SingleLayout,
                                    'pmap': PmapLayout}


def from_config(config: ml_collections.ConfigDict) -> Layout:
  """The layout of a run of `config` (batch sizes from its top level).

  Raises:
    ConfigError: `config.parallelism` does not fit this cluster or `config.batch_size`
      (`config.validate_parallelism`).
  """
  config_lib.validate_parallelism(config)
  p = config.parallelism
  return LAYOUTS[p.mode](p, devices_in_use(p), batch_size=config.batch_size,
                         eval_batch_size=config.eval_batch_size)


def Parallelism(config: ml_collections.ConfigDict, *, batch_size: int,  # noqa: N802
                eval_batch_size: int) -> Layout:
  """The layout of `config.parallelism` for these batch sizes: `from_config` for callers that
  hold only the parallelism section (kept for them; new code calls `from_config`)."""
  return from_config(ml_collections.ConfigDict(
      {'parallelism': config, 'batch_size': batch_size, 'eval_batch_size': eval_batch_size}))


__all__ = ['BATCH_AXES', 'FSDP_STRATEGY', 'LAYOUTS', 'LOGICAL_RULES', 'MESH_AXES', 'MODES',
           'PMAP_AXIS', 'REPLICATED', 'RULES', 'CompiledCall', 'Layout', 'Parallelism',
           'PmapLayout', 'ShardedLayout', 'SingleLayout', 'from_config', 'fsdp_spec',
           'infer_shardings', 'initialize_distributed', 'mesh_shape', 'process_zero_first', 'sync',
           'to_host']
