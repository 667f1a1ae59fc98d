"""Multi-layer perceptron: the seed's 784-512-256-10 network and its variants."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigmodel_jax.models import common


class MLP(nn.Module):
  """Dense layers with an activation (and optional dropout) between them.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    num_outputs: width of the output layer (number of classes).
    activation: key of `common.ACTIVATIONS`.
    kernel_init: key of `common.INITIALIZERS`.
    init_scale: scale for the 'normal' and 'uniform' initializers.
    dropout_rate: dropout probability after each hidden activation.
  """
  hidden_sizes: Sequence[int] = (512, 256)
  num_outputs: int = 10
  activation: str = 'relu'
  kernel_init: str = 'lecun_normal'
  init_scale: float = 0.01
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps inputs [batch, ...] (flattened here) to logits [batch, num_outputs]."""
    act = common.ACTIVATIONS[self.activation]
    init = common.INITIALIZERS[self.kernel_init](self.init_scale)
    x = jnp.reshape(x, (x.shape[0], -1))
    for width in self.hidden_sizes:
      x = act(nn.Dense(width, kernel_init=init)(x))
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, kernel_init=init)(x)
