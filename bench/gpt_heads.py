"""Structured head pruning of a trained Tiny Shakespeare GPT: loss and speed of the shrunk model.

    .venv/bin/python bench/gpt_heads.py --dense_dir runs/shakespeare_gpt [--sparsity 0.5]

Restores the latest checkpoint of a finished `configs/shakespeare_gpt.py` run, scores every head
on 128 training windows (`pruning.heads.head_scores`), removes the lowest-scored fraction per
block (`shrink_heads`), and reports the test loss (nats per character) of the dense, the
head-pruned and `--draws` random-heads controls (mean, min and max of their losses), plus forward
latency at batch 1 and 12 (dense vs shrunk).
No retraining. Nothing here asserts a speed.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bigmodel_jax import checkpoint, data, losses, models, timing  # noqa: E402
from bigmodel_jax.pruning import heads  # noqa: E402
from configs import shakespeare_gpt  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dense_dir', required=True)
  parser.add_argument('--sparsity', type=float, default=0.5)
  parser.add_argument('--draws', type=int, default=10, help='random-heads controls')
  args = parser.parse_args()
  config = shakespeare_gpt.get_config()
  datasets = data.load_datasets(config.data)
  model = models.create_model(config.model, datasets.num_classes)
  ckpt = checkpoint.Checkpointer(os.path.join(args.dense_dir, 'checkpoints'), async_save=False)
  params = ckpt.restore_arrays(ckpt.latest_step())['params']
  ckpt.close()
  head_dim = model.embed_dim // model.num_heads
  rng = np.random.default_rng(0)
  calibration = [datasets.train.inputs[rng.integers(0, len(datasets.train), 16)]
                 for _ in range(8)]
  test = datasets.test

  def test_loss(model, params):
    loss = jax.jit(lambda p, x, y: jnp.mean(losses.cross_entropy(
        model.apply({'params': p}, x), y)))
    return float(np.mean([loss(params, test.inputs[i:i + 96], test.targets[i:i + 96])
                          for i in range(0, len(test) - 95, 96)]))

  scores = heads.head_scores(model.apply, params, calibration, head_dim=head_dim)
  keep = heads.keep_heads(scores, args.sparsity)
  small, small_params = heads.shrink_heads(model, params, keep)
  controls = [heads.shrink_heads(model, params, {k: rng.permutation(v) for k, v in keep.items()})
              for _ in range(args.draws)]
  c_model, c_params = controls[0]
  print('head scores:', {k: np.round(v, 3).tolist() for k, v in scores.items()})
  print(f'kept heads per block: {small.heads_per_layer}')
  print('| model | params | test loss | forward ms b1 | forward ms b12 |\n|---|---|---|---|---|')
  for name, m, p in (('dense', model, params), (f'{args.sparsity:.0%} heads removed', small,
                                                small_params),
                     ('random heads removed (control)', c_model, c_params)):
    fwd = jax.jit(lambda p, x, m=m: m.apply({'params': p}, x))
    ms = [timing.median_ms(fwd, p, jnp.asarray(test.inputs[:b])) for b in (1, 12)]
    count = sum(x.size for x in jax.tree.leaves(p))
    loss = f'{test_loss(m, p):.4f}'
    if m is c_model:
      draws = [test_loss(cm, cp) for cm, cp in controls]
      loss = (f'{np.mean(draws):.4f} (mean of {len(draws)} draws; {min(draws):.4f} .. '
              f'{max(draws):.4f})')
    print(f'| {name} | {count:,} | {loss} | {ms[0]:.2f} | {ms[1]:.2f} |')


if __name__ == '__main__':
  main()
