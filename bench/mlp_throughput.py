"""End-to-end training throughput of the seed MLP: bigmodel_jax vs the seed's PyTorch loop.

    .venv/bin/pip install torch==2.13.0   # benchmark only; a local CPU wheel on our machines
    .venv/bin/python bench/mlp_throughput.py [--epochs 3] [--threads 2]

Each measurement runs in its own subprocess on the same machine and thread count, on the real
Fashion-MNIST (local IDX files), batch 64, Adam 1e-3, cross-entropy, MLP 784-512-256-10:
  jax          launch.py's loop (train_and_evaluate) with its default steps_per_call: examples/s
               over whole epochs after compilation, input pipeline, metrics and the Python loop
               included (eval and checkpoint writes excluded, as for PyTorch)
  jax_1step    the same loop with steps_per_call=1: one compiled call per step
  jax_bare     the compiled 100-step call alone on one resident chunk (no data, no loop): the
               ceiling the loop can reach
  torch        the seed's loop: shuffled index slices of in-memory tensors, loss.item() per step
  torch_flush  the same with torch.set_flush_denormal(True)
  torch_loader the same model with DataLoader(TensorDataset, shuffle=True), as many seeds write it
  pipeline     our input pipeline alone (permute + gather whole chunks), examples/s
  peak         float32 matmul peak of this machine through XLA (4096^3 products)
Prints a markdown table and writes bench/out/mlp_throughput.json. Nothing here asserts a speed.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _step_gflop() -> tuple[float, float]:
  """(conventional 6NB, executed) GFLOP of one seed-MLP step at batch 64."""
  import jax
  import jax.numpy as jnp

  from bigmodel_jax import flops, models
  params = jax.eval_shape(models.MLP().init, jax.random.PRNGKey(0), jnp.zeros((1, 784)))['params']
  conventional = flops.dense_train_step_flops(params, 64)
  fan_in, fan_out = flops.dense_kernel_sizes(params)[0]
  return conventional / 1e9, (conventional - 2 * 64 * fan_in * fan_out) / 1e9  # XLA skips dL/dx


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_fashion_mnist():
  from bigmodel_jax import data
  from configs import fashion_mnist_mlp
  config = fashion_mnist_mlp.get_config().data
  config.normalize = True
  return data.load_datasets(config)


def worker_jax(epochs: int, steps_per_call: int) -> dict:
  from bigmodel_jax import training
  from configs import fashion_mnist_mlp
  config = fashion_mnist_mlp.get_config()
  config.num_epochs, config.steps_per_call, config.write_plot = epochs, steps_per_call, False
  with tempfile.TemporaryDirectory() as workdir:
    results = training.train_and_evaluate(config, workdir)
  rates = [h['examples_per_s'] for h in results['history']]
  return {'epoch_examples_per_s': rates, 'compile_s': results['compile_time_s'],
          'final_eval_accuracy': results['final_eval_accuracy'], 'peak_rss_mib': _peak_rss_mib()}


def worker_jax_bare(epochs: int) -> dict:
  """The compiled 100-step call alone, on one resident chunk: the ceiling for the loop."""
  import jax
  import numpy as np

  from bigmodel_jax import models, optim, timing, train, train_state
  from configs import fashion_mnist_mlp
  config = fashion_mnist_mlp.get_config()
  tx, _ = optim.create_optimizer(config.optimizer, 937, 937 * epochs)
  model = models.create_model(config.model, 10)
  state = jax.jit(lambda s: train_state.create_train_state(
      s, model=model, tx=tx, input_shape=(28, 28, 1)))(0)
  rng = np.random.default_rng(0)
  chunk = jax.device_put({'inputs': rng.normal(size=(100, 64, 28, 28, 1)).astype(np.float32),
                          'targets': rng.integers(0, 10, (100, 64)).astype(np.int32)})
  run = timing.donated_timer(jax.jit(train.train_steps, donate_argnums=0), state, chunk)
  rates = [900 * 64 / run(9) for _ in range(epochs)]
  return {'epoch_examples_per_s': rates, 'peak_rss_mib': _peak_rss_mib(),
          'final_eval_accuracy': float('nan')}


def worker_torch(epochs: int, threads: int, flush_denormal: bool, loader: bool) -> dict:
  import numpy as np
  import torch
  torch.set_num_threads(threads)
  torch.set_flush_denormal(flush_denormal)
  torch.manual_seed(0)
  datasets = _load_fashion_mnist()
  x = torch.from_numpy(datasets.train.inputs.reshape(len(datasets.train), -1))
  y = torch.from_numpy(datasets.train.targets.astype(np.int64))
  model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  batch, steps = 64, len(y) // 64

  def batches():
    if loader:
      dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch,
                                       shuffle=True, drop_last=True)
      yield from dl
    else:
      perm = torch.randperm(len(y))
      for i in range(steps):
        idx = perm[i * batch:(i + 1) * batch]
        yield x[idx], y[idx]

  rates = []
  for _ in range(epochs):
    start, running = time.perf_counter(), 0.0
    for xb, yb in batches():
      optimizer.zero_grad()
      loss = loss_fn(model(xb), yb)
      loss.backward()
      optimizer.step()
      running += loss.item()
    rates.append(steps * batch / (time.perf_counter() - start))
  with torch.no_grad():
    xt = torch.from_numpy(datasets.eval.inputs.reshape(len(datasets.eval), -1))
    accuracy = (model(xt).argmax(-1).numpy() == datasets.eval.targets).mean()
  return {'epoch_examples_per_s': rates, 'final_eval_accuracy': float(accuracy),
          'threads': torch.get_num_threads(), 'torch_version': torch.__version__,
          'peak_rss_mib': _peak_rss_mib()}


def worker_pipeline(epochs: int) -> dict:
  from bigmodel_jax import data
  datasets = _load_fashion_mnist()
  rates = []
  for epoch in range(epochs):
    start, n = time.perf_counter(), 0
    for _, chunk in data.train_chunks(datasets.train, batch_size=64, steps_per_call=100, seed=0,
                                      epoch=epoch, shuffle=True):
      n += chunk['targets'].size
    rates.append(n / (time.perf_counter() - start))
  return {'epoch_examples_per_s': rates, 'peak_rss_mib': _peak_rss_mib()}


def worker_peak() -> dict:
  import jax
  import numpy as np

  from bigmodel_jax import timing
  n = 4096
  gflops = timing.matmul_peak_gflops(n)
  b = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n, n)))
  np_best = float('inf')
  for _ in range(3):
    start = time.perf_counter()
    b @ b
    np_best = min(np_best, time.perf_counter() - start)
  return {'gflops': gflops, 'numpy_gflops': 2 * n ** 3 / np_best / 1e9}


def _run_worker(name: str, args) -> dict:
  cmd = [sys.executable, __file__, f'--worker={name}', f'--epochs={args.epochs}',
         f'--threads={args.threads}']
  print(f'... {name}', file=sys.stderr, flush=True)
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise RuntimeError(f'{name} failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--worker', default=None)
  parser.add_argument('--skip', default='', help='comma-separated workers to skip')
  args = parser.parse_args()
  if args.worker:
    result = {
        'jax': lambda: worker_jax(args.epochs, 100),
        'jax_1step': lambda: worker_jax(args.epochs, 1),
        'jax_bare': lambda: worker_jax_bare(args.epochs),
        'torch': lambda: worker_torch(args.epochs, args.threads, False, False),
        'torch_flush': lambda: worker_torch(args.epochs, args.threads, True, False),
        'torch_loader': lambda: worker_torch(args.epochs, args.threads, False, True),
        'pipeline': lambda: worker_pipeline(args.epochs),
        'peak': worker_peak,
    }[args.worker]()
    print(json.dumps(result))
    return

  names = ['peak', 'pipeline', 'jax_bare', 'jax', 'jax_1step', 'torch', 'torch_flush',
           'torch_loader']
  skip = set(filter(None, args.skip.split(',')))
  results = {n: _run_worker(n, args) for n in names if n not in skip}
  peak = results['peak']['gflops']
  step_gflop, executed_gflop = _step_gflop()
  median = lambda r: float(statistics.median(r['epoch_examples_per_s']))
  mean = lambda r: float(statistics.mean(r['epoch_examples_per_s']))
  torch_best = max((median(results[n]) for n in ('torch', 'torch_flush') if n in results),
                   default=None)
  print(f'\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
        f'{args.threads} threads; {args.epochs} epochs each; '
        f'{time.strftime("%Y-%m-%d")}; float32 matmul peak {peak:.0f} GFLOP/s through XLA '
        f'({results["peak"]["numpy_gflops"]:.0f} through numpy)\n')
  print('| run | examples/s, median of epochs (mean) | per epoch | vs best PyTorch (median) | '
        'GFLOP/s (6NB) | of peak | compile s | peak RSS MiB | eval acc |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name in names[1:]:
    if name not in results:
      continue
    r = results[name]
    rate = median(r)
    cells = [name, f'{rate:,.0f} ({mean(r):,.0f})',
             ' / '.join(f'{x / 1e3:.1f}k' for x in r['epoch_examples_per_s']),
             f'{rate / torch_best:.2f}x' if torch_best else 'n/a']
    if name == 'pipeline':
      cells += ['', '', '', f'{r.get("peak_rss_mib", 0):.0f}', '']
    else:
      gflops = rate / 64 * step_gflop
      cells += [f'{gflops:.1f}', f'{gflops / peak:.0%}',
                f'{r["compile_s"]:.2f}' if 'compile_s' in r else '',
                f'{r["peak_rss_mib"]:.0f}', f'{r["final_eval_accuracy"]:.4f}']
    print('| ' + ' | '.join(cells) + ' |')
  os.makedirs(os.path.join(REPO, 'bench', 'out'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'out', 'mlp_throughput.json'), 'w') as f:
    json.dump({'args': vars(args), 'results': results,
               'step_gflop_convention': step_gflop, 'step_gflop_executed': executed_gflop},
              f, indent=2)
  print(f'\nGFLOP/s use 6 x batch x weights = {step_gflop:.3f} GFLOP per step; XLA executes '
        f'{executed_gflop:.3f} (no input gradient for the first layer).')


if __name__ == '__main__':
  main()
