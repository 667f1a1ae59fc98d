import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigmodel_jax import optim
from configs import default


def _opt_config(**overrides):
  config = default.get_config().optimizer
  for key, value in overrides.items():
    config[key] = value
  return config


def _minimise(tx, steps=200):
  params = {'w': jnp.array([[3.0, -2.0]]), 'b': jnp.array([1.0])}
  loss = lambda p: jnp.sum(p['w'] ** 2) + jnp.sum((p['b'] - 0.5) ** 2)
  state = tx.init(params)
  start = loss(params)
  for _ in range(steps):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  return float(start), float(loss(params))


@pytest.mark.parametrize('name,lr', [('sgd', 0.05), ('adam', 0.05), ('adamw', 0.05)])
def test_each_optimizer_minimises_a_quadratic(name, lr):
  tx, _ = optim.create_optimizer(_opt_config(name=name, learning_rate=lr), 10, 200)
  start, end = _minimise(tx)
  assert end < 0.01 * start


def test_nesterov_and_clipping_build_and_work():
  config = _opt_config(name='sgd', learning_rate=0.05, nesterov=True, grad_clip_norm=1.0)
  tx, _ = optim.create_optimizer(config, 10, 200)
  start, end = _minimise(tx, steps=400)
  assert end < 0.01 * start


def test_warmup_cosine_schedule_values():
  config = _opt_config(schedule='warmup_cosine', learning_rate=1.0, warmup_epochs=1.0,
                       end_learning_rate_factor=0.1)
  _, schedule = optim.create_optimizer(config, steps_per_epoch=10, total_steps=100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(100)) == pytest.approx(0.1)


def test_step_schedule_decays_every_n_epochs():
  config = _opt_config(schedule='step', learning_rate=1.0, decay_every_epochs=2.0, decay_factor=0.5)
  _, schedule = optim.create_optimizer(config, steps_per_epoch=10, total_steps=100)
  assert [float(schedule(s)) for s in (0, 19, 20, 40)] == [1.0, 1.0, 0.5, 0.25]


def test_constant_schedule():
  _, schedule = optim.create_optimizer(_opt_config(learning_rate=3e-4), 10, 100)
  assert float(schedule(0)) == float(schedule(99)) == pytest.approx(3e-4)


@pytest.mark.parametrize('name', ['sgd', 'adam', 'adamw'])
def test_weight_decay_shrinks_kernels_but_not_biases(name):
  config = _opt_config(name=name, learning_rate=0.1, weight_decay=0.5, momentum=0.0)
  tx, _ = optim.create_optimizer(config, 10, 100)
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert np.all(np.asarray(updates['kernel']) < 0)
  np.testing.assert_array_equal(updates['bias'], 0)
