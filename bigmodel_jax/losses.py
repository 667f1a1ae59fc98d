"""Losses and metrics as pure functions of logits [batch, classes] and int labels [batch]."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example: [batch]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """Cross-entropy against label-smoothed targets, per example: [batch].

  The target puts 1 - smoothing + smoothing / classes on the label and smoothing / classes on
  every other class (Szegedy et al. 2016): -(1 - a) log p_label - a mean_c log p_c.
  """
  log_p = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
  return (1 - smoothing) * nll - smoothing * jnp.mean(log_p, axis=-1)


def mse(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean squared error between raw outputs and one-hot targets, per example: [batch]."""
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return jnp.mean(jnp.square(logits - targets), axis=-1)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where the arg-max class equals the label, else 0.0: [batch]."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def train_loss(name: str, label_smoothing: float = 0.0) -> Callable[[jax.Array, jax.Array],
                                                                   jax.Array]:
  """The loss to train on: `LOSSES[name]`, label-smoothed when `label_smoothing` > 0.

  Evaluation keeps the plain loss, so that eval losses compare across runs.
  """
  if label_smoothing == 0:
    return LOSSES[name]
  if name != 'cross_entropy':
    raise ValueError(f'Label smoothing applies to the cross_entropy loss, not to {name!r}.')
  return functools.partial(smoothed_cross_entropy, smoothing=label_smoothing)


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'cross_entropy': cross_entropy,
    'mse': mse,
}
