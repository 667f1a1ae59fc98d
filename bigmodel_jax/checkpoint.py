"""Orbax checkpoints of the training state plus a JSON record of the loop's progress.

Each checkpoint step holds two items: 'state' (step, params, optimizer state, base RNG key) and
'meta' (epoch, data position, history, early-stopping counters) - all a resumed run needs to
continue exactly. Restoring reads arrays and JSON only; nothing in a checkpoint is executed.

Integrity: once Orbax has committed a step this checkpointer saved, it records a manifest of
CRC-32 checksums of the step's files (`checksums`); `latest_intact_step` checks it (and that the
metadata read) before a step is trusted, sets damaged steps aside in DIRECTORY-damaged/ with a
warning naming the damaged files, and falls back to the newest intact step; when none is intact
it stops with CheckpointDamagedError.
"""

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from bigmodel_jax import checksums, tree
from bigmodel_jax.errors import CheckpointDamagedError, CheckpointMismatchError


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
    self._async = async_save
    self._unrecorded: list[int] = []  # Steps saved here whose manifest is not written yet.
    self._max_to_keep, self._keep_steps = max_to_keep, set(keep_steps)
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
    # Orbax's save waits for the previous one to commit: every earlier step is final now.
    self._unrecorded.append(step)
    self._record(in_flight=step if self._async else None)

  def delete_all(self) -> None:
    """Removes every step (a phase whose settings changed starts afresh)."""
    for step in self.all_steps():
      self._manager.delete(step)
    self._manager.reload()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _record(self, in_flight: int | None = None) -> None:
    """Writes the checksum manifest of every step saved here and committed since."""
    done = [step for step in self._unrecorded if step != in_flight]
    self._unrecorded = [step for step in self._unrecorded if step == in_flight]
    for step in done:
      folder = self.step_dir(step)
      if jax.process_index() != 0 or not os.path.isdir(folder):
        continue
      if in_flight is not None and self._max_to_keep == 1 and step not in self._keep_steps:
        continue  # The in-flight save deletes it as it commits: no manifest into a folder
        # that is being removed (killed before that commit, the step is checked by reading).
      try:
        checksums.record(folder)
      except FileNotFoundError:  # Deleted meanwhile by max_to_keep (a newer step committed).
        pass

  def problems(self, step: int) -> list[str]:
    """Why `step` cannot be trusted ([] = intact): files that differ from its checksum manifest,
    or metadata that does not read. A step without a manifest (saved before checksums, or
    killed between Orbax's commit and the manifest) is checked by reading its metadata only."""
    bad = checksums.damaged(self.step_dir(step))
    if bad:
      return bad
    try:
      self._manager.item_metadata(step)['state']  # noqa: B018  (reads state/_METADATA)
      self.restore_meta(step)
    except Exception as e:  # noqa: BLE001  (Orbax and json raise many kinds)
      return [f'metadata unreadable ({type(e).__name__}: {" ".join(str(e).split())[:200]})']
    return []

  def set_aside(self, steps: Sequence[int]) -> str:
    """Moves damaged `steps` to DIRECTORY-damaged/ (kept for inspection; a re-run writes those
    steps again); returns that folder."""
    aside = self.directory + '-damaged'
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, str(step))
        if os.path.exists(target):
          target += f'-{time.time_ns()}'
        os.replace(self.step_dir(step), target)
    self._manager.reload()
    return aside

  def latest_intact_step(self, *, discard_all: bool = False, set_aside: bool = True,
                         below: int | None = None) -> int | None:
    """The newest step that passes `problems` (None for a folder without checkpoints).

    Newer damaged steps are set aside (`set_aside`) with a warning that names their damaged
    files. When no step is intact: with `discard_all` (a phase that can recompute its result)
    they are all set aside and None is returned; otherwise CheckpointDamagedError.

    Args:
      discard_all: set every step aside when none is intact, instead of raising.
      set_aside: move damaged steps away (False: a folder of another run, only read).
      below: consider only steps below this one.
    """
    damaged = {}
    for step in sorted(self.all_steps(), reverse=True):
      if below is not None and step >= below:
        continue
      bad = self.problems(step)
      if not bad:
        if damaged:
          self._warn(damaged, f'using step {step}, the newest intact one', set_aside)
        return step
      damaged[step] = bad
    if not damaged:
      return None
    if discard_all:
      self._warn(damaged, 'none is intact: computing it again', True)
      return None
    raise CheckpointDamagedError(
        f'Every checkpoint in {self.directory} is damaged ({_describe(damaged)}): restore the '
        'folder from a backup, or move it away to start afresh.')

  def _warn(self, damaged: dict[int, list[str]], outcome: str, set_aside: bool) -> None:
    where = ''
    if set_aside:
      where = f'; moved to {self.set_aside(list(damaged))}'
    logging.warning('Damaged checkpoint(s) in %s: %s%s; %s.', self.directory,
                    _describe(damaged), where, outcome)

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
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001  (Orbax / TensorStore / json: many kinds)
      raise CheckpointDamagedError(
          f'Checkpoint step {step} in {self.directory} cannot be read ({type(e).__name__}: '
          f'{" ".join(str(e).split())[:300]}).') from e
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
    """Blocks until background saves are on disk, then records their checksums."""
    self._manager.wait_until_finished()
    self._record()

  def close(self) -> None:
    self.wait()
    self._manager.close()


def _describe(damaged: dict[int, list[str]]) -> str:
  return '; '.join(f'step {step}: {", ".join(files[:4])}'
                   + (f' and {len(files) - 4} more' if len(files) > 4 else '')
                   for step, files in sorted(damaged.items(), reverse=True))
