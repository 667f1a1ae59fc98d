"""SmolLM2-135M-Instruct: our Flax model against transformers on the same GGUF file.

    .venv/bin/python bench/pretrained_logits.py [--source smollm2] [--tokens 4096]

Loads the file twice - ours (`pretrained.load`) and transformers' own GGUF loader
(`AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`, float32) - and reports the max
absolute logit difference on a few prompts, the greedy continuation of each, and the perplexity
of both under `bigmodel_jax.perplexity`'s protocol (the first --tokens held-out tokens of Tiny
Shakespeare's test split, context 512, the same windows and weights on both sides), with the
seconds each took. Nothing here asserts a figure.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'bench'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from startup import machine  # noqa: E402

from bigmodel_jax import generate, logs, perplexity, pretrained  # noqa: E402
from bigmodel_jax.compress import pretrained_lm  # noqa: E402
from configs import smollm2_prune  # noqa: E402

PROMPTS = ('The capital of France is', 'Once upon a time, there was a',
           'def fibonacci(n):', 'ROMEO:\nBut soft, what light')


def _torch_perplexity(model, inputs, weights, batch_size):
  total = 0.0
  for i in range(0, len(inputs), batch_size):
    x = torch.tensor(inputs[i:i + batch_size], dtype=torch.long)
    with torch.no_grad():
      logp = torch.log_softmax(model(x).logits.float(), -1)
    targets = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], 1)
    nll = -logp.gather(-1, targets[..., None])[..., 0].numpy()
    total += float((nll * weights[i:i + batch_size]).sum())
  return float(np.exp(total / weights.sum()))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--source', default=pretrained.SMOLLM2)
  parser.add_argument('--tokens', type=int, default=16384, help='held-out tokens evaluated')
  parser.add_argument('--context', type=int, default=512)
  parser.add_argument('--out', default='', help='write the figures as JSON here')
  args = parser.parse_args()
  logs.say(json.dumps(machine()))
  start = time.perf_counter()
  pre = pretrained.load(args.source, max_len=args.context)
  ours_load = time.perf_counter() - start
  path = pretrained.resolve(args.source)
  start = time.perf_counter()
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  their_load = time.perf_counter() - start
  out = {'machine': machine(), 'load_s': {'ours': ours_load, 'transformers': their_load},
         'torch_threads': torch.get_num_threads(), 'prompts': {}}
  for prompt in PROMPTS:
    ids = [pre.tokenizer.encode(prompt)]
    ours = np.asarray(pre.model.apply({'params': pre.params}, jnp.asarray(ids)))
    with torch.no_grad():
      want = theirs(torch.tensor(ids)).logits.numpy()
    greedy = generate.sample(pre.model, pre.params, jnp.asarray(ids), 8,
                             rng=jax.random.PRNGKey(0), temperature=0.0)
    with torch.no_grad():
      their_greedy = theirs.generate(torch.tensor(ids), max_new_tokens=8, do_sample=False)
    out['prompts'][prompt] = {
        'max_abs_logit_diff': float(np.abs(ours - want).max()),
        'ours': pre.tokenizer.decode(np.asarray(greedy)[0, len(ids[0]):]),
        'transformers': pre.tokenizer.decode(their_greedy[0, len(ids[0]):].numpy())}
    logs.say(f'{prompt!r}: {out["prompts"][prompt]}')
  config = smollm2_prune.get_config()
  config.eval.num_tokens = args.tokens
  _, held_out = pretrained_lm._tokens(config, pre.tokenizer)
  start = time.perf_counter()
  ours_ppl = perplexity.evaluate(pre.model.apply, pre.params, held_out, context=args.context)
  ours_s = time.perf_counter() - start
  inputs, weights = perplexity.window_batches(held_out, args.context, args.context)
  start = time.perf_counter()
  their_ppl = _torch_perplexity(theirs, inputs, weights, 8)
  their_s = time.perf_counter() - start
  out['perplexity'] = {'ours': ours_ppl['perplexity'], 'transformers': their_ppl,
                       'relative_diff': ours_ppl['perplexity'] / their_ppl - 1,
                       'tokens': ours_ppl['tokens'], 'context': args.context,
                       'seconds': {'ours': ours_s, 'transformers': their_s}}
  logs.say(json.dumps(out['perplexity']))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
