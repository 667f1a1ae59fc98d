import jax.numpy as jnp
import numpy as np

from bigmodel_jax import losses


def test_cross_entropy_matches_the_formula():
  logits = jnp.array([[2.0, 1.0, 0.1], [0.0, 0.0, 5.0]])
  labels = jnp.array([0, 1])
  expected = -np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))[[0, 1], [0, 1]]
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_mse_uses_one_hot_targets():
  logits = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
  labels = jnp.array([0, 2])
  np.testing.assert_allclose(losses.mse(logits, labels), [0.0, (0.25 + 0.25 + 1.0) / 3])


def test_correct_counts_argmax_hits():
  logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
  np.testing.assert_array_equal(losses.correct(logits, jnp.array([1, 1, 1])), [1, 0, 1])


def test_registry_names():
  assert set(losses.LOSSES) == {'cross_entropy', 'mse'}
