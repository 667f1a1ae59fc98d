"""Steps compiled ahead of time, once per input shape, with XLA's cost and memory logged."""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

MEMORY_KINDS = ('argument', 'output', 'temp', 'generated_code')


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
      return self._first_call(key, args)
    if key not in self._compiled:
      self._compiled[key] = self._compile(key, args)
    return self._compiled[key](*args)

  def _first_call(self, key: tuple, args: tuple) -> Any:
    start = time.perf_counter()
    out = jax.block_until_ready(self.fn(*args))
    self.seconds += time.perf_counter() - start
    self.flops = self.memory = None
    self._compiled[key] = True
    logging.info('Compiled and ran %s for %s in %.2fs', self.name, [s for s, _ in key],
                 time.perf_counter() - start)
    return out

  def _compile(self, key: tuple, args: tuple) -> Any:
    start = time.perf_counter()
    compiled = self.fn.lower(*args).compile()
    self.seconds += time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = (cost or {}).get('flops')
    memory = compiled.memory_analysis()
    if memory is not None:
      self.memory = {k: int(getattr(memory, f'{k}_size_in_bytes', 0) or 0) for k in MEMORY_KINDS}
    self.flops = float(flops) if flops else None  # Of the latest compiled shape.
    logging.info('Compiled %s for %s in %.2fs: %s GFLOP per call (per device), memory %s',
                 self.name, [s for s, _ in key], time.perf_counter() - start,
                 f'{flops / 1e9:.3f}' if flops else '?',
                 {k: f'{v / 2**20:.1f} MiB' for k, v in (self.memory or {}).items()})
    return compiled
