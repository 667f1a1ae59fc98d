"""Losses and metrics as pure functions of logits [batch, classes] and int labels [batch]."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example: [batch]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def mse(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean squared error between raw outputs and one-hot targets, per example: [batch]."""
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return jnp.mean(jnp.square(logits - targets), axis=-1)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where the arg-max class equals the label, else 0.0: [batch]."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'cross_entropy': cross_entropy,
    'mse': mse,
}
