"""Where a run's arrays live and how its steps compile: one device, `pmap`, or sharded `jit`.

`config.parallelism.mode` picks one of three paths (configs/default.py documents every key):

  single   plain `jax.jit` on the first device: the reference the others must match.
  pmap     the classic replicated data-parallel step: `jax.pmap` over all devices, the state
           passed unmapped (`in_axes=None`) and kept replicated, the batch split over devices,
           gradients averaged with `lax.pmean` inside `train.train_step`.
  sharded  `jax.jit` over a `Mesh(('data', 'fsdp'))`: the batch is split over both axes; params,
           optimizer state and masks are replicated when fsdp = 1, else each leaf is split over
           'fsdp' along its largest dimension that the axis divides (small leaves stay
           replicated). XLA inserts the gathers and reductions. The default.

`config.batch_size` is always the *global* batch: each of the data-parallel shards (devices)
gets `batch_size / shards` examples, and on several hosts each host reads only the rows its
devices hold (`local_rows`). Multi-host runs call `initialize_distributed` before anything else
touches JAX (launch.py does).
"""

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bigmodel_jax import train
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning.masks import path_str

MODES = ('single', 'pmap', 'sharded')
MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # The batch is split over these; 'tensor' devices share examples.
PMAP_AXIS = 'data'
# Logical parameter axes (models/transformer.py) -> mesh axes, used when the mesh has a 'tensor'
# axis: Megatron-style splits of heads and MLP width over 'tensor', the embedding dimension over
# 'fsdp'. A dimension that the mesh axis does not divide stays whole.
LOGICAL_RULES = {'embed': 'fsdp', 'heads': 'tensor', 'mlp': 'tensor', 'vocab': 'tensor'}


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


def mesh_shape(parallelism: ml_collections.ConfigDict,
               num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes for `num_devices`; one of data / fsdp may be -1 = the rest."""
  data, fsdp, tensor = parallelism.data, parallelism.fsdp, parallelism.tensor
  if data == -1 and fsdp == -1:
    raise ConfigError('config.parallelism: only one of data and fsdp may be -1.')
  for name, size in (('data', data), ('fsdp', fsdp)):
    if size == 0 or size < -1:
      raise ConfigError(f'config.parallelism.{name}={size}: use a positive size or -1 (the rest).')
  if not isinstance(tensor, int) or tensor < 1:
    raise ConfigError(f'config.parallelism.tensor={tensor!r}: use a positive size (1 = none).')
  known = max(data, 1) * max(fsdp, 1) * tensor
  if num_devices % known:
    raise ConfigError(f'config.parallelism: a data={data} x fsdp={fsdp} x tensor={tensor} mesh '
                      f'does not divide the {num_devices} devices.')
  data = num_devices // known if data == -1 else data
  fsdp = num_devices // known if fsdp == -1 else fsdp
  if data * fsdp * tensor != num_devices:
    raise ConfigError(f'config.parallelism: the mesh data={data} x fsdp={fsdp} x tensor={tensor} '
                      f'= {data * fsdp * tensor} devices, but {num_devices} are in use '
                      '(parallelism.num_devices or the machine); make the product match, or set '
                      'data or fsdp to -1.')
  return data, fsdp, tensor


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  """PartitionSpec that splits a leaf over 'fsdp' along its largest divisible dimension."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda d: (-shape[d], d))
  for d in dims:
    if shape[d] % fsdp == 0:
      return P(*(['fsdp' if i == d else None for i in range(len(shape))]))
  return P()


@dataclasses.dataclass
class CompiledCall:
  """A step function compiled once per input shape, with its cost logged at compile time.

  `flops` is XLA's cost analysis of the latest compiled program, per device. XLA counts the body
  of a loop once, so for `train.train_steps` (a `lax.scan`) it is the FLOPs of one step.
  """
  fn: Callable[..., Any]
  name: str
  # False: let `fn` compile on first call (multi-process pmap, whose ahead-of-time lowering
  # expects global shapes where calls pass per-process ones); no cost figures then.
  ahead_of_time: bool = True
  seconds: float = 0.0
  flops: float | None = None
  memory: dict[str, int] | None = None
  _compiled: dict = dataclasses.field(default_factory=dict)

  def __call__(self, *args):
    key = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(args[1:]))
    if not self.ahead_of_time:
      if key in self._compiled:
        return self.fn(*args)
      start = time.perf_counter()
      out = jax.block_until_ready(self.fn(*args))
      self.seconds += time.perf_counter() - start
      self.flops = self.memory = None
      self._compiled[key] = True
      logging.info('Compiled and ran %s for %s in %.2fs', self.name, [s for s, _ in key],
                   time.perf_counter() - start)
      return out
    if key not in self._compiled:
      start = time.perf_counter()
      compiled = self.fn.lower(*args).compile()
      self.seconds += time.perf_counter() - start
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, list | tuple) else cost
      flops = (cost or {}).get('flops')
      memory = compiled.memory_analysis()
      if memory is not None:
        self.memory = {k: int(getattr(memory, f'{k}_size_in_bytes', 0) or 0) for k in
                       ('argument', 'output', 'temp', 'generated_code')}
      self.flops = float(flops) if flops else None  # Of the latest compiled shape.
      logging.info('Compiled %s for %s in %.2fs: %s GFLOP per call (per device), memory %s',
                   self.name, [s for s, _ in key], time.perf_counter() - start,
                   f'{flops / 1e9:.3f}' if flops else '?',
                   {k: f'{v / 2**20:.1f} MiB' for k, v in (self.memory or {}).items()})
      self._compiled[key] = compiled
    return self._compiled[key](*args)


