"""Orbax checkpoints of the training state plus a JSON record of the loop's progress.

Each checkpoint step holds two items: 'state' (step, params, optimizer state, base RNG key) and
'meta' (epoch, data position, history, early-stopping counters) - all a resumed run needs to
continue exactly. Restoring reads arrays and JSON only; nothing in a checkpoint is executed.
"""

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from bigmodel_jax import tree
from bigmodel_jax.errors import CheckpointMismatchError


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` for (state arrays, meta) pairs.

  Args:
    directory: where step folders go (made absolute: Orbax needs that).
    max_to_keep: keep only the newest N steps.
    async_save: write in a background thread while training continues.
    keep_steps: steps never deleted, whatever max_to_keep says (e.g. a rewind point).
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
               keep_steps: Sequence[int] = ()):
    self.directory = os.path.abspath(directory)
    policy = ocp.checkpoint_managers.LatestN(max_to_keep)
    if keep_steps:
      policy = ocp.checkpoint_managers.AnyPreservationPolicy(
          [policy, ocp.checkpoint_managers.CustomSteps(list(keep_steps))])
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(preservation_policy=policy,
                                             enable_async_checkpointing=async_save, create=True),
        # Handlers named up front so that a fresh process can read item metadata before restoring.
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state_arrays: Any, meta: dict[str, Any]) -> None:
    """Saves (asynchronously if configured); a step already on disk is left as it is."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_arrays), meta=ocp.args.JsonSave(meta)))

  def check_compatible(self, step: int, target: Any) -> None:
    """Raises CheckpointMismatchError if the saved arrays do not fit `target`'s structure."""
    saved = self._manager.item_metadata(step)['state']
    saved_leaves = {name: tuple(getattr(m, 'shape', ()) or ())
                    for name, m in tree.named_leaves(saved)}
    target_leaves = {name: tuple(np.shape(t)) for name, t in tree.named_leaves(target)}
    where = f'{self.directory} (step {step})'
    # Params first: a different model shows up there before it does in optimizer state.
    for name, shape in sorted(target_leaves.items(), key=lambda kv: not kv[0].startswith('params')):
      if name not in saved_leaves:
        raise CheckpointMismatchError(
            f'The checkpoint in {where} has no {name!r}: it was written by a different model or '
            'optimizer; use a new --workdir or restore the original config.')
      if saved_leaves[name] != shape:
        raise CheckpointMismatchError(
            f'The checkpoint in {where} holds {name} with shape {saved_leaves[name]} but this '
            f'config needs {shape}: use a new --workdir or restore the original config.')
    extra = sorted(set(saved_leaves) - set(target_leaves))
    if extra:
      raise CheckpointMismatchError(
          f'The checkpoint in {where} holds {extra[0]!r}, which this config does not have: it was '
          'written by a different model or optimizer; use a new --workdir.')

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """Restores (state arrays shaped like `target`, meta) of `step`.

    Args:
      step: a step from `latest_step()`.
      target: a pytree of arrays or `jax.ShapeDtypeStruct`s with the saved layout.
    """
    self.check_compatible(step, target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    logging.info('Restored checkpoint step %d from %s', step, self.directory)
    return restored['state'], restored['meta']

  def restore_meta(self, step: int) -> dict[str, Any]:
    """The JSON record saved with `step`, without reading any array."""
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']

  def restore_arrays(self, step: int, device: jax.Device | None = None) -> Any:
    """The saved state arrays of `step` on one `device` (default: the first), needing no model
    or config: for inspecting or comparing checkpoints written on any number of devices.
    Optimizer states come back as plain dicts and lists."""
    device = device or jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    saved = self._manager.item_metadata(step)['state']
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          saved)
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']

  def restore_numpy(self, step: int | None = None) -> Any:
    """The saved state arrays of `step` (default: the latest) as numpy arrays, read without a
    target: for comparing and inspecting checkpoints, not for resuming (optimizer states come
    back as plain dicts and lists)."""
    step = self.latest_step() if step is None else step
    return jax.device_get(self._manager.restore(step)['state'])

  def wait(self) -> None:
    """Blocks until background saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
