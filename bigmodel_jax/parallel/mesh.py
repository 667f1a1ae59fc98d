"""The device mesh of a run: its axes, their sizes, and the `Mesh` over the devices in use."""

import math
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

MODES = ('single', 'pmap', 'sharded')
MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # The batch is split over these; 'tensor' devices share examples.


def devices_in_use(parallelism: ml_collections.ConfigDict) -> list[jax.Device]:
  """The cluster's devices, or the first `parallelism.num_devices` of them."""
  devices = jax.devices()
  return devices if parallelism.num_devices == -1 else devices[:parallelism.num_devices]


def mesh_shape(parallelism: ml_collections.ConfigDict,
               num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes for `num_devices`; one of data / fsdp may be -1 = the rest.

  Raises:
    ValueError: the sizes cannot make a mesh of `num_devices` (`config.validate_parallelism`
      says why, as a ConfigError naming the key).
  """
  data, fsdp, tensor = parallelism.data, parallelism.fsdp, parallelism.tensor
  known = max(data, 1) * max(fsdp, 1) * max(tensor, 1)
  data = num_devices // known if data == -1 else data
  fsdp = num_devices // known if fsdp == -1 else fsdp
  if min(data, fsdp, tensor) < 1 or data * fsdp * tensor != num_devices:
    raise ValueError(f'config.parallelism data={parallelism.data} x fsdp={parallelism.fsdp} x '
                     f'tensor={tensor} is no mesh of {num_devices} devices; '
                     'config.validate_parallelism(config) says what to change.')
  return data, fsdp, tensor


def build_mesh(shape: tuple[int, int, int], devices: Sequence[jax.Device]) -> Mesh:
  """A `Mesh(MESH_AXES)` of `shape` over `devices` (all of them: prod(shape) == len(devices))."""
  assert math.prod(shape) == len(devices), (shape, len(devices))
  if jax.process_count() == 1 or len(devices) == jax.device_count():
    grid = mesh_utils.create_device_mesh(shape, devices)  # Follows the interconnect.
  else:
    grid = np.array(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)
