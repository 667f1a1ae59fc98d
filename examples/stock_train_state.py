"""Pruning with flax's own `flax.training.train_state.TrainState`, unchanged (seconds on a CPU).

    python examples/stock_train_state.py

`pruning.masked(tx, masks=...)` keeps the masks in the optimizer state, so the stock
`state.apply_gradients(grads=grads)` trains the pruned model and pruned weights stay exactly
zero. The data are generated (a random teacher network labels Gaussian inputs).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from bigmodel_jax import pruning


class Mlp(nn.Module):
  """A model of the user's own: no `train` argument, plain Linen."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(64)(x))
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(4)(x)


def make_data(n=2048, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 16)).astype(np.float32)
  w1, w2 = rng.normal(size=(16, 32)), rng.normal(size=(32, 4))
  return jnp.asarray(x), jnp.asarray(np.argmax(np.tanh(x @ w1) @ w2, axis=1))


@jax.jit
def train_step(state, x, y):
  def loss_fn(params):
    logits = state.apply_fn({'params': params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))


def accuracy(state, x, y):
  return float(jnp.mean(jnp.argmax(state.apply_fn({'params': state.params}, x), axis=1) == y))


def train(state, x, y, steps, batch=128):
  for step in range(steps):
    i = (step * batch) % (len(x) - batch)
    state = train_step(state, x[i:i + batch], y[i:i + batch])
  return state


def main(sparsity: float = 0.8, steps: int = 300) -> dict:
  """Runs the example; returns its figures (the test checks them)."""
  x, y = make_data()
  (x_train, y_train), (x_test, y_test) = (x[:1536], y[:1536]), (x[1536:], y[1536:])
  model = Mlp()
  params = model.init(jax.random.PRNGKey(0), x[:1])['params']
  tx = pruning.masked(optax.adamw(3e-3, weight_decay=1e-4), masks=pruning.ones_like(params))
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  state = train(state, x_train, y_train, steps)
  dense = accuracy(state, x_test, y_test)

  prunable = pruning.prunable_tree(state.params)
  masks = pruning.masks_from_scores(pruning.magnitude(state.params), sparsity, prunable=prunable)
  # New masks: zero the weights, their moments, and store the masks in the optimizer state.
  state = state.replace(params=pruning.apply_masks(state.params, masks),
                        opt_state=pruning.prune_opt_state(state.tx, state.opt_state, masks))
  pruned = accuracy(state, x_test, y_test)
  state = train(state, x_train, y_train, steps)
  retrained = accuracy(state, x_test, y_test)
  revived = sum(int(jnp.sum((w != 0) & ~m)) for w, m in
                zip(jax.tree.leaves(state.params), jax.tree.leaves(masks), strict=True))
  stats = pruning.sparsity_stats(state.params, masks, prunable)
  print(f'dense {dense:.3f}  pruned {pruned:.3f}  retrained {retrained:.3f}  '
        f'sparsity {stats["sparsity"]:.3f}  pruned weights not zero: {revived}')
  return {'dense': dense, 'pruned': pruned, 'retrained': retrained, 'stats': stats,
          'revived': revived}


if __name__ == '__main__':
  main()
