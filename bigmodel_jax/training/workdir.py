"""A training workdir: its lock, and what a checkpoint's JSON side ('meta') holds between sessions.

Restore order (one place): this workdir's newest checkpoint (checked first by `saved_progress`)
> the phase's `initial_state` (e.g. pruned params and masks) > a fresh initialisation.
"""

import contextlib
import fcntl
import os
import re
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from bigmodel_jax import checkpoint
from bigmodel_jax.errors import CheckpointDamagedError, ConfigError
from bigmodel_jax.train_state import TrainState

LOCK_FILE = '.lock'  # One per workdir, whatever kind of run holds it.


def lock_workdir(workdir: str, kind: str = 'training'):
  """An exclusive lock on WORKDIR/.lock for a run of `kind` (training, pruning sweep, pretrained
  LM); released when the process ends, even by kill -9. Every kind takes the same lock, so a
  second run of any kind on the same workdir stops with one sentence (ConfigError); the file
  keeps the kind, so a run of another kind is refused later too."""
  if jax.process_index() != 0:
    return None
  handle = open(os.path.join(workdir, LOCK_FILE), 'a+')  # Not 'w': the holder's line stays.
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or 'another run'
    handle.close()
    raise ConfigError(f'--workdir={workdir} is in use by {holder}: wait for it to finish, or use '
                      'a new workdir.') from None
  handle.seek(0)
  before = re.match(r'a (.+) run \(pid', handle.read())
  if before and before.group(1) != kind:  # One kind per workdir: results.json is each one's.
    handle.close()
    raise ConfigError(f'--workdir={workdir} holds a {before.group(1)} run; a {kind} run needs '
                      'a folder of its own (its results.json would replace that one\'s).')
  handle.seek(0)
  handle.truncate()
  handle.write(f'a {kind} run (pid {os.getpid()})\n')
  handle.flush()
  return handle


@contextlib.contextmanager
def locked(workdir: str, kind: str = 'training'):
  """`lock_workdir` for the body of a `with` statement, released when it ends."""
  handle = lock_workdir(workdir, kind)
  try:
    yield
  finally:
    if handle is not None:
      handle.close()


def zero_sums() -> dict[str, float]:
  return {'loss': 0.0, 'accuracy': 0.0, 'steps': 0}


def fresh_meta() -> dict[str, Any]:
  """The JSON record of a run that has not started (saved beside every checkpoint).

  `history` has a record per epoch, `eval_history` one per evaluation (each eval_every_steps and
  each epoch's end); `epoch_sums` / `eval_sums` sum the train metrics since the epoch's start /
  the latest evaluation.
  """
  return {'step': 0, 'history': [], 'epoch_sums': zero_sums(), 'eval_history': [],
          'eval_sums': zero_sums(), 'best_eval_loss': None, 'best_eval_loss_step': None,
          'best_eval_accuracy': None, 'best_epoch': None, 'bad_evals': 0,
          'stopped_early': False, 'train_time_s': 0.0, 'wall_time_s': 0.0, 'compile_time_s': 0.0}


def data_position(step: int, steps_per_epoch: int) -> dict[str, int]:
  """Where the input pipeline stands after `step` steps; a resume recomputes and checks it."""
  return {'epoch': step // steps_per_epoch, 'step_in_epoch': step % steps_per_epoch}


def saved_progress(run, ckpt: checkpoint.Checkpointer) -> tuple[int | None, dict[str, Any]]:
  """(newest step or None, its JSON record) of the workdir, checked before any array is read.

  Raises:
    CheckpointMismatchError: the checkpoint holds another model or optimizer.
    ConfigError: it was written with another epoch length (batch size or data limits).
  """
  latest = ckpt.latest_intact_step()  # Damaged newer steps are set aside, with a warning.
  if latest is None:
    return None, fresh_meta()
  ckpt.check_compatible(latest, run.abstract_state.arrays())
  meta = ckpt.restore_meta(latest)
  step = int(meta['step'])
  if 'data_position' in meta and meta['data_position'] != data_position(step,
                                                                         run.steps.per_epoch):
    raise ConfigError(
        f'The checkpoint at step {step} was written with another epoch length '
        f'(data position {meta["data_position"]}); config.batch_size or the data limits changed: '
        'restore them or use a new --workdir.')
  return latest, meta


def restore_or_init(run, ckpt: checkpoint.Checkpointer, latest: int | None,
                    initial_state: Callable[[TrainState], TrainState] | None = None
                    ) -> tuple[TrainState, dict[str, Any]]:
  """(state, meta) to continue from: checkpoint `latest` (from `saved_progress`), else a fresh
  (or given) start.

  Args:
    run: the `setup.Run`.
    ckpt: the workdir's checkpointer.
    latest: the step to restore, None for a workdir without a checkpoint.
    initial_state: maps the freshly initialised state to the starting one; used only when the
      workdir has no checkpoint yet.
  """
  if latest is None:
    state = run.par.init(run.init)
    if initial_state is not None:
      state = run.par.place(initial_state(state))
    return state, fresh_meta()
  while True:
    try:
      state, meta = run.restore(ckpt, latest)
      break
    except CheckpointDamagedError:  # Arrays that do not read, in a step without checksums.
      older = ckpt.latest_intact_step(below=latest)
      if older is None:
        raise
      logging.warning('Checkpoint step %d in %s does not read; it is moved to %s and the run '
                      'resumes from step %d.', latest, ckpt.directory, ckpt.set_aside([latest]),
                      older)
      latest = older
  return state, {**fresh_meta(), **meta}  # Checkpoints of earlier versions lack the newer keys.
