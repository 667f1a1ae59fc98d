"""Wanda and SparseGPT on your own Flax model: a tiny vision transformer, not one of the library's.

    python examples/oneshot_custom_model.py [--steps 200] [--sparsity 0.5]

The model is plain Linen: a `nn.Conv` stem cuts 16x16 images into 4x4 patches, two blocks of
`nn.MultiHeadDotProductAttention` (whose projections are `nn.DenseGeneral`, kernels
[embed, heads, head_dim] and [heads, head_dim, embed]) and a `nn.Dense` MLP, and a `nn.Dense`
head. It is trained for a few seconds on synthetic images (class c lights a block at a class'
place), then pruned one-shot at `--sparsity` with only `pruning.oneshot.prune` and
`pruning.prunable_tree`: calibration batches are dicts from a generator (`input_key='image'`),
every kernel but the head's is pruned, and the layers are calibrated block by block
(`group_by=1`: the top-level modules stem, block_0, block_1). Prints accuracy and loss before
and after, and the exact sparsity of the pruned layers.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bigmodel_jax import pruning  # noqa: E402

CLASSES, SIZE = 4, 16


class Block(nn.Module):
  embed: int
  heads: int

  @nn.compact
  def __call__(self, x):
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name='attn')(nn.LayerNorm()(x))
    h = nn.gelu(nn.Dense(self.embed, name='fc')(nn.LayerNorm()(x)))  # Width 1x: compiles less.
    return x + nn.Dense(self.embed, name='proj')(h)


class TinyViT(nn.Module):
  embed: int = 32
  heads: int = 4
  depth: int = 2

  @nn.compact
  def __call__(self, images):  # [batch, 16, 16, 1]
    x = nn.Conv(self.embed, (4, 4), strides=4, name='stem')(images)  # [batch, 4, 4, embed]
    x = x.reshape(x.shape[0], -1, self.embed)
    x = x + self.param('position', nn.initializers.normal(0.02), x.shape[1:])
    for i in range(self.depth):
      x = Block(self.embed, self.heads, name=f'block_{i}')(x)
    return nn.Dense(CLASSES, name='head')(jnp.mean(nn.LayerNorm()(x), axis=1))


def images(num: int, seed: int) -> dict[str, np.ndarray]:
  """Class c lights a 4x4 block at one of four places, under noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, CLASSES, num)
  x = rng.normal(0, 0.3, (num, SIZE, SIZE, 1)).astype(np.float32)
  for i, c in enumerate(labels):
    r, k = divmod(int(c), 2)
    x[i, 2 + 8 * r:6 + 8 * r, 2 + 8 * k:6 + 8 * k] += 1.0
  return {'image': x, 'label': labels.astype(np.int32)}


def train(model, steps: int, seed: int):
  data = images(2048, seed)
  params = model.init(jax.random.PRNGKey(seed), data['image'][:1])['params']
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({'params': p}, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  for i in range(steps):
    s = (i * 64) % (2048 - 64)
    params, opt_state = step(params, opt_state, data['image'][s:s + 64], data['label'][s:s + 64])
  return params


def evaluate(model, params, data) -> tuple[float, float]:
  logits = model.apply({'params': params}, data['image'])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, data['label']).mean()
  return float(jnp.mean(jnp.argmax(logits, -1) == data['label'])), float(loss)


def run(steps: int = 200, sparsity: float = 0.5, seed: int = 0) -> dict:
  """Trains, prunes with Wanda and SparseGPT; {method: {accuracy, loss, sparsity, ...}}."""
  model = TinyViT()
  params = train(model, steps, seed)
  held_out = images(512, seed + 1)
  prunable = pruning.prunable_tree(params, include=('*kernel',), exclude=('head/kernel',))
  results = {'dense': dict(zip(('accuracy', 'loss'), evaluate(model, params, held_out),
                                strict=True))}
  for method in ('wanda', 'sparsegpt'):
    calibration = ({'image': b['image'][i:i + 32]} for b in [images(128, seed + 2)]
                   for i in range(0, 128, 32))  # A generator of dict batches.
    new, masks = pruning.oneshot.prune(model.apply, params, calibration, method=method,
                                       prunable=prunable, sparsity=sparsity, input_key='image',
                                       group_by=1, log=print)
    stats = pruning.sparsity_stats(new, masks, prunable)
    accuracy, loss = evaluate(model, new, held_out)
    results[method] = {'accuracy': accuracy, 'loss': loss, 'sparsity': stats['sparsity'],
                       'layers': len(stats['layers']), 'params': new, 'masks': masks}
  return results


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=200, help='training steps (batch 64)')
  parser.add_argument('--sparsity', type=float, default=0.5, help='one-shot sparsity')
  args = parser.parse_args(argv)
  results = run(args.steps, args.sparsity)
  print('\n| model | held-out accuracy | loss | sparsity of pruned layers |')
  print('|---|---|---|---|')
  for name, r in results.items():
    pruned = f"{r['sparsity']:.4f} ({r['layers']} layers)" if 'sparsity' in r else '-'
    print(f"| {name} | {r['accuracy']:.3f} | {r['loss']:.3f} | {pruned} |")


if __name__ == '__main__':
  main(sys.argv[1:])
