"""Causal grouped-query attention of SmolLM2's shape: in query chunks (`query_chunk=64`, the
default) vs one [queries, keys] product (`query_chunk=0`), side by side.

    .venv/bin/python bench/attention.py [--rounds 5] [--threads 1] [--torch]

The module timed is `models.llama.GroupedQueryAttention` (9 query heads, 3 key/value heads, head
dim 64, width 576: the q/k/v/o projections, RoPE and the attention itself) at the shapes the
one-shot pass (8 x 256 tokens), the evaluation (4 x 512) and a long prompt (1 x 2048) use; the
two settings alternate in every round and the table gives median milliseconds and the median
of the per-round ratios. `--threads 1` pins the process to one core and sets XLA to one
thread before jax is imported (the one-shot comparison's setting); `--threads 0` leaves both
alone. `--torch` adds transformers' `LlamaAttention` (sdpa) of the same shape, as the papers'
reference code runs it. Nothing here asserts a speed.
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = ((8, 256), (4, 512), (1, 2048))


def _parse():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--threads', type=int, default=1, help='1: one core, one XLA thread')
  parser.add_argument('--torch', action='store_true', help="also time transformers' attention")
  parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'out', 'attention.json'))
  return parser.parse_args()


ARGS = _parse()
if ARGS.threads == 1:  # Before jax is imported.
  os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_cpu_multi_thread_eigen=false').strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, REPO)
from bench.startup import describe, machine  # noqa: E402
from bigmodel_jax.models.llama import GroupedQueryAttention  # noqa: E402


def _timer(fn, *args):
  """Seconds of one call of fn(*args), ready."""
  def once():
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start
  return once


def _torch_peer(batch, length, x):
  import torch
  import transformers
  torch.set_num_threads(1 if ARGS.threads == 1 else torch.get_num_threads())
  config = transformers.LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                                    head_dim=64, rope_theta=100000.0)
  config._attn_implementation = 'sdpa'  # noqa: SLF001  (transformers' own switch)
  layer = transformers.models.llama.modeling_llama.LlamaAttention(config, 0).eval()
  rope = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
  hidden = torch.from_numpy(np.asarray(x))
  positions = torch.arange(length)[None].expand(batch, -1)
  embeddings = rope(hidden, positions)

  def once():
    start = time.perf_counter()
    with torch.no_grad():
      layer(hidden, embeddings, attention_mask=None)  # None: sdpa's causal path, as in the
      # reference runs (transformers passes no mask for unpadded batches).
    return time.perf_counter() - start
  return once


def main():
  info = machine()
  print(f"{describe(info)}; jax {info['versions']['jax']}; threads "
        f"{'1 (pinned)' if ARGS.threads == 1 else 'default'}", flush=True)
  rows = []
  for batch, length in SHAPES:
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, length, 576))
    positions = jnp.arange(length)
    timers, outs = {}, {}
    for chunk in (0, 64):
      module = GroupedQueryAttention(9, 3, 64, 100000.0, max_len=length, query_chunk=chunk)
      params = module.init(jax.random.PRNGKey(1), x[:, :8], positions[:8])
      fn = jax.jit(lambda p, x, m=module, at=positions: m.apply(p, x, at))
      outs[chunk] = fn(params, x)
      timers[f'query_chunk={chunk}'] = _timer(fn, params, x)
    diff = float(jnp.abs(outs[64] - outs[0]).max())
    if ARGS.torch:
      timers['transformers sdpa'] = _torch_peer(batch, length, x)
    times = {name: [] for name in timers}
    for r in range(ARGS.rounds):
      for name in (list(timers) if r % 2 == 0 else list(timers)[::-1]):
        times[name].append(timers[name]())
    ratios = [a / b for a, b in zip(times['query_chunk=0'], times['query_chunk=64'], strict=True)]
    row = {'batch': batch, 'length': length, 'max_abs_diff': diff,
           'median_ms': {n: 1e3 * statistics.median(t) for n, t in times.items()},
           'speedup_chunked': statistics.median(ratios)}
    rows.append(row)
    cells = ', '.join(f'{n} {v:.1f} ms' for n, v in row['median_ms'].items())
    print(f'{batch} x {length}: {cells}; chunked {row["speedup_chunked"]:.2f}x faster '
          f'(max |diff| {diff:.1e})', flush=True)
  os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
  with open(ARGS.out, 'w') as f:
    json.dump({'machine': info, 'args': vars(ARGS), 'rows': rows}, f, indent=1)
  print(f'written to {ARGS.out}')


if __name__ == '__main__':
  main()
