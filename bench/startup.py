"""Start-up and whole-process time of the main job, side by side with the seed's PyTorch loop.

    .venv/bin/python bench/startup.py [--rounds 5] [--peers jax_warm,jax_cold,torch]
                                      [--baseline_repo /work/main] [--phase_rounds 3]

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

Then `--phase_rounds` in-process breakdowns of the time to the first training step, calling the
library in the order `loop.train_and_evaluate` does (imports, config and devices, data, model and
logical axes, optimizer, checkpointer, state init, writers, step and learning-rate set-up, first
chunk, compile, the first 100-step call): with the compilation cache cold, cold with the train
step compiled from abstract shapes in a background thread meanwhile (a loop.py idea, tried
here), and warm; and in `--baseline_repo` when given.
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

START = time.time()
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


# --- the in-process breakdown ------------------------------------------------------------------
def _compile_ahead(config, par, model, tx):
  """The main job's train step compiled from abstract shapes alone: what a loop could do in a
  background thread while the data loads. `model` and `tx` must be the objects the state will
  be built with (they are static parts of its pytree)."""
  import functools

  import jax
  import numpy as np

  from bigmodel_jax import losses, train_state
  from bigmodel_jax.data import idx
  init = functools.partial(train_state.create_train_state, config.seed, model=model, tx=tx,
                           input_shape=idx.IMAGE_SHAPE + (1,), masked=False,
                           input_dtype=np.float32)
  abstract = par.abstract(jax.eval_shape(init))
  call = par.train_call(abstract, loss_fn=losses.train_loss(config.loss, config.label_smoothing))
  k, batch = config.steps_per_call, config.batch_size
  chunk = {'inputs': jax.ShapeDtypeStruct((k, batch, *idx.IMAGE_SHAPE, 1), np.float32),
           'targets': jax.ShapeDtypeStruct((k, batch), np.int32)}
  return call.fn.lower(abstract, chunk).compile()


def worker_phases(overlap: bool = False) -> dict:
  """Times the set-up before the first training step, in `loop.train_and_evaluate`'s order.

  With `overlap`, the train step compiles in a background thread from abstract shapes while
  the rest is set up (a recommendation for loop.py, measured here), and the first call waits.
  """
  marks, clock = [], [START]

  def mark(name):
    now = time.time()
    marks.append((name, now - clock[0]))
    clock[0] = now

  import functools

  import jax

  from bigmodel_jax import compress, errors, loop, parallel  # noqa: F401  (launch.py's)
  try:
    from bigmodel_jax import logs
    logs.use_compilation_cache()
  except ImportError:  # A --baseline_repo from before bigmodel_jax.logs.
    pass
  mark('imports (launch.py)')
  from bigmodel_jax import checkpoint, data, losses, metrics, models, optim, train_state
  from bigmodel_jax import config as config_lib
  from configs import fashion_mnist_mlp
  config = fashion_mnist_mlp.get_config()
  config.num_epochs = EPOCHS
  config_lib.validate(config)
  par = parallel.from_config(config)
  mark('config + devices')
  ahead = None
  if overlap:
    import concurrent.futures

    import numpy as np

    from bigmodel_jax.data import idx, split_cache
    folder = split_cache.prepared_dir(None, config.data.name)
    with np.load(split_cache.path(folder, 'train')) as cached:  # Sizes from metadata.
      n_train = len(cached['labels'])
    early_model = models.create_model(config.model, idx.NUM_CLASSES)
    early_tx, early_schedule = optim.create_optimizer(
        config.optimizer, n_train // config.batch_size, EPOCHS * (n_train // config.batch_size))
    ahead = concurrent.futures.ThreadPoolExecutor(1).submit(_compile_ahead, config, par,
                                                            early_model, early_tx)
  workdir = tempfile.mkdtemp(prefix='startup-phases-')
  datasets = data.load_datasets(config.data)
  mark('data read')
  model = models.create_model(config.model, datasets.num_classes) if not overlap else early_model
  par.set_logical_axes(models.logical_axes(model, datasets.train.inputs.shape[1:],
                                           datasets.train.inputs.dtype))
  mark('model + logical axes (eval_shape)')
  steps_per_epoch = len(datasets.train) // config.batch_size
  tx, schedule = (optim.create_optimizer(config.optimizer, steps_per_epoch,
                                         EPOCHS * steps_per_epoch)
                  if not overlap else (early_tx, early_schedule))
  train_loss_fn = losses.train_loss(config.loss, config.label_smoothing)
  init = functools.partial(train_state.create_train_state, config.seed, model=model, tx=tx,
                           input_shape=datasets.train.inputs.shape[1:], masked=False,
                           input_dtype=datasets.train.inputs.dtype)
  mark('optimizer')
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 max_to_keep=config.checkpoint_max_to_keep,
                                 async_save=config.checkpoint_async)
  ckpt.latest_step()
  mark('Orbax CheckpointManager')
  state = jax.block_until_ready(par.init(init))
  mark('state init (par.init jit)')
  par.eval_call(loss_fn=losses.LOSSES[config.loss])
  metrics.Console()
  writer = metrics.MetricWriter(os.path.join(workdir, 'tensorboard'))
  mark('console + MetricWriter (tensorboardX)')
  compile_step = par.train_call(state, loss_fn=train_loss_fn)
  learning_rate = jax.jit(schedule)
  learning_rate(0)
  mark('train_call + learning-rate jit')
  _, chunk = next(data.train_chunks(datasets.train, batch_size=config.batch_size,
                                    steps_per_call=config.steps_per_call, seed=config.seed,
                                    epoch=0, shuffle=config.data.shuffle,
                                    rows=par.local_rows(config.batch_size)))
  batch = par.put_batch(chunk, stacked=True)
  mark('first chunk (gather + put)')
  compiled = (ahead.result() if ahead is not None
              else compile_step.fn.lower(state, batch).compile())
  mark(f'compile ({config.steps_per_call}-step scan)')
  state, step_metrics = compiled(state, batch)
  jax.device_get(step_metrics)
  mark(f'first call ({config.steps_per_call} steps)')
  writer.close()
  ckpt.close()
  shutil.rmtree(workdir, ignore_errors=True)
  return {'start_time': START, 'phases': marks}


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
            'stderr_lines': len(proc.stderr.splitlines())}
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


def run_phases(repo: str, cache_dir: str, worker: str = 'phases') -> dict:
  start = time.time()
  proc = subprocess.run([sys.executable, __file__, f'--worker={worker}'], cwd=repo,
                        env=_env(repo, cache_dir), capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f'phases worker failed:\n{proc.stderr[-3000:]}')
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  phases = [('interpreter start', out['start_time'] - start)] + [tuple(p) for p in out['phases']]
  return dict(phases)


def prepare(repos: list[str]) -> None:
  """Prepares the dataset (and the split cache) so that no timed run prepares it."""
  for repo in repos:
    subprocess.run([sys.executable, '-c', 'from bigmodel_jax import data; from configs import '
                    'fashion_mnist_mlp as c; data.load_datasets(c.get_config().data)'],
                   cwd=repo, env=_env(repo, None), check=True, capture_output=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--peers', default='jax_warm,jax_cold,torch')
  parser.add_argument('--baseline_repo', default='', help='checkout for the jax_before peer')
  parser.add_argument('--phase_rounds', type=int, default=3)
  parser.add_argument('--worker', default=None)
  args = parser.parse_args()
  if args.worker in ('phases', 'phases_overlap'):
    print(json.dumps(worker_phases(overlap=args.worker == 'phases_overlap')))
    return

  peers = [p for p in args.peers.split(',') if p]
  if 'jax_before' in peers and not args.baseline_repo:
    parser.error('jax_before needs --baseline_repo')
  info = machine()
  load = ' '.join(f'{x:.1f}' for x in info['load_average'])
  print(f"{info['date_utc']} UTC; {info['cpu']}, {info['cores']} cores, load {load}; "
        f"SIMD {' '.join(info['simd_flags'])}")
  print('versions: ' + ', '.join(f'{k} {v}' for k, v in info['versions'].items()))
  prepare([REPO] + ([args.baseline_repo] if 'jax_before' in peers else []))
  scratch = tempfile.mkdtemp(prefix='startup-xla-')
  warm_dir = os.path.join(scratch, 'warm')
  if 'jax_warm' in peers or args.phase_rounds:
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

  breakdown = {}
  if args.phase_rounds:
    kinds = (['before'] if args.baseline_repo else []) + ['cold', 'cold+overlap', 'warm']
    samples = {kind: [] for kind in kinds}
    for r in range(args.phase_rounds):
      for kind in (kinds if r % 2 == 0 else kinds[::-1]):
        repo, cache, worker = REPO, tempfile.mkdtemp(dir=scratch), 'phases'
        if kind == 'warm':
          cache = warm_dir
        elif kind == 'before':
          repo, cache = args.baseline_repo, ''
        elif kind == 'cold+overlap':
          worker = 'phases_overlap'
        samples[kind].append(run_phases(repo, cache, worker))
    names = list(samples['cold'][0])
    print(f'\nTime to the first training step, in-process, median of {args.phase_rounds} '
          f'rounds ({", ".join(kinds)}), seconds:\n')
    print('| phase | ' + ' | '.join(kinds) + ' |')
    print('|---' * (len(kinds) + 1) + '|')
    totals = {kind: statistics.median(
        sum(v for k, v in s.items() if not k.startswith('first call')) for s in samples[kind])
        for kind in kinds}
    for name in names:
      breakdown[name] = {kind: statistics.median(s[name] for s in samples[kind])
                         for kind in kinds}
      print(f'| {name} | ' + ' | '.join(f'{breakdown[name][k]:.3f}' for k in kinds) + ' |')
    print('| **to the first step** (all but the first call) | '
          + ' | '.join(f'{totals[k]:.2f}' for k in kinds) + ' |')
    breakdown['to_first_step'] = totals
  shutil.rmtree(scratch, ignore_errors=True)
  os.makedirs(os.path.join(REPO, 'bench', 'out'), exist_ok=True)
  with open(os.path.join(REPO, 'bench', 'out', 'startup.json'), 'w') as f:
    json.dump({'machine': info, 'args': vars(args), 'rounds': rounds, 'summary': summary,
               'breakdown': breakdown}, f, indent=2)


if __name__ == '__main__':
  main()
