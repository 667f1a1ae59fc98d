"""The classic replicated data-parallel path, kept apart from the sharded one.

`jax.pmap` over all devices: the state is passed unmapped (`in_axes=None`) and stays replicated,
the batch is split over devices, gradients are averaged with `lax.pmean` inside
`train.train_step`.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from bigmodel_jax import train
from bigmodel_jax.parallel import hosts, sharding
from bigmodel_jax.parallel.compile import CompiledCall
from bigmodel_jax.parallel.layout import Layout
from bigmodel_jax.parallel.mesh import MESH_AXES

PMAP_AXIS = 'data'


class PmapLayout(Layout):
  """`jax.pmap` data parallelism over `devices`, each holding the whole state."""
  mode = 'pmap'

  def __init__(self, parallelism: ml_collections.ConfigDict, devices: Sequence[jax.Device], *,
               batch_size: int, eval_batch_size: int):
    devices = list(devices)
    # A (devices, 1, 1) mesh: only for the shardings of replicated arrays (init, place, restore).
    mesh = jax.sharding.Mesh(np.array(devices).reshape(len(devices), 1, 1), MESH_AXES)
    super().__init__(parallelism, devices=devices, mesh=mesh, shards=len(devices),
                     batch_size=batch_size, eval_batch_size=eval_batch_size)
    self._local = [d for d in devices if d.process_index == jax.process_index()]
    # Multi-process pmap cannot be lowered ahead of time with per-process shapes.
    self._ahead_of_time = jax.process_count() == 1

  def shardings(self, tree: Any) -> Any:
    """Every leaf replicated: pmap passes the state unmapped to every device."""
    return sharding.infer_shardings(tree, self.mesh, sharding.REPLICATED)

  def for_checkpoint(self, tree: Any) -> Any:
    """Multi-process pmap returns the replicated state as per-host arrays (on local devices
    only); they become one global replicated array each."""
    return hosts.replicated_to_global(tree, self.mesh)

  def local_rows(self, global_batch: int) -> slice:
    return hosts.rows_of_devices(self.devices, self._local, global_batch)

  def put_batch(self, local: dict[str, np.ndarray], *, stacked: bool) -> Any:
    axis, n = (1 if stacked else 0), len(self._local)
    return jax.tree.map(lambda x: x.reshape(*x.shape[:axis], n, x.shape[axis] // n,
                                            *x.shape[axis + 1:]), local)

  def train_call(self, state: Any, *, loss_fn: train.LossFn,
                 before_step: train.StateHook | None = None) -> CompiledCall:
    del state  # Replicated whatever it holds.
    fn = jax.pmap(functools.partial(train.train_steps, loss_fn=loss_fn, before_step=before_step,
                                    axis_name=PMAP_AXIS),
                  axis_name=PMAP_AXIS, in_axes=(None, 1), out_axes=(None, None),
                  devices=self.devices, donate_argnums=0)
    return CompiledCall(fn, 'pmap train steps', ahead_of_time=self._ahead_of_time)

  def eval_call(self, *, loss_fn: train.LossFn) -> CompiledCall:
    fn = jax.pmap(functools.partial(train.eval_step, loss_fn=loss_fn, axis_name=PMAP_AXIS),
                  axis_name=PMAP_AXIS, in_axes=(None, 0), out_axes=None, devices=self.devices)
    return CompiledCall(fn, 'pmap eval step', ahead_of_time=self._ahead_of_time)
