"""Wall-clock timing of compiled functions, for latency figures (never asserted in tests)."""

import os
import statistics
import time

import jax


def median_ms(fn, *args, repeats: int = 50, warmup: int = 5, min_seconds: float = 0.2) -> float:
  """Median milliseconds of `fn(*args)` (results blocked on), after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times, start = [], time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_seconds:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def donated_timer(step, state, batch):
  """Times a step that donates its state: `step(state, batch) -> (state, metrics)`.

  Makes one warm-up (compiling) call, then returns `run(calls) -> seconds` for `calls` further
  calls in a row, the state carried from call to call (`median_ms` cannot: a donated state is
  consumed by the call that takes it).
  """
  holder = list(step(state, batch))
  jax.block_until_ready(holder[1])

  def run(calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
      holder[:] = step(holder[0], batch)
    jax.block_until_ready(holder[1])
    return time.perf_counter() - start
  return run


def interleaved(timers: dict, rounds: int) -> dict[str, list[float]]:
  """Calls each of `timers` ({name: () -> seconds}) once a round, `rounds` rounds, the order
  reversed every other round; returns {name: [its figure of each round]}.

  Figures of the same round are comparable even when the machine's speed drifts between rounds,
  so benchmarks compare variants round by round (paired) rather than by their overall medians.
  """
  times = {name: [] for name in timers}
  for r in range(rounds):
    for name in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
      times[name].append(timers[name]())
  return times


def best_seconds(fn, repeats: int = 5) -> float:
  """Fastest of `repeats` calls of `fn()` (which must wait for its own result), after one
  warm-up call: a machine's best case, as peak figures want."""
  fn()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
  """Best float32 GFLOP/s of an n x n x n matmul through XLA: the machine's practical peak, for
  utilisation figures (never a datasheet number)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jax.numpy.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  return 2 * n ** 3 / best_seconds(lambda: matmul(a, a).block_until_ready(), repeats) / 1e9


def process_age_s() -> float | None:
  """Seconds since this process started (Linux /proc, 10 ms resolution); None elsewhere."""
  try:
    with open('/proc/self/stat') as f:
      # Field 22 (starttime, in clock ticks since boot) follows the ')' that ends field 2.
      start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    with open('/proc/uptime') as f:
      uptime = float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return None
  return uptime - start_ticks / os.sysconf('SC_CLK_TCK')
