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
