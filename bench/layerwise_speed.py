"""Per-layer one-shot pruning on this CPU: ours now vs ours before vs the papers' own code.

    .venv/bin/python bench/layerwise_speed.py --sparsegpt_repo ../sparsegpt --wanda_repo ../wanda
        [--threads 1,2] [--rounds 5] [--shapes 1024x1024,576x1536,1536x576] [--tokens 4096]
        [--baseline_rev c936722]

The reference is the papers' code, cloned beside (`git clone https://github.com/IST-DASLab/sparsegpt`,
`git clone https://github.com/locuslab/wanda`) and imported from those folders, never copied:
  stats        sparsegpt.py `SparseGPT.add_batch` (H) + wanda lib/layerwrapper.py
               `WrappedGPT.add_batch` (||X_i||^2), over the calibration rows in chunks of
               `--chunk_rows` (one hook call per chunk); ours: `layerwise.accumulate` per chunk
  sparsegpt    `SparseGPT.fasterprune` (blocksize 128, percdamp 0.01; 2:4: prunen=2, prunem=4);
               it calls torch.cuda.synchronize(), a no-op here (CPU); its prints are swallowed
  wanda        the mask lines of wanda lib/prune.py `prune_wanda`, which are inline in a function
               that loads C4 and runs a model; they are reproduced below (`reference_wanda_mask`)
               and checked once against the real `prune_wanda`, run on a one-layer stand-in model
  H^-1 factor  the three lines of `fasterprune` (cholesky, cholesky_inverse, cholesky upper),
               reproduced the same way (`reference_hessian_factor`); ours: the factor SparseGPT
               uses (also inside the sparsegpt rows)
Ours before: bigmodel_jax/pruning/{layerwise,selection}.py as of `--baseline_rev`, loaded from
git beside the current ones. Layers are Flax kernels [in, out] (torch weights [out, in]),
calibration inputs correlated and of uneven scale like an LLM's.

Each thread count runs in its own process (the thread settings must precede the imports): 1
thread sets XLA_FLAGS='--xla_cpu_multi_thread_eigen=false' and
torch.set_num_threads(1); 2 threads leaves XLA at its default (all cores) and sets torch to 2;
both set OPENBLAS_NUM_THREADS (jaxlib's LAPACK, hence our Cholesky, is scipy's OpenBLAS),
OMP_NUM_THREADS and MKL_NUM_THREADS to the count. Everything is compiled and warmed up first;
then each operation's peers are timed in turn, the order reversed every other round, `--rounds`
rounds: medians of ms, and of per-round ratios (paired: the machine's drift cancels). Writes
bench/out/layerwise_speed.json. Nothing here asserts a speed.
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'bench'))

from startup import describe, machine  # noqa: E402

ONE_THREAD_XLA = '--xla_cpu_multi_thread_eigen=false'
OPS = ('stats', 'H^-1 factor', 'wanda 50%', 'wanda 2:4', 'sparsegpt 50%', 'sparsegpt 2:4')
PEERS = ('old', 'new', 'reference')


# --- the reference side (torch) ----------------------------------------------------------------
def reference_wanda_mask(torch, weight, scaler_row, sparsity: float, prune_n: int, prune_m: int):
  """Pruned-mask of wanda lib/prune.py `prune_wanda` for one layer (its lines from `W_metric =`
  to the scatter, without the Wanda-variant branch), for weight: [out, in]."""
  W_metric = torch.abs(weight) * torch.sqrt(scaler_row.reshape((1, -1)))
  W_mask = (torch.zeros_like(W_metric) == 1)
  if prune_n != 0:
    for ii in range(W_metric.shape[1]):
      if ii % prune_m == 0:
        tmp = W_metric[:, ii:(ii + prune_m)].float()
        W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
  else:
    sort_res = torch.sort(W_metric, dim=-1, stable=True)
    indices = sort_res[1][:, :int(W_metric.shape[1] * sparsity)]
    W_mask.scatter_(1, indices, True)
  return W_mask


def reference_hessian_factor(torch, H, percdamp: float = 0.01):
  """The upper factor of H^-1 as sparsegpt.py `fasterprune` computes it (dead inputs aside)."""
  H = H.clone()
  diag = torch.arange(H.shape[0])
  H[diag, diag] += percdamp * torch.mean(torch.diag(H))
  H = torch.linalg.cholesky(H)
  H = torch.cholesky_inverse(H)
  return torch.linalg.cholesky(H, upper=True)


def check_wanda_port(torch, wanda_repo: str, weight, chunks) -> None:
  """Runs the real `prune_wanda` on a one-layer stand-in model and checks that
  `reference_wanda_mask` gives the same mask (50% and 2:4)."""
  sys.modules.setdefault('datasets', types.ModuleType('datasets')).load_dataset = None
  sys.path.insert(0, wanda_repo)
  from lib import prune as wanda_prune  # The folder's lib/, a namespace package.
  from lib.layerwrapper import WrappedGPT

  class Layer(torch.nn.Module):  # A decoder layer's call signature around one Linear.
    def __init__(self, linear):
      super().__init__()
      self.linear = linear

    def forward(self, x, attention_mask=None, position_ids=None):
      self.linear(x)
      return (x,)

  inps = torch.cat(chunks)  # [samples, seqlen, in], as the loader gives them.
  for n, m, sparsity in ((0, 0, 0.5), (2, 4, 0.5)):
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    model = types.SimpleNamespace(
        seqlen=inps.shape[1], hf_device_map={}, config=types.SimpleNamespace(use_cache=False),
        model=types.SimpleNamespace(layers=[Layer(linear)]))
    args = types.SimpleNamespace(nsamples=len(chunks), seed=0, sparsity_ratio=sparsity,
                                 use_variant=False)
    wanda_prune.get_loaders = lambda *a, **k: (None, None)
    wanda_prune.prepare_calibration_input = lambda *a, **k: (inps, torch.zeros_like(inps),
                                                             None, None)
    with contextlib.redirect_stdout(io.StringIO()):
      wanda_prune.prune_wanda(args, model, None, device='cpu', prune_n=n, prune_m=m)
    wrapped = WrappedGPT(torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    for c in chunks:
      wrapped.add_batch(c, None)
    ported = reference_wanda_mask(torch, weight, wrapped.scaler_row, sparsity, n, m)
    if not torch.equal(linear.weight.data == 0, ported):
      raise RuntimeError(f'reference_wanda_mask differs from prune_wanda ({n}:{m} / {sparsity})')


def reference_timers(torch, sparsegpt_repo: str, wanda_repo: str, kernel,
                     chunks) -> tuple[dict, dict]:
  """({op: () -> seconds}, {op: result}) of the papers' code for kernel: [in, out] (numpy)."""
  sys.path[:0] = [sparsegpt_repo, wanda_repo]
  import sparsegpt as sparsegpt_ref
  from lib.layerwrapper import WrappedGPT
  torch.cuda.synchronize = lambda *args, **kwargs: None  # fasterprune's; there is no GPU here.
  weight = torch.from_numpy(kernel.T.copy())
  linear = torch.nn.Linear(*kernel.shape, bias=False)
  linear.weight.data = weight.clone()
  chunks = [torch.from_numpy(c)[None] for c in chunks]
  results = {}

  def stats():
    hessian, norms = sparsegpt_ref.SparseGPT(linear), WrappedGPT(linear)
    start = time.perf_counter()
    for c in chunks:
      hessian.add_batch(c, None)
      norms.add_batch(c, None)
    seconds = time.perf_counter() - start
    results['stats'] = (hessian.H, norms.scaler_row)
    return seconds

  stats()

  def factor():
    start = time.perf_counter()
    reference_hessian_factor(torch, results['stats'][0])
    return time.perf_counter() - start

  def wanda(n, m):
    def run():
      start = time.perf_counter()
      mask = reference_wanda_mask(torch, weight, results['stats'][1], 0.5, n, m)
      seconds = time.perf_counter() - start
      results[f'wanda {n}:{m}'] = ~mask.T.numpy()  # Keep-mask [in, out], as ours.
      return seconds
    return run

  def sparsegpt(n, m):
    def run():
      pruner = sparsegpt_ref.SparseGPT(linear)
      pruner.H = results['stats'][0].clone()
      linear.weight.data = weight.clone()
      start = time.perf_counter()
      with contextlib.redirect_stdout(io.StringIO()):
        pruner.fasterprune(0.5, prunen=n, prunem=m, blocksize=128, percdamp=0.01)
      seconds = time.perf_counter() - start
      results[f'sparsegpt {n}:{m}'] = linear.weight.data.T.numpy().copy()
      return seconds
    return run

  return {'stats': stats, 'H^-1 factor': factor, 'wanda 50%': wanda(0, 0),
          'wanda 2:4': wanda(2, 4), 'sparsegpt 50%': sparsegpt(0, 0),
          'sparsegpt 2:4': sparsegpt(2, 4)}, results


