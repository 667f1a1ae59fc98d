"""Timing helpers: what they call and carry (their figures are never asserted)."""

from bigmodel_jax import timing


def test_donated_timer_carries_the_state_through_every_call():
  given = []

  def step(state, batch):
    given.append(state)
    return state + batch, state

  run = timing.donated_timer(step, 0, 1)
  assert given == [0]  # The warm-up call.
  assert run(4) >= 0.0
  assert run(2) >= 0.0
  assert given == [0, 1, 2, 3, 4, 5, 6]  # Each call got the state the previous one returned.


def test_interleaved_alternates_who_goes_first():
  calls = []
  timers = {name: (lambda name=name: calls.append(name) or float(len(calls)))
            for name in ('a', 'b', 'c')}
  times = timing.interleaved(timers, 3)
  assert calls == ['a', 'b', 'c', 'c', 'b', 'a', 'a', 'b', 'c']
  assert times == {'a': [1.0, 6.0, 7.0], 'b': [2.0, 5.0, 8.0], 'c': [3.0, 4.0, 9.0]}


def test_best_seconds_warms_up_once_then_takes_the_fastest_call(monkeypatch):
  clock = [0.0]  # A fake clock that only the timed function advances.
  monkeypatch.setattr(timing.time, 'perf_counter', lambda: clock[0])
  durations = iter([9.0, 3.0, 1.0, 2.0, 5.0])  # The warm-up call, then four timed ones.

  def fn():
    clock[0] += next(durations)
  assert timing.best_seconds(fn, repeats=4) == 1.0
  assert next(durations, None) is None  # Exactly 1 + 4 calls.
