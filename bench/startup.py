"""Start-up and whole-process time of the main job, side by side with the seed's PyTorch loop.

    .venv/bin/python bench/startup.py [--rounds 5] [--peers jax_warm,jax_cold,torch]
                                      [--baseline_repo /work/main]

Peers, each a fresh subprocess, run in alternating order round after round (the machine is
shared, so only side-by-side figures mean anything):
  jax_warm    `launch.py --config=configs/fashion_mnist_mlp.py --config.num_epochs=3` in a fresh
              workdir, JAX's persistent compilation cache warmed by an untimed run first
  jax_cold    the same with an empty compilation cache each round
  jax_nocache the same with the compilation cache off (JAX_COMPILATION_CACHE_DIR='')
  jax_before  the same command in `--baseline_repo` (another checkout, e.g. before a change)
  torch       bench/torch_seed_loop.py: the same data, MLP, Adam 1e-3, batch 64, 3 epochs, eval
              per epoch, 2 threads
The dataset is prepared (and its split cache written) before the first round. Reports each
peer's whole-process wall time per round, the ratio to torch per round and the medians.

Then the time to the first training step of the same runs, phase by phase, from the marks the
loop writes to results.json (`startup`: seconds since the process started): imports (until
`train_and_evaluate` is called), run set-up (config, devices, data, model, optimizer), state
(checkpointer, initialisation; the train step compiles in a background thread meanwhile) and
the first call (the first `steps_per_call` steps, waiting for that compile if it is not done).
Medians over the rounds; a `--baseline_repo` from before these marks has none.
Writes bench/out/startup.json. Nothing here asserts a speed.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/fashion_mnist_mlp.py'
EPOCHS = 3


def machine() -> dict:
  """CPU model and flags, cores, load and library versions."""
  cpu, flags = platform.processor(), []
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name') and not cpu.strip():
          cpu = line.split(':', 1)[1].strip()
        if line.startswith('flags') and not flags:
          flags = line.split(':', 1)[1].split()
  except OSError:
    pass
  versions = {'python': platform.python_version()}
  for name in ('numpy', 'jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint',
               'tensorflow_datasets', 'torch'):
    try:
      module = __import__(name, fromlist=['_'])
      versions[name] = getattr(module, '__version__', '?')
    except ImportError:
      versions[name] = None
  simd = [f for f in flags if f.startswith(('avx', 'fma', 'sse4', 'amx', 'f16c'))]
  return {'cpu': cpu, 'simd_flags': simd, 'cores': os.cpu_count(),
          'load_average': os.getloadavg(),
          'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
          'versions': versions}


def describe(info: dict) -> str:
  """The one line every benchmark prints first: date, CPU, cores, load and SIMD flags."""
  load = ' '.join(f'{x:.1f}' for x in info['load_average'])
  return (f"{info['date_utc']} UTC; {info['cpu']}, {info['cores']} cores, load {load}; "
          f"SIMD {' '.join(info['simd_flags'])}")


# --- subprocess peers --------------------------------------------------------------------------
def _env(repo: str, cache_dir: str | None) -> dict:
  env = dict(os.environ, PYTHONPATH=repo)
  if cache_dir is not None:
    env['JAX_COMPILATION_CACHE_DIR'] = cache_dir
  return env


def run_jax(repo: str, cache_dir: str | None) -> dict:
  workdir = tempfile.mkdtemp(prefix='startup-run-')
  try:
    start = time.time()
    proc = subprocess.run([sys.executable, 'launch.py', f'--config={CONFIG}',
                           f'--config.num_epochs={EPOCHS}', f'--workdir={workdir}'],
                          cwd=repo, env=_env(repo, cache_dir), capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode:
      raise RuntimeError(f'launch.py failed in {repo}:\n{proc.stderr[-3000:]}')
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    return {'wall_s': wall, 'test_accuracy': results['test_accuracy'],
            'compile_s': results['compile_time_s'], 'train_s': results['train_time_s'],
            'stderr_lines': len(proc.stderr.splitlines()),
            'startup': results.get('startup', {})}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def run_torch() -> dict:
  start = time.time()
  proc = subprocess.run([sys.executable, 'bench/torch_seed_loop.py', f'--epochs={EPOCHS}',
                         '--threads=2'], cwd=REPO, capture_output=True, text=True)
  wall = time.time() - start
  if proc.returncode:
    raise RuntimeError(f'torch loop failed:\n{proc.stderr[-3000:]}')
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  return {'wall_s': wall, 'test_accuracy': out['final_eval_accuracy'],
          'first_step_s': out['first_step_s'] + out['start_time'] - start}


def prepare(repos: list[str]) -> None:
  """Prepares the dataset (and the split cache) so that no timed run prepares it."""
  for repo in repos:
    subprocess.run([sys.executable, '-c', 'from bigmodel_jax import data; from configs import '
                    'fashion_mnist_mlp as c; data.load_datasets(c.get_config().data)'],
                   cwd=repo, env=_env(repo, None), check=True, capture_output=True)


PHASES = (('imports', 'imports_s'), ('run set-up', 'run_set_up_s'),
          ('state (train step compiling meanwhile)', 'state_ready_s'),
          ('first call', 'first_call_done_s'))


def _breakdown(rounds: list[dict], peers: list[str]) -> dict:
  """Median seconds of each start-up phase per JAX peer, printed as a table."""
  table = {}
  for name in peers:
    marks = [row[name]['startup'] for row in rounds if row[name]['startup']]
    if not marks:
      continue
    previous, table[name] = 0.0, {}
    for label, key in PHASES:
      table[name][label] = statistics.median(m[key] for m in marks) - previous
      previous += table[name][label]
    table[name]['to the first step (end of the first call)'] = previous
  if table:
    print(f'\nTime to the first training step, seconds since the process started, median of '
          f'{len(rounds)} rounds (the loop\'s marks in results.json):\n')
    print('| phase | ' + ' | '.join(table) + ' |')
    print('|---' * (len(table) + 1) + '|')
    for label in next(iter(table.values())):
      print(f'| {label} | ' + ' | '.join(f'{t[label]:.2f}' for t in table.values()) + ' |')
  return table


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--peers', default='jax_warm,jax_cold,torch')
  parser.add_argument('--baseline_repo', default='', help='checkout for the jax_before peer')
  args = parser.parse_args()

  peers = [p for p in args.peers.split(',') if p]
  if 'jax_before' in peers and not args.baseline_repo:
    parser.error('jax_before needs --baseline_repo')
  info = machine()
  print(describe(info))
  print('versions: ' + ', '.join(f'{k} {v}' for k, v in info['versions'].items()))
  prepare([REPO] + ([args.baseline_repo] if 'jax_before' in peers else []))
  scratch = tempfile.mkdtemp(prefix='startup-xla-')
  warm_dir = os.path.join(scratch, 'warm')
  if 'jax_warm' in peers:
    run_jax(REPO, warm_dir)  # Untimed: fills the warm cache.
  runners = {
      'jax_warm': lambda: run_jax(REPO, warm_dir),
      'jax_cold': lambda: run_jax(REPO, tempfile.mkdtemp(dir=scratch)),
      'jax_nocache': lambda: run_jax(REPO, ''),
      'jax_before': lambda: run_jax(args.baseline_repo, None),
      'torch': run_torch,
  }
  rounds = []
  for r in range(args.rounds):
    order = peers if r % 2 == 0 else peers[::-1]
    row = {name: runners[name]() for name in order}
    rounds.append(row)
    cells = [f"{n} {row[n]['wall_s']:.2f}s" for n in peers]
    if 'torch' in row:
      cells += [f"torch/{n} {row['torch']['wall_s'] / row[n]['wall_s']:.2f}x"
                for n in peers if n != 'torch']
    print(f'round {r + 1}: ' + ', '.join(cells), flush=True)

  print('\n| peer | wall s per round | median s | torch / peer per round | median ratio | '
        'test acc |')
  print('|---|---|---|---|---|---|')
  summary = {}
  for name in peers:
    walls = [row[name]['wall_s'] for row in rounds]
    ratios = ([row['torch']['wall_s'] / row[name]['wall_s'] for row in rounds]
              if 'torch' in peers else [])
    summary[name] = {'median_wall_s': statistics.median(walls),
                     'median_torch_ratio': statistics.median(ratios) if ratios else None}
    acc = rounds[-1][name]['test_accuracy']
    print(f"| {name} | {' / '.join(f'{w:.2f}' for w in walls)} | {statistics.median(walls):.2f} | "
          f"{' / '.join(f'{x:.2f}' for x in ratios)} | "
          f"{statistics.median(ratios):.2f}x | {acc:.4f} |" if ratios else
          f"| {name} | {' / '.join(f'{w:.2f}' for w in walls)} | {statistics.median(walls):.2f} "
          f'| | | {acc:.4f} |')

  breakdown = _breakdown(rounds, [n for n in peers if n.startswith('jax')])
  shutil.rmtree(scratch, ignore_errors=True)
  os.makedirs(os.path.join(REPO, 'bench', 'out'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'out', 'startup.json'), 'w') as f:
    json.dump({'machine': info, 'args': vars(args), 'rounds': rounds, 'summary': summary,
               'breakdown': breakdown}, f, indent=2)


if __name__ == '__main__':
  main()