# --- our side (JAX), now and at --baseline_rev -------------------------------------------------
def load_baseline(rev: str):
  """bigmodel_jax.pruning.layerwise as of git `rev` (with that revision's selection.py)."""
  modules = {}
  for name in ('selection', 'layerwise'):
    path = f'bigmodel_jax/pruning/{name}.py'
    source = subprocess.run(['git', 'show', f'{rev}:{path}'], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    source = source.replace('from bigmodel_jax.pruning import selection',
                            'import baseline_selection as selection')
    module = types.ModuleType(f'baseline_{name}')
    sys.modules[module.__name__] = module
    exec(compile(source, f'{rev}:{path}', 'exec'), module.__dict__)
    modules[name] = module
  return modules['layerwise']


def jax_timers(jax, layerwise, kernel, chunks) -> tuple[dict, dict]:
  """({op: () -> seconds}, {op: result}) of a layerwise module, compiled and warmed up."""
  jnp = jax.numpy
  kernel = jnp.asarray(kernel)
  chunks = [jnp.asarray(c) for c in chunks]
  accumulate = jax.jit(layerwise.accumulate)
  factor = jax.jit(lambda xtx: layerwise._inverse_hessian_factor(xtx, 0.01)[0])
  wanda = jax.jit(layerwise.wanda_mask, static_argnames=('sparsity', 'n', 'm'))
  sparsegpt = jax.jit(layerwise.sparsegpt, static_argnames=('sparsity', 'n', 'm', 'block_size'))
  results = {}

  def timed(name, fn):
    def run():
      start = time.perf_counter()
      results[name] = jax.block_until_ready(fn())
      return time.perf_counter() - start
    run()  # Compiles.
    return run

  def stats():
    stats = layerwise.init_stats(kernel.shape[0])
    for c in chunks:
      stats = accumulate(stats, c)
    return stats

  timers = {'stats': timed('stats', stats)}
  xtx = results['stats'].xtx
  st = results['stats']
  timers['H^-1 factor'] = timed('H^-1 factor', lambda: factor(xtx))
  timers['wanda 50%'] = timed('wanda 0:0', lambda: wanda(kernel, st, sparsity=0.5))
  timers['wanda 2:4'] = timed('wanda 2:4', lambda: wanda(kernel, st, n=2, m=4))
  timers['sparsegpt 50%'] = timed('sparsegpt 0:0', lambda: sparsegpt(kernel, st, sparsity=0.5,
                                                                      block_size=128))
  timers['sparsegpt 2:4'] = timed('sparsegpt 2:4', lambda: sparsegpt(kernel, st, n=2, m=4,
                                                                      block_size=128))
  return timers, results


# --- one process per thread count --------------------------------------------------------------
def make_layer(np, fan_in: int, fan_out: int, tokens: int, seed: int = 0):
  """(kernel [in, out], calibration inputs [tokens, in]: correlated, of uneven scale)."""
  rng = np.random.default_rng(seed)
  mix = (rng.normal(size=(fan_in, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
  scale = np.exp(rng.normal(scale=0.5, size=fan_in)).astype(np.float32)
  x = (rng.normal(size=(tokens, fan_in)).astype(np.float32) @ mix) * scale
  kernel = (rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
  return kernel, x


def agreement(jax, np, layerwise, kernel, x, results: dict) -> dict:
  """New vs old (and vs the reference): mask differences, kernel differences, errors. SparseGPT
  new vs old also with the same stats (old's), which separates the method's float differences
  from those of the stats."""
  new, old, ref = (results[p] for p in PEERS)
  error = lambda k: float(layerwise.reconstruction_error(x, kernel, k))
  sparsegpt = jax.jit(layerwise.sparsegpt, static_argnames=('sparsity', 'n', 'm'))
  same_stats = {'0:0': sparsegpt(kernel, old['stats'], sparsity=0.5),
                '2:4': sparsegpt(kernel, old['stats'], n=2, m=4)}
  out = {}
  for nm in ('0:0', '2:4'):
    out[f'wanda {nm}: masks differing new vs old'] = int(np.sum(
        np.asarray(new[f'wanda {nm}']) != np.asarray(old[f'wanda {nm}'])))
    out[f'wanda {nm}: masks differing new vs reference'] = int(np.sum(
        np.asarray(new[f'wanda {nm}']) != ref[f'wanda {nm}']))
    (k_new, m_new), (k_old, m_old) = new[f'sparsegpt {nm}'], old[f'sparsegpt {nm}']
    out[f'sparsegpt {nm}: masks differing new vs old'] = int(np.sum(
        np.asarray(m_new) != np.asarray(m_old)))
    out[f'sparsegpt {nm}: max |new - old| / max |old|'] = float(
        np.max(np.abs(np.asarray(k_new) - np.asarray(k_old))) / np.max(np.abs(np.asarray(k_old))))
    out[f'sparsegpt {nm}: masks differing new vs old, same stats'] = int(np.sum(
        np.asarray(same_stats[nm][1]) != np.asarray(m_old)))
    out[f'sparsegpt {nm}: reconstruction error new / old / reference'] = [
        error(k_new), error(k_old), error(ref[f'sparsegpt {nm}'])]
  return out


def child(args) -> dict:
  """Times every op of every shape in this process (thread settings already in the env)."""
  import jax
  import numpy as np
  import torch

  from bigmodel_jax import timing
  from bigmodel_jax.pruning import layerwise
  torch.set_num_threads(args.child_threads)
  old = load_baseline(args.baseline_rev)
  report = {'threads': args.child_threads, 'torch_threads': torch.get_num_threads(),
            'jax_devices': str(jax.devices()), 'shapes': {}}
  for i, shape in enumerate(args.shapes.split(',')):
    fan_in, fan_out = (int(d) for d in shape.split('x'))
    kernel, x = make_layer(np, fan_in, fan_out, args.tokens)
    chunks = np.split(x, args.tokens // args.chunk_rows)
    if i == 0:
      check_wanda_port(torch, args.wanda_repo, torch.from_numpy(kernel.T.copy()),
                       [torch.from_numpy(c)[None] for c in chunks])
    peers = {'old': jax_timers(jax, old, kernel, chunks),
             'new': jax_timers(jax, layerwise, kernel, chunks),
             'reference': reference_timers(torch, args.sparsegpt_repo, args.wanda_repo, kernel,
                                           chunks)}
    rows = {}
    for op in OPS:
      times = timing.interleaved({p: peers[p][0][op] for p in PEERS}, args.rounds)
      ratio = lambda a, b, t=times: statistics.median(
          x / y for x, y in zip(t[a], t[b], strict=True))
      rows[op] = {**{f'{p}_ms': 1e3 * statistics.median(times[p]) for p in PEERS},
                  'new/reference': ratio('new', 'reference'),
                  'old/reference': ratio('old', 'reference'), 'new/old': ratio('new', 'old')}
      print(f'{args.child_threads} thread(s), {shape}, {op}: ' + ', '.join(
          f'{k} {v:.3g}' for k, v in rows[op].items()), file=sys.stderr, flush=True)
    report['shapes'][shape] = {'ops': rows, 'agreement': agreement(
        jax, np, layerwise, kernel, x, {p: peers[p][1] for p in PEERS})}
  return report


def child_env(threads: int) -> dict:
  env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
             MKL_NUM_THREADS=str(threads), PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)
  if threads == 1:
    env['XLA_FLAGS'] = ONE_THREAD_XLA
  return env


def print_report(report: dict) -> None:
  threads = report['threads']
  print(f"\n{threads} thread(s): XLA_FLAGS={ONE_THREAD_XLA if threads == 1 else '(unset)'}, "
        f"torch threads {report['torch_threads']}, OPENBLAS/OMP/MKL_NUM_THREADS={threads}\n")
  print('| layer [in, out] | op | old ms | new ms | reference ms | new / ref | old / ref | '
        'new / old |')
  print('|---|---|---|---|---|---|---|---|')
  for shape, entry in report['shapes'].items():
    for op, row in entry['ops'].items():
      print(f"| {shape} | {op} | {row['old_ms']:.1f} | {row['new_ms']:.1f} | "
            f"{row['reference_ms']:.1f} | {row['new/reference']:.2f} | "
            f"{row['old/reference']:.2f} | {row['new/old']:.2f} |")
  print('\nAgreement (masks are bool [in, out]; errors: ||X W - X W_pruned||^2 / ||X W||^2):')
  for shape, entry in report['shapes'].items():
    for key, value in entry['agreement'].items():
      value = ' / '.join(f'{v:.5f}' for v in value) if isinstance(value, list) else value
      print(f'  {shape} {key}: {value}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sparsegpt_repo', required=True, help='a clone of IST-DASLab/sparsegpt')
  parser.add_argument('--wanda_repo', required=True, help='a clone of locuslab/wanda')
  parser.add_argument('--threads', default='1,2', help='thread counts, one process each')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--shapes', default='1024x1024,576x1536,1536x576', help='INxOUT,...')
  parser.add_argument('--tokens', type=int, default=4096, help='calibration rows')
  parser.add_argument('--chunk_rows', type=int, default=2048, help='rows per add_batch call')
  parser.add_argument('--baseline_rev', default='c936722',
                      help='git revision of "old" (default: the last one before these changes)')
  parser.add_argument('--child_threads', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.tokens % args.chunk_rows:
    parser.error('--tokens must be a multiple of --chunk_rows')
  if args.child_threads:
    print(json.dumps(child(args)))
    return

  info = machine()
  print(describe(info))
  print('versions: ' + ', '.join(f'{k} {v}' for k, v in info['versions'].items()))
  print(f'flags: {vars(args)}')
  for repo in (args.sparsegpt_repo, args.wanda_repo):
    head = subprocess.run(['git', '-C', repo, 'log', '-1', '--format=%h %cs'], text=True,
                          capture_output=True).stdout.strip()
    print(f'reference {repo}: {head or "(not a git checkout)"}')
  reports = []
  for threads in (int(t) for t in args.threads.split(',')):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                           f'--child_threads={threads}'], env=child_env(threads),
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode:
      raise RuntimeError(f'The {threads}-thread run failed (its stderr is above).')
    reports.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print_report(reports[-1])
  os.makedirs(os.path.join(REPO, 'bench', 'out'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'out', 'layerwise_speed.json'), 'w') as f:
    json.dump({'machine': info, 'args': vars(args), 'reports': reports}, f, indent=1)


if __name__ == '__main__':
  main()
