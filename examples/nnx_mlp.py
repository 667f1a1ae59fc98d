"""A Flax NNX model pruned with bigmodel_jax: train, prune, retrain, export (seconds on a CPU).

    python examples/nnx_mlp.py

The data are generated (a random teacher network labels Gaussian inputs), so it needs no
download. The pruning calls are the library's pure functions on `nnx.State`s; the optimizer is
a stock `nnx.Optimizer` whose transformation carries the masks.
"""

import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bigmodel_jax import pruning


class Mlp(nnx.Module):
  def __init__(self, rngs: nnx.Rngs, sizes=(16, 64, 64, 4)):
    pairs = zip(sizes[:-1], sizes[1:], strict=True)
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairs])

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


def make_data(n=2048, seed=0):
  """Inputs [n, 16] and labels [n] from a random teacher network."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 16)).astype(np.float32)
  w1, w2 = rng.normal(size=(16, 32)), rng.normal(size=(32, 4))
  y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
  return jnp.asarray(x), jnp.asarray(y)


def loss_fn(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


def accuracy(model, x, y):
  return float(jnp.mean(jnp.argmax(model(x), axis=1) == y))


def train(model, optimizer, x, y, steps, batch=128):
  for step in range(steps):
    i = (step * batch) % (len(x) - batch)
    train_step(model, optimizer, x[i:i + batch], y[i:i + batch])


def main(workdir: str, sparsity: float = 0.8, steps: int = 300) -> dict:
  """Runs the example; returns its figures (the test checks them)."""
  x, y = make_data()
  (x_train, y_train), (x_test, y_test) = (x[:1536], y[:1536]), (x[1536:], y[1536:])
  model = Mlp(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  # The optimizer carries the masks; all True while the model is dense.
  tx = pruning.masked(optax.adam(3e-3), masks=pruning.ones_like(params))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  train(model, optimizer, x_train, y_train, steps)
  dense = accuracy(model, x_test, y_test)

  # Prune: global magnitude over the kernels ('*kernel' matches NNX paths such as
  # 'layers/0/kernel'), then zero the pruned weights and their Adam moments.
  params = nnx.state(model, nnx.Param)
  prunable = pruning.prunable_tree(params)
  masks = pruning.masks_from_scores(pruning.magnitude(params), sparsity, prunable=prunable)
  nnx.update(model, pruning.apply_masks(params, masks))
  pruning.prune_nnx_optimizer(optimizer, masks)
  pruned = accuracy(model, x_test, y_test)

  train(model, optimizer, x_train, y_train, steps)  # Retrain: pruned weights stay 0.0.
  retrained = accuracy(model, x_test, y_test)
  stats = pruning.sparsity_stats(nnx.state(model, nnx.Param), masks, prunable)

  path = f'{workdir}/nnx_mlp.npz'
  sizes = pruning.save_compact(path, nnx.state(model, nnx.Param), masks, prunable)
  restored = Mlp(nnx.Rngs(1))
  loaded, _ = pruning.load_compact(path, like=nnx.state(restored, nnx.Param))
  nnx.update(restored, loaded)
  equal = bool(jnp.array_equal(restored(x_test), model(x_test)))
  print(f'dense {dense:.3f}  pruned {pruned:.3f}  retrained {retrained:.3f}  '
        f'sparsity {stats["sparsity"]:.3f}  file {sizes["file_bytes"]} B '
        f'(dense float32 {sizes["dense_float32_bytes"]} B)  round trip equal: {equal}')
  return {'dense': dense, 'pruned': pruned, 'retrained': retrained, 'stats': stats,
          'sizes': sizes, 'round_trip_equal': equal}


if __name__ == '__main__':
  with tempfile.TemporaryDirectory() as directory:
    main(directory if len(sys.argv) < 2 else sys.argv[1])
