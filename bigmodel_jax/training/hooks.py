"""The loop's side work as small objects, in the spirit of clu's periodic actions.

Each hook sees every finished chunk of steps (`Chunk`) and does one job: progress lines and
TensorBoard scalars, mid-epoch checkpoints, the profiler trace, the compile report. The
non-finite guard and early stopping are plain functions the loop calls where they decide.
"""

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import optax

from bigmodel_jax import checkpoint, metrics, parallel
from bigmodel_jax.errors import NonFiniteLossError
from bigmodel_jax.training import workdir as workdir_lib

if TYPE_CHECKING:
  from bigmodel_jax.training.evals import Units


@dataclasses.dataclass(frozen=True)
class Chunk:
  """A chunk of k steps just run: the run stands at `step` (after it) in epoch `epoch`."""
  epoch: int
  step: int
  k: int
  epoch_start: int
  epoch_end: int
  epoch_sums: dict[str, float]  # Running sums of this epoch (loss, accuracy, steps).
  timer: 'EpochTimer'
  state: Any


class EpochTimer:
  """Training seconds of one epoch in this session, compile time excluded.

  `take()` hands out the seconds not yet counted, so that a mid-epoch checkpoint and the epoch's
  end add each second to `train_time_s` once.
  """

  def __init__(self, compiled: parallel.CompiledCall):
    self._compiled = compiled
    self._start = time.monotonic()
    self._compile_before = compiled.seconds
    self._counted = 0.0
    self._excluded = 0.0
    self.steps = 0  # Steps run in this session.

  def elapsed(self) -> float:
    return (time.monotonic() - self._start - (self._compiled.seconds - self._compile_before)
            - self._excluded)

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` of other work (an evaluation inside the epoch) out of `elapsed`."""
    self._excluded += seconds

  def wall(self) -> float:
    return time.monotonic() - self._start

  def take(self, elapsed: float | None = None) -> float:
    """Seconds of `elapsed` (default: now) not handed out before."""
    elapsed = self.elapsed() if elapsed is None else elapsed
    uncounted, self._counted = elapsed - self._counted, elapsed
    return uncounted


class Progress:
  """A progress line within the epoch, and train scalars every `log_every` steps.

  The line's loss is the epoch's running mean; for a language model (whose one epoch is often
  the whole run) the mean since the latest multiple of `log_every`, with its perplexity.
  """

  def __init__(self, console: metrics.Console, writer: metrics.MetricWriter, *,
               num_epochs: int, batch_size: int, log_every: int, schedule: Callable,
               units: 'Units'):
    self._console, self._writer, self._units = console, writer, units
    self._num_epochs, self._batch, self._every = num_epochs, batch_size, log_every
    self._learning_rate = schedule
    self._sums = workdir_lib.zero_sums()

  def start_epoch(self) -> None:
    self._sums = workdir_lib.zero_sums()

  def __call__(self, chunk: Chunk, step_metrics: dict[str, np.ndarray]) -> None:
    add_chunk(self._sums, step_metrics, chunk.k)
    sums = self._sums if self._units.tokens else chunk.epoch_sums
    elapsed = chunk.timer.elapsed()
    rate = chunk.timer.steps * self._batch / elapsed
    self._console.progress(f'  epoch {chunk.epoch + 1}/{self._num_epochs}  step '
                           f'{chunk.step - chunk.epoch_start}/{chunk.epoch_end - chunk.epoch_start}'
                           f'  {self._units.loss(sums["loss"] / sums["steps"])}  '
                           f'{self._units.rate(rate)}')
    if chunk.step // self._every > (chunk.step - chunk.k) // self._every:
      self._writer.write_scalars(chunk.step, self._units.scalars({
          'train/loss': self._sums['loss'] / self._sums['steps'],
          'train/accuracy': self._sums['accuracy'] / self._sums['steps'],
          'train/learning_rate': float(self._learning_rate(chunk.step)),
          'perf/examples_per_s': rate,
          'perf/step_time_ms': 1e3 * elapsed / chunk.timer.steps,
      }))
      self._sums = workdir_lib.zero_sums()


class MidEpochCheckpoint:
  """Saves every `every` steps inside an epoch (epochs always end with a save).

  `stopped()` True: early stopping ends the epoch at this chunk, and the epoch's save (with its
  record) is the one to write at this step.
  """

  def __init__(self, every: int, save: Callable[[Any, float], None],
               stopped: Callable[[], bool] = lambda: False):
    self._every, self._save, self._stopped = every, save, stopped

  def __call__(self, chunk: Chunk, step_metrics: dict[str, np.ndarray]) -> None:
    del step_metrics
    every, step = self._every, chunk.step
    if (every and step < chunk.epoch_end and step // every > (step - chunk.k) // every
        and not self._stopped()):
      self._save(chunk.state, chunk.timer.take())


class Profiler:
  """A `jax.profiler` trace of the first ~`steps` steps of the session (process 0)."""

  def __init__(self, steps: int, directory: str, console: metrics.Console):
    self._steps, self._directory, self._console = steps, directory, console
    self._seen = None  # None: not started; -1: done.

  def start(self) -> None:
    if self._steps > 0 and jax.process_index() == 0:
      jax.profiler.start_trace(self._directory)
      self._seen = 0

  def __call__(self, chunk: Chunk, step_metrics: dict[str, np.ndarray]) -> None:
    del step_metrics
    if self._seen is not None and self._seen >= 0:
      self._seen += chunk.k
      if self._seen >= self._steps:
        seen = self._seen
        self.close()
        self._console.line(f'Wrote a profile of {seen} steps to {self._directory}')

  def close(self) -> None:
    if self._seen is not None and self._seen >= 0:
      jax.profiler.stop_trace()
      self._seen = -1


class CompileReport:
  """One line when a call used a newly compiled shape: compile time, FLOPs and memory."""

  def __init__(self, console: metrics.Console, compiled: parallel.CompiledCall):
    self._console, self._compiled = console, compiled

  def __call__(self, chunk: Chunk, step_metrics: dict[str, np.ndarray]) -> None:
    del step_metrics
    c = self._compiled
    if c.fresh is not None and c.flops:
      self._console.line(f'compiled a {chunk.k}-step call in {c.fresh[0]:.1f}s: '
                         f'{c.flops / 1e6:.4g} MFLOP per step per device; memory '
                         + ', '.join(f'{name} {size / 2**20:.2f} MiB'
                                     for name, size in (c.memory or {}).items()))


def add_chunk(sums: dict[str, float], step_metrics: dict[str, np.ndarray], k: int) -> None:
  """Adds a chunk's per-step metrics [k] to running sums (loss, accuracy, steps)."""
  sums['loss'] += float(step_metrics['loss'].sum())
  sums['accuracy'] += float(step_metrics['accuracy'].sum())
  sums['steps'] += k


def check_finite(step_metrics: dict[str, np.ndarray], step: int,
                 ckpt: checkpoint.Checkpointer) -> None:
  """Raises NonFiniteLossError if a loss of the chunk that started at `step` is NaN or inf."""
  bad = np.flatnonzero(~np.isfinite(step_metrics['loss']))
  if not bad.size:
    return
  ckpt.wait()
  latest = ckpt.latest_step()
  where = (f'The last good checkpoint is step {latest} in {ckpt.directory}: lower '
           'optimizer.learning_rate or set optimizer.grad_clip_norm, then re-run the same '
           'command to resume from it.' if latest is not None else
           'No checkpoint was written yet: lower optimizer.learning_rate or set '
           'optimizer.grad_clip_norm and run again.')
  raise NonFiniteLossError(f'The loss became {step_metrics["loss"][bad[0]]} at step '
                           f'{step + bad[0] + 1}; that state was not saved. {where}')


def update_best(meta: dict[str, Any], record: dict[str, Any], *, patience: int,
                min_delta: float, finished: bool) -> None:
  """Early stopping's bookkeeping after an evaluation: best loss / accuracy, bad evals, stop."""
  improved = (meta['best_eval_loss'] is None or
              record['eval_loss'] < meta['best_eval_loss'] - min_delta)
  meta['bad_evals'] = 0 if improved else meta['bad_evals'] + 1
  if improved:
    meta['best_eval_loss'], meta['best_eval_loss_step'] = record['eval_loss'], record['step']
  if meta['best_eval_accuracy'] is None or record['eval_accuracy'] > meta['best_eval_accuracy']:
    meta['best_eval_accuracy'], meta['best_epoch'] = record['eval_accuracy'], record['epoch']
  if patience and meta['bad_evals'] >= patience and not finished:
    meta['stopped_early'] = True


def learning_rate_fn(schedule: optax.Schedule) -> Callable:
  """The schedule compiled once (not run eagerly op by op inside epoch 1)."""
  fn = jax.jit(schedule)
  fn(0)
  return fn
