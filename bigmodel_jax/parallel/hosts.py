"""What each host (process) of a cluster does: joining it, waiting for the others, and the rows
of a global batch and the arrays it holds.

On one process every function here is trivial; tests/test_multihost.py runs two.
"""

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def initialize_distributed(parallelism: ml_collections.ConfigDict) -> None:
  """Joins the multi-host cluster if `parallelism.distributed` asks for it.

  Must run before any other JAX call. Empty address / -1 counts let JAX detect them (SLURM,
  Open MPI, TPU pods, Kubernetes set them in the environment).
  """
  if not parallelism.distributed or jax.distributed.is_initialized():
    return
  if parallelism.cpu_collectives:
    # CPU-only clusters (and our tests) need a collectives library; GPUs/TPUs ignore this.
    jax.config.update('jax_cpu_collectives_implementation', parallelism.cpu_collectives)
  jax.distributed.initialize(
      coordinator_address=parallelism.coordinator_address or None,
      num_processes=parallelism.num_processes if parallelism.num_processes > 0 else None,
      process_id=parallelism.process_id if parallelism.process_id >= 0 else None,
      heartbeat_timeout_seconds=parallelism.heartbeat_timeout_s)
  logging.info('Joined a cluster of %d processes as process %d: %d devices, %d local',
               jax.process_count(), jax.process_index(), jax.device_count(),
               jax.local_device_count())


def sync(name: str) -> None:
  """Waits until every process of the cluster gets here (nothing to wait for on one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def process_zero_first(fn: Callable[[], Any]) -> Any:
  """Runs `fn` on process 0, then on the others: one host prepares a shared dataset folder or
  writes a file before the rest read it (hosts with their own disks still run `fn` themselves)."""
  if jax.process_count() == 1:
    return fn()
  result = fn() if jax.process_index() == 0 else None
  sync(f'process_zero_first:{getattr(fn, "__name__", "fn")}')
  return fn() if jax.process_index() != 0 else result


def to_host(tree: Any) -> Any:
  """Numpy copies of `tree`'s global arrays on every host (gathers shards across hosts)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def replicated_to_global(tree: Any, mesh: Mesh) -> Any:
  """Per-host arrays that hold the same values on every host -> one replicated global array each
  (what Orbax saves from every host). Unchanged on one host."""
  if jax.process_count() > 1:
    return multihost_utils.host_local_array_to_global_array(tree, mesh, P())
  return tree


def rows_held(sharding: NamedSharding, global_batch: int) -> slice:
  """The rows of a [global_batch, ...] array laid out by `sharding` that this host's devices hold
  (one contiguous block: the batch axes put each host's devices side by side)."""
  if jax.process_count() == 1:
    return slice(0, global_batch)
  slices = sharding.addressable_devices_indices_map((global_batch,)).values()
  return slice(min(s[0].start or 0 for s in slices), max(s[0].stop for s in slices))


def rows_of_devices(devices: list[jax.Device], local: list[jax.Device],
                    global_batch: int) -> slice:
  """The rows of a global batch split evenly over `devices` in order that the `local` ones get."""
  if jax.process_count() == 1:
    return slice(0, global_batch)
  per_device = global_batch // len(devices)
  first = devices.index(local[0])
  return slice(first * per_device, (first + len(local)) * per_device)
