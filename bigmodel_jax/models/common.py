"""Activation and initializer registries shared by all models."""

import math
from collections.abc import Callable

import flax.linen as nn
import jax

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'sigmoid': nn.sigmoid,
    'tanh': nn.tanh,
    'gelu': nn.gelu,
    'silu': nn.silu,
    'leaky_relu': nn.leaky_relu,
    'elu': nn.elu,
}


def _torch_default(key, shape, dtype=jax.numpy.float32):
  # PyTorch's nn.Linear default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


# name -> (init_scale -> initializer). Kernels are [fan_in, fan_out] as in flax.linen.Dense.
INITIALIZERS: dict[str, Callable[[float], nn.initializers.Initializer]] = {
    'lecun_normal': lambda scale: nn.initializers.lecun_normal(),
    'he_normal': lambda scale: nn.initializers.he_normal(),
    'he_uniform': lambda scale: nn.initializers.he_uniform(),
    'xavier_normal': lambda scale: nn.initializers.xavier_normal(),
    'xavier_uniform': lambda scale: nn.initializers.xavier_uniform(),
    'normal': lambda scale: nn.initializers.normal(stddev=scale),
    'uniform': lambda scale: (
        lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(
            key, shape, dtype, -scale, scale)),
    'torch_default': lambda scale: _torch_default,
}
