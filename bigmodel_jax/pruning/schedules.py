"""Sparsity schedules: how sparse the model should be at a round or a step."""

import jax.numpy as jnp

from bigmodel_jax.errors import ConfigError

SCHEDULES = ('one_shot', 'iterative', 'gradual')


def iterative_sparsities(target: float, rounds: int) -> list[float]:
  """Sparsity after each of `rounds` prune-retrain rounds, pruning the same fraction of the
  remaining weights every round (the lottery-ticket procedure): 1 - (1 - target)^(r / rounds)."""
  if not isinstance(rounds, int) or rounds < 1:
    raise ConfigError(f'prune.rounds={rounds!r} is invalid: it must be a positive integer.')
  return [1 - (1 - target) ** (r / rounds) for r in range(1, rounds + 1)]


def polynomial_sparsity(step, *, final_sparsity: float, begin_step: int, end_step: int,
                        initial_sparsity: float = 0.0, frequency: int = 100, power: int = 3):
  """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3.

  The sparsity rises from `initial_sparsity` at `begin_step` to `final_sparsity` at `end_step`
  and stays there; it changes only on steps where (step - begin_step) % frequency == 0 (the
  steps on which masks are recomputed), so it is piecewise constant. Works on traced steps.
  """
  if end_step <= begin_step:
    raise ConfigError(f'Gradual pruning needs end_step ({end_step}) > begin_step ({begin_step}).')
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
