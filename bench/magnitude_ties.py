"""Magnitude N:M on SmolLM2-135M: our masks against the reference's rule, and what ties decide.

    .venv/bin/python bench/magnitude_ties.py --n 2 --m 4 [--no_perplexity] [--random_ties]

The Wanda paper's reference code (locuslab/wanda, `prune_magnitude` with prune_n / prune_m)
prunes in every group of m consecutive inputs of a row the n smallest |W| by `torch.topk(...,
largest=False)`; ours (`pruning.selection.nm_mask`) keeps the m - n largest and, between equal
|W|, the earlier entry. SmolLM2's weights are 4-bit (Q4_1), so equal magnitudes at the
keep/prune boundary are frequent. This prints how many entries the two rules' masks differ in,
how many groups have such a tie, and how many groups without one differ; then (unless
`--no_perplexity`) the perplexity of our model (`configs/smollm2_prune.py`'s protocol: the
first 16,384 test tokens of Tiny Shakespeare, context and stride 512) with each rule's masks
(`--random_ties`: also with ties broken by a seeded random key).
The reference's rule is re-implemented here in torch (the same call as its prune.py); its
whole pass is `bench/oneshot_reference.py`. Nothing here asserts a figure.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.startup import describe, machine  # noqa: E402
from bigmodel_jax import perplexity, pretrained  # noqa: E402
from bigmodel_jax.compress import pretrained_lm  # noqa: E402
from bigmodel_jax.pruning import selection  # noqa: E402
from configs import smollm2_prune  # noqa: E402


def reference_pruned(weight: np.ndarray, n: int, m: int) -> np.ndarray:
  """The reference's N:M magnitude mask of a torch-layout weight [out, in]: True = pruned."""
  import torch
  magnitude = torch.from_numpy(np.abs(weight))
  pruned = torch.zeros_like(magnitude, dtype=torch.bool)
  for start in range(0, magnitude.shape[1], m):
    smallest = torch.topk(magnitude[:, start:start + m], n, dim=1, largest=False)[1]
    pruned.scatter_(1, start + smallest, True)
  return pruned.numpy()


def random_tie_pruned(weight: np.ndarray, n: int, m: int, rng) -> np.ndarray:
  """The n smallest |W| of each group pruned, ties broken by a random key: True = pruned."""
  groups = np.abs(weight).reshape(weight.shape[0], -1, m)
  order = np.lexsort((rng.random(groups.shape), groups), axis=-1)  # By |W|, then the key.
  pruned = np.zeros(groups.shape, bool)
  np.put_along_axis(pruned, order[..., :n], True, -1)
  return pruned.reshape(weight.shape)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--n', type=int, default=2, help='pruned entries per group')
  parser.add_argument('--m', type=int, default=4, help='group size')
  parser.add_argument('--no_perplexity', action='store_true', help='masks only')
  parser.add_argument('--random_ties', action='store_true',
                      help='also evaluate masks whose ties are broken by a seeded random key')
  args = parser.parse_args()
  import torch
  torch.set_num_threads(1)
  print(describe(machine()), flush=True)
  hf_config, state, tokenizer = pretrained.read('smollm2')
  names = [k for k in state if '.layers.' in k and k.endswith('proj.weight')]
  states = {'reference masks': dict(state), 'our masks': dict(state)}
  if args.random_ties:
    states['random-tie masks'] = dict(state)
  rng = np.random.default_rng(0)
  keep = jax.jit(lambda scores: selection.nm_mask(scores, args.m - args.n, args.m))
  differ = total = tied_groups = differ_untied = 0
  for name in names:
    weight = np.asarray(state[name], np.float32)
    theirs_pruned = reference_pruned(weight, args.n, args.m)
    ours_kept = np.asarray(keep(jnp.asarray(np.abs(weight).T))).T  # Ours groups along [in].
    different = theirs_pruned == ours_kept  # Pruned by one rule, kept by the other.
    differ, total = differ + int(different.sum()), total + different.size
    groups = np.sort(np.abs(weight).reshape(weight.shape[0], -1, args.m), -1)
    tie = groups[..., args.n - 1] == groups[..., args.n]  # Equal across the boundary.
    tied_groups += int(tie.sum())
    differ_untied += int((different.reshape(groups.shape).any(-1) & ~tie).sum())
    states['reference masks'][name] = np.where(theirs_pruned, 0, weight)
    states['our masks'][name] = np.where(ours_kept, weight, 0)
    if args.random_ties:
      states['random-tie masks'][name] = np.where(random_tie_pruned(weight, args.n, args.m, rng),
                                                  0, weight)
  print(f'{args.n}:{args.m} magnitude over {len(names)} matrices: masks differ in {differ:,} of '
        f'{total:,} entries ({differ / total:.2%}); groups with a tie across the boundary '
        f'{tied_groups:,} of {total // args.m:,} ({tied_groups / (total / args.m):.1%}); '
        f'differing groups without a tie: {differ_untied}', flush=True)
  if args.no_perplexity:
    return
  _, tokens = pretrained_lm._tokens(smollm2_prune.get_config(), tokenizer)  # noqa: SLF001
  model = pretrained.convert.model_from_config(hf_config, max_len=512)
  for label, masked in states.items():
    start = time.perf_counter()
    result = perplexity.evaluate(model.apply, pretrained.convert.params_from_state(
        hf_config, masked), tokens, context=512, stride=512, batch_size=8)
    print(f"our model with the {label}: perplexity {result['perplexity']:.2f} on "
          f"{result['tokens']} tokens ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == '__main__':
  main()
