import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def test_smoothed_cross_entropy_matches_optax_smoothed_targets():
  logits = jnp.array([[2.0, 1.0, 0.1], [0.0, 0.0, 5.0]])
  labels = jnp.array([0, 1])
  targets = optax.smooth_labels(jax.nn.one_hot(labels, 3), 0.1)
  np.testing.assert_allclose(losses.smoothed_cross_entropy(logits, labels, 0.1),
                             optax.softmax_cross_entropy(logits, targets), rtol=1e-6)
  # Sequence logits [batch, time, vocab] work the same way.
  np.testing.assert_allclose(losses.smoothed_cross_entropy(logits[None], labels[None], 0.1),
                             optax.softmax_cross_entropy(logits, targets)[None], rtol=1e-6)


def test_train_loss_smooths_cross_entropy_only():
  logits, labels = jnp.array([[2.0, 1.0, 0.1]]), jnp.array([2])
  assert losses.train_loss('mse') is losses.mse
  assert losses.train_loss('cross_entropy', 0.0) is losses.cross_entropy
  smoothed = losses.train_loss('cross_entropy', 0.2)(logits, labels)
  assert float(smoothed[0]) < float(losses.cross_entropy(logits, labels)[0])  # Wrong label.
  with pytest.raises(ValueError, match='cross_entropy'):
    losses.train_loss('mse', 0.1)