class Parallelism:
  """The devices of a run, the shardings of its arrays and its compiled steps.

  Args:
    config: `config.parallelism`.
    batch_size: global training batch.
    eval_batch_size: global evaluation batch (rounded up to a multiple of the shards:
      `self.eval_batch_size` is the one to use).
  """

  def __init__(self, config: ml_collections.ConfigDict, *, batch_size: int, eval_batch_size: int):
    if config.mode not in MODES:
      raise ConfigError(f'config.parallelism.mode={config.mode!r}; use one of: '
                        f'{", ".join(MODES)}.')
    self.mode = config.mode
    self.config = config
    devices = jax.devices()
    multi = jax.process_count() > 1
    if config.num_devices != -1:
      if config.num_devices <= 0:
        raise ConfigError(f'config.parallelism.num_devices={config.num_devices}: use -1 (all) '
                          'or a positive count.')
      if config.num_devices > len(devices):
        raise ConfigError(f'config.parallelism.num_devices={config.num_devices}, but only '
                          f'{len(devices)} devices are visible.')
      if multi and config.num_devices != len(devices):
        raise ConfigError('config.parallelism.num_devices must be -1 on several hosts: every '
                          'device of the cluster takes part.')
      devices = devices[:config.num_devices]
    if self.mode == 'single':
      if multi:
        raise ConfigError("config.parallelism.mode='single' cannot run on several hosts; use "
                          "'sharded' or 'pmap'.")
      devices = devices[:1]
    self.devices = devices
    if self.mode != 'sharded' and config.tensor != 1:
      raise ConfigError(f'config.parallelism.tensor={config.tensor} needs mode=\'sharded\'.')
    if self.mode == 'sharded':
      self.data, self.fsdp, self.tensor = mesh_shape(config, len(devices))
      shape = (self.data, self.fsdp, self.tensor)
      device_grid = (mesh_utils.create_device_mesh(shape, devices)
                     if not multi or len(devices) == jax.device_count()
                     else np.array(devices).reshape(shape))
      self.mesh = Mesh(device_grid, MESH_AXES)
      self.shards = self.data * self.fsdp
    else:
      self.data, self.fsdp, self.tensor = len(devices), 1, 1
      self.mesh = Mesh(np.array(devices).reshape(len(devices), 1, 1), MESH_AXES)
      self.shards = len(devices) if self.mode == 'pmap' else 1
    self._logical: dict[str, tuple] = {}
    if batch_size % self.shards:
      raise ConfigError(
          f'config.batch_size={batch_size} does not divide over the {self.shards} data-parallel '
          f'shards of this run ({self.describe_mesh()}): use a multiple of {self.shards} (it is '
          'the global batch; each shard gets batch / shards).')
    self.batch_size = batch_size
    # Evaluation pads its last batch anyway, so a bigger batch costs nothing in correctness.
    self.eval_batch_size = -(-eval_batch_size // self.shards) * self.shards
    if self.eval_batch_size != eval_batch_size:
      logging.info('Evaluation batch %d rounded up to %d, a multiple of the %d shards.',
                   eval_batch_size, self.eval_batch_size, self.shards)
    self._batch_spec = P(BATCH_AXES)
    self._replicated = NamedSharding(self.mesh, P())
    # Batch shards this host holds (devices on the 'tensor' axis share one), computed once for
    # `put_batch`'s global shapes.
    held = NamedSharding(self.mesh, self._batch_spec).addressable_devices_indices_map(
        (self.shards,)).values()
    self._local_shards = len({(s[0].start, s[0].stop) for s in held})
    self._local = ([d for d in devices if d.process_index == jax.process_index()]
                   if self.mode == 'pmap' else None)

  # --- description ------------------------------------------------------------------------
  def describe_mesh(self) -> str:
    if self.mode == 'sharded':
      return (f'mesh data={self.data} x fsdp={self.fsdp}'
              + (f' x tensor={self.tensor}' if self.tensor > 1 else ''))
    return f'{len(self.devices)} device(s)'

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
            + (f', {self.describe_mesh()}' if self.mode == 'sharded' else '')
            + f', global batch {self.batch_size} = {d["per_device_batch"]} per device')

  # --- shardings and placement --------------------------------------------------------------
  def set_logical_axes(self, params_axes: Any) -> None:
    """Registers the params' logical axis names (a tree of PartitionSpecs of names, e.g. from
    `nn.get_partition_spec`), used to split leaves over the 'tensor' axis (`LOGICAL_RULES`)."""
    leaves = jax.tree_util.tree_leaves_with_path(params_axes, is_leaf=lambda x: isinstance(x, P))
    self._logical = {path_str(path): tuple(spec) for path, spec in leaves if len(tuple(spec))}

  def _logical_spec(self, path: str, shape: tuple[int, ...]) -> P | None:
    for name, axes in self._logical.items():
      if (path == name or path.endswith('/' + name)) and len(axes) == len(shape):
        sizes = {'fsdp': self.fsdp, 'tensor': self.tensor}
        mesh_axes = [LOGICAL_RULES.get(a) for a in axes]
        return P(*[m if m and dim % sizes[m] == 0 else None
                   for m, dim in zip(mesh_axes, shape, strict=True)])
    return None

  def shardings(self, tree: Any) -> Any:
    """A sharding per leaf of `tree` (arrays or ShapeDtypeStructs).

    Params, optimizer moments and masks of a parameter get the same one (the same shape rule, or
    the same logical names found by path suffix), so masks always share their params' layout.
    With a 'tensor' axis, leaves with logical names follow `LOGICAL_RULES`; others, and every
    leaf without one, follow the FSDP shape rule.
    """
    if self.mode == 'single':
      return jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(self.devices[0]), tree)
    if self.mode == 'pmap' or (self.fsdp == 1 and self.tensor == 1):
      return jax.tree.map(lambda _: self._replicated, tree)

    def one(path, x):
      shape = tuple(x.shape)
      spec = None
      if self.tensor > 1 and self._logical:
        spec = self._logical_spec(path_str(path), shape)
      if spec is None:
        spec = fsdp_spec(shape, self.fsdp, self.config.fsdp_min_size)
      return NamedSharding(self.mesh, spec)
    return jax.tree_util.tree_map_with_path(one, tree)

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
    """`tree` as global arrays that Orbax can save from every host.

    Multi-process pmap returns the replicated state as per-host arrays (on local devices only);
    they become one global replicated array each. Elsewhere arrays are global already.
    """
    if self.mode == 'pmap' and jax.process_count() > 1:
      return multihost_utils.host_local_array_to_global_array(tree, self.mesh, P())
    return tree

  def to_host(self, tree: Any) -> Any:
    """Numpy copies of `tree`'s global arrays on every host (gathers shards across hosts)."""
    if jax.process_count() > 1:
      return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)

  def local_rows(self, global_batch: int) -> slice:
    """The rows of each global batch that this host's devices hold (all rows on one host)."""
    if jax.process_count() == 1:
      return slice(0, global_batch)
    if self.mode == 'pmap':
      per_device = global_batch // self.shards
      first = self.devices.index(self._local[0])
      return slice(first * per_device, (first + len(self._local)) * per_device)
    sharding = NamedSharding(self.mesh, self._batch_spec)
    slices = sharding.addressable_devices_indices_map((global_batch,)).values()
    start, stop = min(s[0].start or 0 for s in slices), max(s[0].stop for s in slices)
    return slice(start, stop)

  def put_batch(self, local: dict[str, np.ndarray], *, stacked: bool) -> Any:
    """This host's rows of a global batch -> device arrays laid out for the compiled steps.

    Args:
      local: leaves [rows, ...], or [k, rows, ...] when `stacked` (chunks of k steps).
      stacked: whether leaves carry a leading steps axis.
    """
    axis = 1 if stacked else 0
    if self.mode == 'single':
      return local
    if self.mode == 'pmap':
      n = len(self._local)
      return jax.tree.map(lambda x: x.reshape(*x.shape[:axis], n, x.shape[axis] // n,
                                              *x.shape[axis + 1:]), local)
    spec = P(*([None] * axis), BATCH_AXES)
    sharding = NamedSharding(self.mesh, spec)
    rows = jax.process_count()

    def put(x):
      shape = list(x.shape)
      shape[axis] = x.shape[axis] if rows == 1 else self._global_rows(x.shape[axis])
      return jax.make_array_from_process_local_data(sharding, x, tuple(shape))
    return jax.tree.map(put, local)

  def _global_rows(self, local_rows: int) -> int:
    return local_rows * self.shards // self._local_shards

  # --- compiled steps -----------------------------------------------------------------------
  def train_call(self, state: Any, *, loss_fn: train.LossFn,
                 before_step: train.StateHook | None = None) -> CompiledCall:
    """(state, chunk from `put_batch(stacked=True)`) -> (state, per-step metrics [k])."""
    if self.mode == 'pmap':
      fn = jax.pmap(functools.partial(train.train_steps, loss_fn=loss_fn, before_step=before_step,
                                      axis_name=PMAP_AXIS),
                    axis_name=PMAP_AXIS, in_axes=(None, 1), out_axes=(None, None),
                    devices=self.devices, donate_argnums=0)
      return CompiledCall(fn, 'pmap train steps', ahead_of_time=jax.process_count() == 1)
    step = functools.partial(train.train_steps, loss_fn=loss_fn, before_step=before_step)
    if self.mode == 'single':
      return CompiledCall(jax.jit(step, donate_argnums=0), 'train steps')
    state_sh = self.shardings(state)
    chunk_sh = NamedSharding(self.mesh, P(None, BATCH_AXES))
    fn = jax.jit(step, in_shardings=(state_sh, chunk_sh),
                 out_shardings=(state_sh, self._replicated), donate_argnums=0)
    return CompiledCall(fn, 'sharded train steps')

  def eval_call(self, *, loss_fn: train.LossFn) -> CompiledCall:
    """(state, batch from `put_batch(stacked=False)`) -> {'loss_sum', 'correct_sum', 'count'}."""
    if self.mode == 'pmap':
      fn = jax.pmap(functools.partial(train.eval_step, loss_fn=loss_fn, axis_name=PMAP_AXIS),
                    axis_name=PMAP_AXIS, in_axes=(None, 0), out_axes=None, devices=self.devices)
      return CompiledCall(fn, 'pmap eval step', ahead_of_time=jax.process_count() == 1)
    step = functools.partial(train.eval_step, loss_fn=loss_fn)
    if self.mode == 'single':
      return CompiledCall(jax.jit(step), 'eval step')
    return CompiledCall(jax.jit(step, out_shardings=self._replicated), 'sharded eval step')


def from_config(config: ml_collections.ConfigDict) -> Parallelism:
  """The layout of a run of `config` (batch sizes from its top level)."""
  return Parallelism(config.parallelism, batch_size=config.batch_size,
                     eval_batch_size=config.eval_batch_size)
