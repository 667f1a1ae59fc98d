"""Forward latency of language models side by side: the prompt (a full forward of [batch, length]
tokens) and KV-cache decoding (ms per generated token), each compiled ahead of time, timed in
alternating rounds with paired ratios to a reference model (figures, never asserted).

    figures = latency.compare({'dense': (model, params), 'mlp/0.25': (small, small_params)},
                              tokens, reference='dense', rounds=3)
    figures['mlp/0.25']['prompt_b8']  # {'ms': median wall ms, 'speedup': median dense / it,
                                      #  'cpu_speedup': the same of process CPU time}

Each figure is wall time and the process's CPU time (all threads): on a shared machine the CPU
time ratio leaves out the time spent waiting for a core and is the steadier figure of the work
saved. Ratios are the median of per-round ratios, which holds when the machine's speed drifts
between rounds.
"""

import concurrent.futures
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import ConfigError


def empty_cache(model, batch: int, position: int) -> dict:
  """A zero KV cache for `batch` sequences whose next position is `position` (the cost of a
  decode step does not depend on what the cache holds)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((batch, 1),
                                                                          jnp.int32), decode=True))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])
  cache['position']['index'] = jnp.asarray(position, jnp.int32)
  return cache


def compiled_calls(models: Mapping[str, tuple[Any, Any]], tokens: np.ndarray,
                   batches: Sequence[int]) -> dict[tuple[str, str, int], Any]:
  """{(name, 'prompt' | 'decode', batch): compiled call}, compiled two at a time."""
  jobs = {}
  length = tokens.shape[1]
  for name, (model, params) in models.items():
    forward = jax.jit(lambda p, x, m=model: m.apply({'params': p}, x))

    def step(cache, p, token, m=model):
      logits, updated = m.apply({'params': p, 'cache': cache}, token, decode=True,
                                mutable=['cache'])
      return updated['cache'], logits[:, -1]
    decode = jax.jit(step, donate_argnums=0)
    for b in batches:
      jobs[name, 'prompt', b] = lambda f=forward, p=params, b=b: f.lower(p, tokens[:b]).compile()
      jobs[name, 'decode', b] = lambda f=decode, p=params, b=b, m=model: f.lower(
          empty_cache(m, b, length), p, jnp.zeros((b, 1), jnp.int32)).compile()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = {key: pool.submit(job) for key, job in jobs.items()}
    return {key: f.result() for key, f in futures.items()}


def _timer(key, call, models, tokens, decode_steps) -> Callable[[], tuple[float, float]]:
  """() -> (wall, CPU) seconds of one prompt call, or per step of `decode_steps` decode steps."""
  name, kind, b = key
  model, params = models[name]
  length = tokens.shape[1]
  if kind == 'prompt':
    x = jnp.asarray(tokens[:b])

    def run():
      start, cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(call(params, x))
      return time.perf_counter() - start, time.process_time() - cpu
    return run

  def run():
    cache = jax.block_until_ready(empty_cache(model, b, length))
    token = jnp.zeros((b, 1), jnp.int32)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(decode_steps):
      cache, logits = call(cache, params, token)
    jax.block_until_ready(logits)
    return ((time.perf_counter() - start) / decode_steps,
            (time.process_time() - cpu) / decode_steps)
  return run


def compare(models: Mapping[str, tuple[Any, Any]], tokens, *, reference: str,
            batches: Sequence[int] = (1, 8), rounds: int = 3, decode_steps: int = 4,
            log: Callable[[str], None] | None = None) -> dict[str, dict[str, dict[str, float]]]:
  """Prompt and decode latency of each model beside `reference`.

  Args:
    models: {name: (model, params)}; each model must support `decode=True` with a cache of at
      least tokens.shape[1] + decode_steps positions (its `max_len`).
    tokens: int tokens [>= max(batches), length]: the prompts; decoding starts after `length`.
    reference: the name the ratios are taken against.
    batches, rounds, decode_steps: what is timed and how often.
    log: called with one line per finished round.

  Returns:
    {name: {'prompt_b<B>' | 'decode_b<B>': {'ms', 'speedup', 'cpu_speedup'}}}: ms is the median
    wall time (per call, or per decode step); the speed-ups are medians of per-round
    reference / name ratios (1.0 for the reference itself).
  """
  tokens = np.asarray(tokens)
  if reference not in models:
    raise ConfigError(f'reference={reference!r} is not one of the models: {", ".join(models)}.')
  if tokens.ndim != 2 or len(tokens) < max(batches) or rounds < 1 or decode_steps < 1:
    raise ConfigError(f'latency.compare needs tokens [>= {max(batches)}, length] and rounds, '
                      f'decode_steps >= 1; got tokens {tokens.shape}, rounds={rounds}, '
                      f'decode_steps={decode_steps}.')
  models = {name: (m, jax.device_put(p)) for name, (m, p) in models.items()}
  calls = compiled_calls(models, tokens, batches)
  timers = {key: _timer(key, call, models, tokens, decode_steps) for key, call in calls.items()}
  times = {key: [] for key in timers}
  for r in range(rounds):  # As timing.interleaved, one round at a time for the progress line.
    for key in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
      times[key].append(timers[key]())
    if log is not None:
      log(f'latency round {r + 1}/{rounds}')
  out = {}
  for name, kind, b in times:
    own, ref = times[name, kind, b], times[reference, kind, b]
    out.setdefault(name, {})[f'{kind}_b{b}'] = {
        'ms': 1e3 * statistics.median(wall for wall, _ in own),
        'speedup': statistics.median(r[0] / o[0] for r, o in zip(ref, own, strict=True)),
        'cpu_speedup': statistics.median(r[1] / o[1] for r, o in zip(ref, own, strict=True))}
  return out
