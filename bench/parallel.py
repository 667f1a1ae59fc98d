"""Cost of each parallel path, and data-parallel scaling from 1 to all local devices.

    .venv/bin/python bench/parallel.py                       # this machine's devices
    .venv/bin/python bench/parallel.py --fake_cpu_devices 8  # CPU only: 8 fake devices
    python bench/parallel.py --model mlp --batch_per_device 256   # on a GPU / TPU host

Two tables, from the library's own compiled train calls (`parallel.Parallelism.train_call`, 100
steps per call, batches put on the devices per call as the training loop does):

  overhead  steps/s of `single`, `pmap` and `sharded` on ONE device at the same global batch
            (`--overhead_batch`, default 64): what each path adds over plain jit.
  scaling   examples/s per device with a fixed per-device batch (`--batch_per_device`) on 1, 2,
            4, ... local devices (`pmap` and `sharded` data parallel, plus `sharded` with the
            params split over an fsdp axis of 2 when there are >= 2 devices), and the scaling
            efficiency = per-device rate / the 1-device rate.

Each row is the median of `--repeats` timed calls, the rows of a table taken in turn so that a
drifting machine speed affects them alike. Fake CPU devices share the same cores, so on a CPU
the scaling table shows overhead, not speed-up. Writes `--out` (bench/out/parallel.json).
Nothing here asserts a speed.
"""

import argparse
import os
import sys


def _flags():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--fake_cpu_devices', type=int, default=0,
                      help='> 0: make the CPU look like this many devices (set before JAX).')
  parser.add_argument('--overhead_batch', type=int, default=64)
  parser.add_argument('--batch_per_device', type=int, default=64)
  parser.add_argument('--hidden', default='512,256', help='MLP hidden sizes (the seed: 512,256).')
  parser.add_argument('--steps_per_call', type=int, default=100)
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--skip_scaling', action='store_true')
  parser.add_argument('--out', default='bench/out/parallel.json', help='JSON written here.')
  return parser.parse_args()


ARGS = _flags()
if ARGS.fake_cpu_devices:
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={ARGS.fake_cpu_devices}')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bigmodel_jax import losses, models, parallel, train_state  # noqa: E402
from configs import default  # noqa: E402


def _runner(layout: dict, global_batch: int):
  """A function that runs one timed call of `steps_per_call` steps and returns its seconds."""
  config = default.get_config().parallelism
  config.update(layout)
  par = parallel.Parallelism(config, batch_size=global_batch, eval_batch_size=global_batch)
  model = models.MLP(hidden_sizes=tuple(int(h) for h in ARGS.hidden.split(',')))
  init = functools.partial(train_state.create_train_state, 0, model=model, tx=optax.adam(1e-3),
                           input_shape=(784,))
  holder = [par.init(init)]
  call = par.train_call(holder[0], loss_fn=losses.cross_entropy)
  rng = np.random.default_rng(0)
  k = ARGS.steps_per_call
  rows = par.local_rows(global_batch)
  local = rows.stop - rows.start
  chunk = {'inputs': rng.normal(size=(k, local, 784)).astype(np.float32),
           'targets': rng.integers(0, 10, (k, local)).astype(np.int32)}

  def run() -> float:
    start = time.perf_counter()
    holder[0], metrics = call(holder[0], par.put_batch(chunk, stacked=True))
    jax.block_until_ready(metrics)
    return time.perf_counter() - start
  run()  # Compile and warm up.
  return par, run


def _measure(rows: dict[str, tuple[dict, int]]) -> dict[str, dict]:
  runners = {name: _runner(layout, batch) for name, (layout, batch) in rows.items()}
  times = {name: [] for name in rows}
  for _ in range(ARGS.repeats):
    for name, (_, run) in runners.items():
      times[name].append(run())
  out = {}
  for name, (par, _) in runners.items():
    seconds = statistics.median(times[name])
    batch = rows[name][1]
    out[name] = {'summary': par.summary(), 'devices': len(par.devices), 'global_batch': batch,
                 'steps_per_s': ARGS.steps_per_call / seconds,
                 'examples_per_s': ARGS.steps_per_call * batch / seconds,
                 'spread': (max(times[name]) - min(times[name])) / seconds}
  return out


def main():
  n = jax.local_device_count()
  print(f'{n} local {jax.default_backend()} device(s) ({jax.devices()[0].device_kind}), '
        f'{jax.process_count()} process(es); MLP 784-{ARGS.hidden.replace(",", "-")}-10, Adam, '
        f'{ARGS.steps_per_call} steps per call, median of {ARGS.repeats}', flush=True)
  b = ARGS.overhead_batch
  overhead = _measure({
      'single': ({'mode': 'single'}, b),
      'pmap (1 device)': ({'mode': 'pmap', 'num_devices': 1}, b),
      'sharded (1 device)': ({'mode': 'sharded', 'num_devices': 1}, b),
  })
  base = overhead['single']['steps_per_s']
  print(f'\nOverhead at global batch {b} on one device:\n')
  print('| path | steps/s | vs single | spread |\n|---|---|---|---|')
  for name, r in overhead.items():
    r['vs_single'] = r['steps_per_s'] / base - 1
    print(f'| {name} | {r["steps_per_s"]:.0f} | {100 * r["vs_single"]:+.1f}% | '
          f'{100 * r["spread"]:.0f}% |')

  scaling = {}
  if not ARGS.skip_scaling:
    counts = [c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256) if c <= n]
    counts += [n] if n not in counts else []
    rows = {}
    for c in counts:
      batch = ARGS.batch_per_device * c
      rows[f'pmap x{c}'] = ({'mode': 'pmap', 'num_devices': c}, batch)
      rows[f'sharded x{c}'] = ({'mode': 'sharded', 'num_devices': c}, batch)
      if c >= 2:
        rows[f'sharded fsdp=2 x{c}'] = ({'mode': 'sharded', 'num_devices': c, 'fsdp': 2}, batch)
    scaling = _measure(rows)
    print(f'\nScaling at {ARGS.batch_per_device} examples per device:\n')
    print('| run | devices | global batch | examples/s | per device | efficiency |\n'
          '|---|---|---|---|---|---|')
    for name, r in scaling.items():
      family = name.rsplit(' x', 1)[0]
      one = scaling.get(f'{family} x1') or scaling['sharded x1']
      r['per_device'] = r['examples_per_s'] / r['devices']
      r['efficiency'] = r['per_device'] / one['per_device']
      print(f'| {name} | {r["devices"]} | {r["global_batch"]} | {r["examples_per_s"]:.0f} | '
            f'{r["per_device"]:.0f} | {100 * r["efficiency"]:.0f}% |')

  path = os.path.join(REPO, ARGS.out)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump({'overhead': overhead, 'scaling': scaling, 'args': vars(ARGS),
               'jax': jax.__version__, 'backend': jax.default_backend(),
               'device_kind': jax.devices()[0].device_kind, 'machine': platform.processor(),
               'date': datetime.date.today().isoformat()}, f, indent=1)
  print(f'\nwrote {path}')


if __name__ == '__main__':
  main()
