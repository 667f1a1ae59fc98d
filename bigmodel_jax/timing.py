"""Wall-clock timing of compiled functions, for latency figures (never asserted in tests)."""

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
