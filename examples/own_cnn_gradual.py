"""Your own Flax CNN, pruned gradually while it trains, with the library's pure functions.

    python examples/own_cnn_gradual.py

Generated data (16x16 images, 4 classes: a bright square in one quadrant), a small Linen CNN
defined here, and the library's pieces: `TrainState` with masks, the masked optimizer, the
gradual-pruning hook (`pruning.gradual.mask_updater`: Zhu & Gupta's cubic ramp, masks
recomputed inside the compiled step) and `train.train_step`. Runs in seconds on a CPU; prints
the sparsity reached and the test accuracy.

The library's train step calls the model as `apply(variables, inputs, train=..., rngs=...)`,
so the module takes a `train` argument (here unused: no dropout).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigmodel_jax import pruning, train
from bigmodel_jax.pruning import gradual
from bigmodel_jax.train_state import TrainState


class SmallCNN(nn.Module):
  """Two 3x3 convolutions and a linear classifier."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def make_data(num: int, seed: int) -> dict[str, np.ndarray]:
  """Noise images with a bright 6x6 square in the quadrant of the class."""
  rng = np.random.default_rng(seed)
  targets = rng.integers(0, 4, num).astype(np.int32)
  inputs = rng.normal(0.0, 0.3, (num, 16, 16, 1)).astype(np.float32)
  for i, c in enumerate(targets):
    r, k = divmod(int(c), 2)
    inputs[i, 8 * r + 1:8 * r + 7, 8 * k + 1:8 * k + 7] += 1.0
  return {'inputs': inputs, 'targets': targets}


def main(steps: int = 200, sparsity: float = 0.8, batch_size: int = 32) -> dict[str, float]:
  """Trains with the sparsity ramping from 0 to `sparsity` over the first 60% of `steps`."""
  model = SmallCNN()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))['params']
  tx = pruning.masked(optax.adam(3e-3))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(1), masks=pruning.ones_like(params),
                     apply_fn=model.apply, tx=tx)
  prunable = pruning.prunable_tree(params)  # Conv and Dense kernels; never biases.
  hook = gradual.mask_updater(final_sparsity=sparsity, begin_step=0,
                              end_step=int(0.6 * steps), frequency=10, prunable=prunable)
  step = jax.jit(lambda s, b: train.train_step(s, b, before_step=hook))
  data, test = make_data(2048, seed=0), make_data(512, seed=1)
  rng = np.random.default_rng(2)
  for _ in range(steps):
    idx = rng.integers(0, len(data['targets']), batch_size)
    state, _ = step(state, {k: jnp.asarray(v[idx]) for k, v in data.items()})
  logits = model.apply({'params': state.params}, test['inputs'])
  accuracy = float(np.mean(np.argmax(logits, -1) == test['targets']))
  stats = pruning.sparsity_stats(state.params, state.masks, prunable)
  print(f'SmallCNN after {steps} steps: sparsity {stats["sparsity"]:.4f} of its kernels, '
        f'test accuracy {accuracy:.4f}')
  for name, layer in stats['layers'].items():
    print(f'  {name}: {layer["sparsity"]:.4f} of {layer["size"]}')
  return {'sparsity': stats['sparsity'], 'test_accuracy': accuracy}


if __name__ == '__main__':
  main()
