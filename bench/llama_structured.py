"""Structured compression of a SmolLM2-135M-shaped Llama: perplexity and forward latency vs dense.

    .venv/bin/python bench/llama_structured.py [--rounds 3] [--decode_steps 4] [--random]

Model: SmolLM2-135M-Instruct from `pretrained.load('smollm2')` when that works (calibration and
perplexity then on this repository's README and docs as text), otherwise the same shape with
random weights (vocab 49152, 30 blocks, width 576, 9 query / 3 key-value heads, SwiGLU 1536,
tied embeddings; perplexity then only shows that nothing broke). Scores come from 4 x 128
calibration tokens (`llama_structured.calibration_scores`); four models follow, no retraining:
  dense;  mlp -25%: 25% of the SwiGLU units of every block removed;
  kv -1/3: 1 of the 3 key/value groups of every block removed with its 3 query heads (33% of
  heads);  both.
Beside the times, what XLA counts for the compiled calls: GFLOP of the batch-8 prompt and MB
accessed by a batch-1 decode step (the speed-ups the shrink allows on paper). Latency, each a
compiled call (compiled ahead of time, two at a time, before any timing):
  prompt b1 / b8: the full forward of [batch, 256] tokens, all logits;
  decode b1 / b8: one token per step with the KV cache after a 256-token context (cache length
  320), ms per step, `--decode_steps` steps per figure.
All 16 figures are taken once a round, in alternating order, `--rounds` rounds. Each figure is
wall time (the latency) and the process's CPU time (all its threads). The table gives median
wall times and two speed-ups, each the median of the per-round ratios dense / variant (paired:
the machine's speed drifts between rounds): of wall time and of CPU time, which leaves out time
spent waiting for a core and is the steadier figure of the work saved on a shared machine.
About 15 minutes on 2 cores shared with other jobs (load 7-11: ~3 of them compiling, the rest
timing); the persistent compilation cache is on (`logs.use_compilation_cache`).
Writes bench/out/llama_structured.json. Nothing here asserts a speed.
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.startup import describe, machine  # noqa: E402
from bigmodel_jax import logs, pretrained  # noqa: E402
from bigmodel_jax.compress import latency  # noqa: E402
from bigmodel_jax.errors import ConfigError  # noqa: E402
from bigmodel_jax.models import Llama  # noqa: E402
from bigmodel_jax.pruning import llama_structured as ls  # noqa: E402
from bigmodel_jax.tree import path_str  # noqa: E402

PROMPT, MAX_LEN, CALIBRATION = 256, 320, (4, 128)
BATCHES = (1, 8)
SMOLLM2_SHAPE = dict(vocab_size=49152, num_layers=30, embed_dim=576, num_heads=9, num_kv_heads=3,
                     mlp_dim=1536, rope_base=100000.0, max_len=MAX_LEN, tie_embeddings=True)


def random_params(model: Llama, seed: int = 0) -> dict:
  """N(0, 0.02) weights and unit norm scales, drawn by numpy (a jitted init of 135M is slow)."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))['params']))
  rng = np.random.default_rng(seed)
  draw = lambda path, s: jnp.asarray(
      np.ones(s.shape, np.float32) if path_str(path).endswith('scale')
      else 0.02 * rng.standard_normal(s.shape, np.float32))
  return jax.tree_util.tree_map_with_path(draw, shapes)


def load(use_random: bool):
  """(model, params, tokenizer or None, description)."""
  if not use_random:
    try:
      pre = pretrained.load(pretrained.SMOLLM2, max_len=MAX_LEN)
      return pre.model, pre.params, pre.tokenizer, f'{pretrained.SMOLLM2_FILE} (dequantized)'
    except (ConfigError, ImportError) as e:
      print(f"pretrained.load('smollm2') failed ({type(e).__name__}: {e}); random weights.")
  model = Llama(**SMOLLM2_SHAPE)
  return model, random_params(model), None, 'random N(0, 0.02) weights, SmolLM2-135M shape'


