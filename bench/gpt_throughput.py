"""Training tokens/s and MFU of the character GPT, generation tokens/s with and without the cache.

    .venv/bin/python bench/gpt_throughput.py [--torch] [--calls 15]

At configs/shakespeare_gpt.py's sizes (4 layers, 4 heads, 128 wide, context 64, batch 12, AdamW):
  train     our compiled 50-step call (`train.train_steps`, state resident), median of `--calls`;
            tokens/s, achieved GFLOP/s from the analytic count (flops.py, unit-tested) and MFU
            against this machine's measured float32 matmul peak (timing.matmul_peak_gflops).
  generate  `generate.sample` from a 1-token prompt to the full context (63 new tokens), batch 1
            and 12, with the key/value cache and with full re-encoding per token.
  --torch   the same model and optimizer written in PyTorch (our own few lines, the structure of
            nanoGPT's: fused qkv projection, scaled_dot_product_attention, no biases), timed
            per step on the same machine (median of 50 steps a block), in blocks alternating with
            ours, `--calls` rounds; the ratio is the median of the per-round ratios. Also
            PyTorch's own float32 matmul peak.
            Needs `pip install torch==2.13.0`.
Writes bench/out/gpt_throughput.json. Nothing here asserts a speed.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bigmodel_jax import flops, generate, models, optim, timing, train, train_state  # noqa: E402
from configs import shakespeare_gpt  # noqa: E402

VOCAB = 65


def _jax_block(config):
  """Our compiled train step; returns block() -> seconds per step of one `steps_per_call` call."""
  model = models.create_model(config.model, VOCAB)
  tx, _ = optim.create_optimizer(config.optimizer, 1000, config.num_train_steps)
  state = jax.jit(lambda: train_state.create_train_state(
      0, model=model, tx=tx, input_shape=(config.data.seq_len,), input_dtype=jnp.int32))()
  k, b, t = config.steps_per_call, config.batch_size, config.data.seq_len
  rng = np.random.default_rng(0)
  windows = rng.integers(0, VOCAB, (k, b, t + 1)).astype(np.int32)
  chunk = jax.device_put({'inputs': windows[..., :-1], 'targets': windows[..., 1:]})
  run = timing.donated_timer(jax.jit(train.train_steps, donate_argnums=0), state, chunk)
  return lambda: run(1) / k


def _rate(seconds: list[float], tokens_per_step: int) -> dict:
  step = statistics.median(seconds)
  return {'ms_per_step': 1e3 * step, 'tokens_per_s': tokens_per_step / step,
          'spread': (max(seconds) - min(seconds)) / step}


def _generate_rates(config) -> dict:
  model = models.create_model(config.model, VOCAB)
  params = jax.jit(lambda: train_state.create_train_state(
      0, model=model, tx=optim.create_optimizer(config.optimizer, 1, 1)[0],
      input_shape=(config.data.seq_len,), input_dtype=jnp.int32).params)()
  out = {}
  new = config.model.max_len - 1
  for batch in (1, 12):
    prompt = jnp.zeros((batch, 1), jnp.int32)
    for cache in (True, False):
      ms = timing.median_ms(
          lambda prompt, cache: generate.sample(model, params, prompt, new,
                                                rng=jax.random.PRNGKey(0), temperature=1.0,
                                                top_k=10, use_cache=cache),
          prompt, cache, repeats=5, warmup=1, min_seconds=0.5)
      out[f'batch_{batch}_{"cache" if cache else "no_cache"}'] = {
          'ms': ms, 'tokens_per_s': batch * new / ms * 1e3}
  return out


def _torch_block(config, steps: int):
  """The same model and optimizer in PyTorch; returns block() -> seconds per step of `steps`
  steps (median), and facts about the install."""
  import torch
  from torch import nn
  e, h, layers, t, b = (config.model.embed_dim, config.model.num_heads, config.model.num_layers,
                        config.data.seq_len, config.batch_size)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln1, self.ln2 = nn.LayerNorm(e, bias=False), nn.LayerNorm(e, bias=False)
      self.qkv, self.out = nn.Linear(e, 3 * e, bias=False), nn.Linear(e, e, bias=False)
      self.fc, self.proj = nn.Linear(e, 4 * e, bias=False), nn.Linear(4 * e, e, bias=False)

    def forward(self, x):
      q, k, v = self.qkv(self.ln1(x)).split(e, dim=2)
      q, k, v = (z.view(b, t, h, e // h).transpose(1, 2) for z in (q, k, v))
      y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
      x = x + self.out(y.transpose(1, 2).reshape(b, t, e))
      return x + self.proj(nn.functional.gelu(self.fc(self.ln2(x)), approximate='tanh'))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.wte, self.wpe = nn.Embedding(VOCAB, e), nn.Embedding(t, e)
      self.blocks = nn.ModuleList(Block() for _ in range(layers))
      self.ln_f = nn.LayerNorm(e, bias=False)

    def forward(self, idx):
      x = self.wte(idx) + self.wpe(torch.arange(t))
      for block in self.blocks:
        x = block(x)
      return self.ln_f(x) @ self.wte.weight.T

  torch.manual_seed(0)
  model = GPT()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
  data = torch.randint(0, VOCAB, (steps, b, t + 1))

  def block() -> float:
    times = []
    for i in range(steps):
      start = time.perf_counter()
      logits = model(data[i, :, :-1])
      loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), data[i, :, 1:].reshape(-1))
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
      times.append(time.perf_counter() - start)
    return statistics.median(times)
  block()  # Warm-up.
  return block, {'threads': torch.get_num_threads(), 'version': torch.__version__,
                 'matmul_peak_gflops': _torch_matmul_peak(2048)}


def _torch_matmul_peak(n: int, repeats: int = 5) -> float:
  """Best float32 GFLOP/s of an n x n x n matmul in PyTorch (cf. timing.matmul_peak_gflops)."""
  import torch
  a = torch.randn(n, n)
  return 2 * n ** 3 / timing.best_seconds(lambda: a @ a, repeats) / 1e9  # Synchronous on CPU.


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--calls', type=int, default=5)
  parser.add_argument('--torch', action='store_true')
  args = parser.parse_args()
  config = shakespeare_gpt.get_config()
  m = config.model
  per_token = flops.transformer_train_flops_per_token(
      num_layers=m.num_layers, embed_dim=m.embed_dim, seq_len=config.data.seq_len,
      vocab_size=VOCAB, mlp_ratio=m.mlp_ratio)
  peak = timing.matmul_peak_gflops(2048)
  tokens = config.batch_size * config.data.seq_len
  jax_block = _jax_block(config)
  if args.torch:
    # This VM's speed drifts by more than the difference measured, so the two are timed in
    # alternating blocks (the order flipped each round) and compared round by round.
    torch_block, torch_facts = _torch_block(config, config.steps_per_call)
    seconds = timing.interleaved({'jax': jax_block, 'torch': torch_block}, args.calls)
    jax_s, torch_s = seconds['jax'], seconds['torch']
    ratios = sorted(t / j for j, t in zip(jax_s, torch_s, strict=True))
    results = {'train': _rate(jax_s, tokens), 'torch': {**_rate(torch_s, tokens), **torch_facts},
               'paired_ratio': {'median': statistics.median(ratios), 'min': ratios[0],
                                'max': ratios[-1], 'rounds': len(ratios)}}
  else:
    results = {'train': _rate([jax_block() for _ in range(args.calls)], tokens)}
  results['generate'] = _generate_rates(config)
  # This VM's speed drifts (one peak measured 74, then 129 GFLOP/s): take the better of a
  # measurement before and after the runs, so MFU is not inflated by one slow reading.
  peak = max(peak, timing.matmul_peak_gflops(2048))
  print(f'{jax.default_backend()} ({platform.processor() or platform.machine()}), jax '
        f'{jax.__version__}; matmul peak {peak:.0f} GFLOP/s; {per_token / 1e6:.2f} MFLOP per '
        'trained token\n')
  print('| run | ms/step | tokens/s | GFLOP/s | MFU |\n|---|---|---|---|---|')
  for name in ('train', 'torch'):
    if name in results:
      r = results[name]
      r['gflops'] = per_token * r['tokens_per_s'] / 1e9
      r['mfu'] = r['gflops'] / peak
      print(f'| {"ours (JAX)" if name == "train" else "PyTorch"} | {r["ms_per_step"]:.1f} | '
            f'{r["tokens_per_s"]:,.0f} | {r["gflops"]:.1f} | {100 * r["mfu"]:.0f}% |')
  if 'torch' in results:
    r = results['paired_ratio']
    print(f'\nPyTorch matmul peak {results["torch"]["matmul_peak_gflops"]:.0f} GFLOP/s (XLA: '
          f'{peak:.0f}); JAX / PyTorch tokens/s, paired by round: median {r["median"]:.2f}x '
          f'(range {r["min"]:.2f} .. {r["max"]:.2f}, {r["rounds"]} rounds)')
  print('\n| generation (63 new tokens) | ms | tokens/s |\n|---|---|---|')
  for name, r in results['generate'].items():
    print(f'| {name} | {r["ms"]:.1f} | {r["tokens_per_s"]:,.0f} |')
  os.makedirs(os.path.join(REPO, 'bench', 'out'), exist_ok=True)
  path = os.path.join(REPO, 'bench', 'out', 'gpt_throughput.json')
  with open(path, 'w') as f:
    json.dump({'peak_gflops': peak, 'train_flops_per_token': per_token, **results,
               'date': time.strftime('%Y-%m-%d'), 'jax': jax.__version__}, f, indent=1)
  print(f'\nwrote {path}')


if __name__ == '__main__':
  main()
