"""Layouts: where a run's arrays live and how its steps compile, one class per path.

`Layout` holds what every path shares (devices, mesh, batch sizes, placement through
shardings, descriptions); `ShardedLayout` is the primary path, `jax.jit` over a mesh, and
`SingleLayout` is its one-device case. The pmap path is `pmap.PmapLayout`.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
from absl import logging

from bigmodel_jax import train
from bigmodel_jax.parallel import hosts, sharding
from bigmodel_jax.parallel.compile import CompiledCall
from bigmodel_jax.parallel.mesh import MESH_AXES, build_mesh, mesh_shape


class Layout:
  """The devices of a run, the shardings of its arrays and its compiled steps.

  Subclasses set `mode`, build the mesh and count the data-parallel shards of a batch for this
  constructor, and implement the per-path methods (`shardings` and those after it).

  Args:
    parallelism: `config.parallelism`, checked by `config.validate_parallelism`.
    devices: the devices in use, in mesh order.
    mesh: a `Mesh(MESH_AXES)` over `devices`.
    shards: how many ways a batch is split.
    batch_size: global training batch (a multiple of `shards`).
    eval_batch_size: global evaluation batch (rounded up to a multiple of the shards:
      `self.eval_batch_size` is the one to use).
  """
  mode: ClassVar[str]

  def __init__(self, parallelism: ml_collections.ConfigDict, *, devices: Sequence[jax.Device],
               mesh: jax.sharding.Mesh, shards: int, batch_size: int, eval_batch_size: int):
    self.config = parallelism
    self.devices = list(devices)
    self.mesh = mesh
    self.data, self.fsdp, self.tensor = (mesh.shape[a] for a in MESH_AXES)
    self.shards = shards
    self.batch_size = batch_size
    # Evaluation pads its last batch anyway, so a bigger batch costs nothing in correctness.
    self.eval_batch_size = -(-eval_batch_size // shards) * shards
    if self.eval_batch_size != eval_batch_size:
      logging.info('Evaluation batch %d rounded up to %d, a multiple of the %d shards.',
                   eval_batch_size, self.eval_batch_size, shards)
    self._logical: dict[str, tuple] = {}

  # --- description ------------------------------------------------------------------------
  def describe_mesh(self) -> str:
    return f'{len(self.devices)} device(s)'

  def _summary_mesh(self) -> str:
    """The mesh part of `summary()` ('' where the device count says it all)."""
    return ''

  def describe(self) -> dict[str, Any]:
    """What results.json and the start-up line report about the layout."""
    return {'mode': self.mode, 'num_devices': len(self.devices),
            'num_processes': jax.process_count(),
            'mesh': {'data': self.data, 'fsdp': self.fsdp, 'tensor': self.tensor},
            'global_batch': self.batch_size, 'per_device_batch': self.batch_size // self.shards,
            'device_kind': self.devices[0].device_kind, 'backend': jax.default_backend()}

  def summary(self) -> str:
    d = self.describe()
    return (f'{self.mode} on {d["num_devices"]} {d["backend"]} device(s)'
            + (f' in {d["num_processes"]} processes' if d['num_processes'] > 1 else '')
            + self._summary_mesh()
            + f', global batch {self.batch_size} = {d["per_device_batch"]} per device')

  # --- shardings and placement --------------------------------------------------------------
  def set_logical_axes(self, params_axes: Any) -> None:
    """Registers the params' logical axis names (a tree of PartitionSpecs of names, e.g. from
    `nn.get_partition_spec`), used to split leaves over the 'tensor' axis (`LOGICAL_RULES`)."""
    self._logical = sharding.logical_axes_table(params_axes)

  def shardings(self, tree: Any) -> Any:
    """A sharding per leaf of `tree` (arrays or ShapeDtypeStructs)."""
    raise NotImplementedError

  def abstract(self, tree: Any) -> Any:
    """ShapeDtypeStructs carrying this run's shardings (an Orbax restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, self.shardings(tree))

  def init(self, init_fn: Callable[[], Any]) -> Any:
    """Runs `init_fn` compiled so that its outputs are born with this run's shardings."""
    out = self.shardings(jax.eval_shape(init_fn))
    return jax.jit(init_fn, out_shardings=out)()

  def place(self, tree: Any) -> Any:
    """`tree` resharded to this run's layout (e.g. params restored elsewhere, new masks)."""
    return jax.jit(lambda t: t, out_shardings=self.shardings(tree))(tree)

  def for_checkpoint(self, tree: Any) -> Any:
    """`tree` as global arrays that Orbax can save from every host (they are already here)."""
    return tree

  def to_host(self, tree: Any) -> Any:
    """Numpy copies of `tree`'s global arrays on every host (gathers shards across hosts)."""
    return hosts.to_host(tree)

  # --- batches and compiled steps (per path) ------------------------------------------------
  def local_rows(self, global_batch: int) -> slice:
    """The rows of each global batch that this host's devices hold (all rows on one host)."""
    raise NotImplementedError

  def put_batch(self, local: dict[str, np.ndarray], *, stacked: bool) -> Any:
    """This host's rows of a global batch -> device arrays laid out for the compiled steps.

    Args:
      local: leaves [rows, ...], or [k, rows, ...] when `stacked` (chunks of k steps).
      stacked: whether leaves carry a leading steps axis.
    """
    raise NotImplementedError

  def train_call(self, state: Any, *, loss_fn: train.LossFn,
                 before_step: train.StateHook | None = None) -> CompiledCall:
    """(state, chunk from `put_batch(stacked=True)`) -> (state, per-step metrics [k])."""
    raise NotImplementedError

  def eval_call(self, *, loss_fn: train.LossFn) -> CompiledCall:
    """(state, batch from `put_batch(stacked=False)`) -> {'loss_sum', 'correct_sum', 'count'}."""
    raise NotImplementedError


