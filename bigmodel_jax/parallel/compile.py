"""Steps compiled ahead of time, once per input shape, with XLA's cost and memory logged."""

import concurrent.futures
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
  `compile_in_background` compiles for shapes known ahead (e.g. while the state initialises);
  `seconds` counts only the compile time callers waited for, and `fresh` is (seconds, shape) of
  the compile that the latest call used for the first time (None when it reused one).
  """
  fn: Callable[..., Any]
  name: str
  # False: let `fn` compile on first call (multi-process pmap, whose ahead-of-time lowering
  # expects global shapes where calls pass per-process ones); no cost figures then.
  ahead_of_time: bool = True
  seconds: float = 0.0
  flops: float | None = None
  memory: dict[str, int] | None = None
  fresh: tuple[float, tuple] | None = None
  _compiled: dict = dataclasses.field(default_factory=dict)
  _pending: dict = dataclasses.field(default_factory=dict)

  @staticmethod
  def _key(args: tuple) -> tuple:
    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(args[1:]))

  def compile_in_background(self, *abstract_args) -> None:
    """Starts compiling for `abstract_args` (arrays or ShapeDtypeStructs with the call's
    shardings) in a thread; the first call with those shapes uses it (waiting if need be)."""
    key = self._key(abstract_args)
    if not self.ahead_of_time or key in self._compiled or key in self._pending:
      return
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)
    self._pending[key] = executor.submit(self._compile, key, abstract_args)
    executor.shutdown(wait=False)

  def __call__(self, *args):
    key = self._key(args)
    self.fresh = None
    if not self.ahead_of_time:
      if key in self._compiled:
        return self.fn(*args)
      return self._first_call(key, args)
    if key not in self._compiled:
      start = time.perf_counter()
      pending = self._pending.pop(key, None)
      compiled, compile_seconds = pending.result() if pending else self._compile(key, args)
      self.seconds += time.perf_counter() - start
      self._compiled[key] = compiled
      self._record(compiled)
      self.fresh = (compile_seconds, key)
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

  def _compile(self, key: tuple, args: tuple) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = self.fn.lower(*args).compile()
    seconds = time.perf_counter() - start
    logging.info('Compiled %s for %s in %.2fs', self.name, [s for s, _ in key], seconds)
    return compiled, seconds

  def _record(self, compiled) -> None:
    """Cost and memory of `compiled`, the latest shape put to use."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = (cost or {}).get('flops')
    memory = compiled.memory_analysis()
    if memory is not None:
      self.memory = {k: int(getattr(memory, f'{k}_size_in_bytes', 0) or 0) for k in MEMORY_KINDS}
    self.flops = float(flops) if flops else None
