"""Sparsity schedules: how sparse the model should be at a round or a step.

Sparsities must lie in [0, 1); errors name the function's arguments.
"""

import jax.numpy as jnp

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning.selection import check_sparsity, checked_sparsity

SCHEDULES = ('one_shot', 'iterative', 'gradual')


def iterative_sparsities(target: float, rounds: int) -> list[float]:
  """Sparsity after each of `rounds` prune-retrain rounds, pruning the same fraction of the
  remaining weights every round (the lottery-ticket procedure): 1 - (1 - target)^(r / rounds)."""
  if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
    raise ConfigError(f'iterative_sparsities: rounds={rounds!r} is invalid: it must be a '
                      'positive integer.')
  check_sparsity(target, 'iterative_sparsities: target')
  return [1 - (1 - target) ** (r / rounds) for r in range(1, rounds + 1)]


def polynomial_sparsity(step, *, final_sparsity: float, begin_step: int, end_step: int,
                        initial_sparsity: float = 0.0, frequency: int = 100, power: int = 3):
  """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3.

  The sparsity rises from `initial_sparsity` at `begin_step` to `final_sparsity` at `end_step`
  and stays there; it changes only on steps where (step - begin_step) % frequency == 0 (the
  steps on which masks are recomputed), so it is piecewise constant. Works on traced steps.
  Sparsities must be in [0, 1) (traced ones are checked when they run, see
  `selection.checked_sparsity`); `frequency` and `power` positive integers.
  """
  if end_step <= begin_step:
    raise ConfigError(f'polynomial_sparsity: end_step={end_step!r} must be greater than '
                      f'begin_step={begin_step!r}.')
  for name, value in (('frequency', frequency), ('power', power)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f'polynomial_sparsity: {name}={value!r} is invalid: it must be a '
                        'positive integer.')
  final_sparsity = checked_sparsity(final_sparsity, 'polynomial_sparsity: final_sparsity')
  initial_sparsity = checked_sparsity(initial_sparsity, 'polynomial_sparsity: initial_sparsity')
  step = jnp.asarray(step, jnp.float32)
  last_update = begin_step + jnp.floor((step - begin_step) / frequency) * frequency
  progress = jnp.clip((last_update - begin_step) / (end_step - begin_step), 0.0, 1.0)
  value = final_sparsity + (initial_sparsity - final_sparsity) * (1 - progress) ** power
  value = jnp.where(step >= end_step, final_sparsity, value)
  return jnp.where(step < begin_step, 0.0, value)


def is_update_step(step, *, begin_step: int, end_step: int, frequency: int):
  """True on steps where gradual pruning recomputes masks: begin, every `frequency`, end."""
  step = jnp.asarray(step)
  on_grid = (step - begin_step) % frequency == 0
  return ((step >= begin_step) & (step <= end_step) & on_grid) | (step == end_step)