class ShardedLayout(Layout):
  """`jax.jit` over a `Mesh(('data', 'fsdp', 'tensor'))`, the primary path.

  The batch is split over 'data' x 'fsdp'; each leaf of the state is laid out by `strategy`
  (`sharding.FSDP_STRATEGY`: logical names over 'tensor' where there is one, else split over
  'fsdp' along its largest dimension that the axis divides, small leaves replicated). XLA inserts
  the gathers and reductions.
  """
  mode = 'sharded'
  _call_names = ('sharded train steps', 'sharded eval step')

  def __init__(self, parallelism: ml_collections.ConfigDict, devices: Sequence[jax.Device], *,
               batch_size: int, eval_batch_size: int,
               strategy: sharding.Strategy = sharding.FSDP_STRATEGY):
    shape = self._mesh_shape(parallelism, len(devices))
    devices = list(devices)[:math.prod(shape)]
    data, fsdp, _ = shape
    super().__init__(parallelism, devices=devices, mesh=build_mesh(shape, devices),
                     shards=data * fsdp, batch_size=batch_size, eval_batch_size=eval_batch_size)
    self.strategy = tuple(strategy)
    self._replicated = sharding.replicated(self.mesh)
    # Batch shards this host holds (devices on the 'tensor' axis share one), computed once for
    # `put_batch`'s global shapes.
    held = sharding.batch_sharding(self.mesh, stacked=False).addressable_devices_indices_map(
        (self.shards,)).values()
    self._local_shards = len({(s[0].start, s[0].stop) for s in held})

  def _mesh_shape(self, parallelism: ml_collections.ConfigDict,
                  num_devices: int) -> tuple[int, int, int]:
    return mesh_shape(parallelism, num_devices)

  def describe_mesh(self) -> str:
    return (f'mesh data={self.data} x fsdp={self.fsdp}'
            + (f' x tensor={self.tensor}' if self.tensor > 1 else ''))

  def _summary_mesh(self) -> str:
    return f', {self.describe_mesh()}'

  def shardings(self, tree: Any) -> Any:
    """A sharding per leaf of `tree` (arrays or ShapeDtypeStructs), by `self.strategy`.

    Params, optimizer moments and masks of a parameter get the same one (the same shape rule, or
    the same logical names found by path suffix), so masks always share their params' layout.
    """
    return sharding.infer_shardings(tree, self.mesh, self.strategy,
                                    fsdp_min_size=self.config.fsdp_min_size,
                                    logical=self._logical)

  def local_rows(self, global_batch: int) -> slice:
    return hosts.rows_held(sharding.batch_sharding(self.mesh, stacked=False), global_batch)

  def put_batch(self, local: dict[str, np.ndarray], *, stacked: bool) -> Any:
    axis = 1 if stacked else 0
    batch_sharding = sharding.batch_sharding(self.mesh, stacked=stacked)
    one_host = jax.process_count() == 1

    def put(x):
      shape = list(x.shape)
      if not one_host:  # This host's rows are its shards' share of the global batch.
        shape[axis] = x.shape[axis] * self.shards // self._local_shards
      return jax.make_array_from_process_local_data(batch_sharding, x, tuple(shape))
    return jax.tree.map(put, local)

  def train_call(self, state: Any, *, loss_fn: train.LossFn,
                 before_step: train.StateHook | None = None) -> CompiledCall:
    step = functools.partial(train.train_steps, loss_fn=loss_fn, before_step=before_step)
    state_sh = self.shardings(state)
    fn = jax.jit(step, in_shardings=(state_sh, sharding.batch_sharding(self.mesh, stacked=True)),
                 out_shardings=(state_sh, self._replicated), donate_argnums=0)
    return CompiledCall(fn, self._call_names[0])

  def eval_call(self, *, loss_fn: train.LossFn) -> CompiledCall:
    step = functools.partial(train.eval_step, loss_fn=loss_fn)
    return CompiledCall(jax.jit(step, out_shardings=self._replicated), self._call_names[1])


class SingleLayout(ShardedLayout):
  """The reference: the sharded path on a mesh of the first device alone (one host only)."""
  mode = 'single'
  _call_names = ('train steps', 'eval step')

  def _mesh_shape(self, parallelism: ml_collections.ConfigDict,
                  num_devices: int) -> tuple[int, int, int]:
    del parallelism, num_devices
    return 1, 1, 1

  def describe_mesh(self) -> str:
    return Layout.describe_mesh(self)

  def _summary_mesh(self) -> str:
    return ''
