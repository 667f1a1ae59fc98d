import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import models, train_state
from bigmodel_jax.models import common
from configs import default


def _init(module, shape=(2, 28, 28, 1)):
  return module.init(jax.random.PRNGKey(0), jnp.zeros(shape))['params']


def test_seed_mlp_has_the_seeds_parameter_count():
  model = models.create_model(default.get_config().model, num_outputs=10)
  params = _init(model)
  # 784*512+512 + 512*256+256 + 256*10+10
  assert train_state.param_count(params) == 535_818
  assert params['Dense_0']['kernel'].shape == (784, 512)
  assert params['Dense_2']['kernel'].shape == (256, 10)


def test_output_shape_and_flattening():
  model = models.MLP(hidden_sizes=(16, 8), num_outputs=3)
  params = _init(model)
  out = model.apply({'params': params}, jnp.ones((5, 28, 28, 1)))
  assert out.shape == (5, 3)
  flat = model.apply({'params': params}, jnp.ones((5, 784)))
  np.testing.assert_allclose(out, flat)


@pytest.mark.parametrize('activation', sorted(common.ACTIVATIONS))
def test_every_activation_runs(activation):
  model = models.MLP(hidden_sizes=(8,), num_outputs=2, activation=activation)
  out = model.apply({'params': _init(model)}, jnp.linspace(-1, 1, 2 * 784).reshape(2, 784))
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize('name', sorted(common.INITIALIZERS))
def test_every_initializer_gives_a_sensible_spread(name):
  model = models.MLP(hidden_sizes=(256,), num_outputs=10, kernel_init=name, init_scale=0.05)
  kernel = np.asarray(_init(model)['Dense_0']['kernel'])
  assert 1e-3 < kernel.std() < 0.2
  if name == 'uniform':
    assert np.abs(kernel).max() <= 0.05
  if name == 'normal':
    assert kernel.std() == pytest.approx(0.05, rel=0.05)
  if name == 'torch_default':
    assert np.abs(kernel).max() <= 1 / np.sqrt(784)


def test_dropout_only_in_training_and_keyed_by_rng():
  model = models.MLP(hidden_sizes=(64,), num_outputs=4, dropout_rate=0.5)
  params = _init(model)
  x = jnp.ones((3, 784))
  np.testing.assert_array_equal(model.apply({'params': params}, x),
                                model.apply({'params': params}, x))
  a = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  b = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  assert not np.allclose(a, b)