def tokens(tokenizer, vocab: int) -> tuple[np.ndarray, np.ndarray]:
  """(calibration [4, 128], evaluation [8, 256]) tokens: docs text, or random without a
  tokenizer; the two never overlap."""
  need = CALIBRATION[0] * CALIBRATION[1] + max(BATCHES) * PROMPT
  if tokenizer is None:
    ids = np.random.default_rng(1).integers(0, vocab, need)
  else:
    docs = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
    files = [os.path.join(REPO, 'README.md'), *docs]
    ids = np.asarray(tokenizer.encode('\n\n'.join(open(f).read() for f in files)))
    ids = np.tile(ids, -(-need // len(ids)))[:need]
  split = CALIBRATION[0] * CALIBRATION[1]
  return ids[:split].reshape(CALIBRATION), ids[split:].reshape(max(BATCHES), PROMPT)


def timers(models: dict, calls: dict, evals: np.ndarray, steps: int, nll: dict) -> dict:
  """{key: () -> (wall, CPU) seconds per call (prompt) or per step (decode)}; a variant's first
  batch-8 prompt also records its mean next-token loss in `nll`."""
  loss = jax.jit(lambda logits, x: -jnp.mean(jnp.take_along_axis(
      jax.nn.log_softmax(logits[:, :-1]), x[:, 1:, None], axis=-1)))
  out = {}
  for (name, kind, b), fn in calls.items():
    params, x = models[name][1], jnp.asarray(evals[:b])
    if kind == 'prompt':
      def run(fn=fn, params=params, x=x, name=name, b=b):
        start, cpu = time.perf_counter(), time.process_time()
        logits = jax.block_until_ready(fn(params, x))
        seconds = (time.perf_counter() - start, time.process_time() - cpu)
        if b == max(BATCHES) and name not in nll:
          nll[name] = float(loss(logits, x))
        return seconds
    else:
      def run(fn=fn, params=params, model=models[name][0], b=b):
        cache = jax.block_until_ready(latency.empty_cache(model, b, PROMPT))
        token = jnp.zeros((b, 1), jnp.int32)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
          cache, logits = fn(cache, params, token)
        jax.block_until_ready(logits)
        return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps
    out[name, kind, b] = run
  return out


def interleaved(timers: dict, rounds: int) -> dict:
  """Each timer once a round, the order reversed every other round: {key: [its figures]}."""
  times = {key: [] for key in timers}
  for r in range(rounds):
    for key in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
      times[key].append(timers[key]())
    print(f'  round {r + 1}/{rounds} done', flush=True)
  return times


def costs(calls: dict) -> dict:
  """{variant: (GFLOP of the batch-8 prompt, MB accessed by a batch-1 decode step)}, as XLA
  counts them: what the shrink saves on paper, to set beside the times."""
  out = {}
  for name in {key[0] for key in calls}:
    prompt = calls[name, 'prompt', max(BATCHES)].cost_analysis()
    decode = calls[name, 'decode', min(BATCHES)].cost_analysis()
    out[name] = prompt['flops'] / 1e9, decode['bytes accessed'] / 1e6
  return out


def table(models: dict, times: dict, nll: dict, cost: dict) -> list[str]:
  columns = [(kind, b) for kind in ('prompt', 'decode') for b in BATCHES]
  head = ' | '.join(f'{kind} b{b} ms{"/step" if kind == "decode" else ""}' for kind, b in columns)
  lines = [f'| model | params | kv heads x blocks | mlp units | perplexity | GFLOP prompt b8 | '
           f'MB/step decode b1 | {head} |', '|---' * (7 + len(columns)) + '|']
  for name, (model, params) in models.items():
    cells = []
    for kind, b in columns:
      ms = 1e3 * statistics.median(wall for wall, _ in times[name, kind, b])
      ratios = [statistics.median(d[j] / v[j] for d, v in zip(
          times['dense', kind, b], times[name, kind, b], strict=True)) for j in (0, 1)]
      cells.append(f'{ms:.0f}' if name == 'dense' else
                   f'{ms:.0f} ({ratios[0]:.2f}x; cpu {ratios[1]:.2f}x)')
    sizes = [model.layer_sizes(i) for i in range(model.num_layers)]
    count = sum(x.size for x in jax.tree.leaves(params))
    paper = [f'{c:.0f}' if name == 'dense' else f'{c:.0f} ({d / c:.2f}x)'
             for c, d in zip(cost[name], cost['dense'], strict=True)]
    lines.append(f'| {name} | {count / 1e6:.1f}M | {sizes[0][1]} x {model.num_layers} '
                 f'({sizes[0][0]} query) | {sizes[0][2]} | {np.exp(nll[name]):.1f} | '
                 f'{" | ".join(paper + cells)} |')
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--decode_steps', type=int, default=4, help='decode steps per figure')
  parser.add_argument('--random', action='store_true', help='random weights even if SmolLM2 '
                      'loads')
  args = parser.parse_args()
  logs.use_compilation_cache()
  began = time.perf_counter()
  info = machine()
  print(f"{describe(info)}; jax {info['versions']['jax']}")
  model, params, tokenizer, source = load(args.random)
  calibration, evals = tokens(tokenizer, model.vocab_size)
  groups, units = ls.calibration_scores(model, params, [calibration])
  keep_groups, keep_units = ls.keep_by_fraction(groups, 1 / 3), ls.keep_by_fraction(units, 0.25)
  models = {'dense': (model, params),
            'mlp -25%': ls.shrink(model, params, None, keep_units),
            'kv -1/3': ls.shrink(model, params, keep_groups, None),
            'both': ls.shrink(model, params, keep_groups, keep_units)}
  # On the device once: numpy leaves (a loaded model's) would be copied over at every call.
  models = {name: (m, jax.device_put(p)) for name, (m, p) in models.items()}
  print(f'{source}; scored in {time.perf_counter() - began:.0f} s; compiling ...', flush=True)
  calls = latency.compiled_calls(models, evals, BATCHES)
  print(f'compiled at {time.perf_counter() - began:.0f} s; timing ...', flush=True)
  nll = {}
  times = interleaved(timers(models, calls, evals, args.decode_steps, nll), args.rounds)
  cost = costs(calls)
  lines = table(models, times, nll, cost)
  print('\n'.join(lines))
  print(f'(x): median of per-round dense / variant, wall and CPU time, {args.rounds} rounds; total '
        f'{time.perf_counter() - began:.0f} s')
  os.makedirs(os.path.join(REPO, 'bench', 'out'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'out', 'llama_structured.json'), 'w') as f:
    json.dump({'machine': info, 'source': source, 'rounds': args.rounds,
               'decode_steps': args.decode_steps, 'nll': nll, 'gflop_mb': cost, 'table': lines,
               'seconds': {' '.join(map(str, k)): v for k, v in times.items()}}, f, indent=1)


if __name__ == '__main__':
  main()
