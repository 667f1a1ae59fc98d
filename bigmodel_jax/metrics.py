"""Metric output: TensorBoard event files (tensorboardX) and the console lines people read."""

import concurrent.futures
import sys
import time

import jax


def _summary_writer(logdir: str):
  from tensorboardX import SummaryWriter  # Imported late: only the writing process needs it.
  return SummaryWriter(logdir=logdir, flush_secs=30)


class MetricWriter:
  """Scalars to TensorBoard event files in `logdir`, written by process 0 only.

  The writer (importing tensorboardX, ~0.3 s) is made in a background thread, off the path to
  the first training step; the first write waits for it.
  """

  def __init__(self, logdir: str):
    self._future = None
    if jax.process_index() == 0:
      pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='metric-writer')
      self._future = pool.submit(_summary_writer, logdir)
      pool.shutdown(wait=False)

  @property
  def _writer(self):
    return None if self._future is None else self._future.result()

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    writer = self._writer
    if writer is None:
      return
    for name, value in scalars.items():
      writer.add_scalar(name, float(value), global_step=step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def format_rate(per_second: float) -> str:
  """12345.6 -> '12.3k'."""
  if per_second >= 1e6:
    return f'{per_second / 1e6:.2f}M'
  if per_second >= 1e3:
    return f'{per_second / 1e3:.1f}k'
  return f'{per_second:.0f}'


def format_duration(seconds: float) -> str:
  """75.2 -> '0:01:15' (h:mm:ss)."""
  seconds = max(0, int(round(seconds)))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Console:
  """Prints progress for people: one line per epoch, and progress within long epochs.

  On a terminal the in-epoch progress rewrites one line; in a log file it is a line every
  `every_seconds`. Only process 0 prints.
  """

  def __init__(self, every_seconds: float = 10.0, prefix: str = ''):
    self._enabled = jax.process_index() == 0
    self._prefix = prefix
    self._tty = sys.stdout.isatty()
    self._every = every_seconds
    self._last = 0.0

  def line(self, text: str) -> None:
    if self._enabled:
      print(('\r\033[K' if self._tty else '') + self._prefix + text, flush=True)

  def progress(self, text: str) -> None:
    now = time.monotonic()
    if not self._enabled or (not self._tty and now - self._last < self._every):
      return
    self._last = now
    text = self._prefix + text
    print(('\r\033[K' + text) if self._tty else text, end='' if self._tty else '\n', flush=True)
