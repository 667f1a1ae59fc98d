"""How fast the input pipeline serves examples, next to how fast the train step consumes them.

    .venv/bin/python bench/input_pipeline.py [--rounds 5] [--steps_per_call 100]

On the real Fashion-MNIST (configs/fashion_mnist_mlp.py, batch 64), alternating in each round:
  gather       `data.train_chunks` over one epoch: permutation + fancy-index gathers of chunks
  gather+put   the same, each chunk then placed on the device as the loop does (`put_batch`)
  train step   the compiled `steps_per_call`-step call of the main job on one resident chunk,
               as many calls as an epoch holds: the rate the pipeline has to keep up with
Also times reading the splits (the split cache, then TFDS when `--tfds` is given). Reports
examples/s per round, medians and the pipeline's headroom (pipeline rate / step rate).
Nothing here asserts a speed.
"""

import argparse
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps_per_call', type=int, default=100)
  parser.add_argument('--tfds', action='store_true', help='also time the uncached TFDS read')
  args = parser.parse_args()

  import jax
  import numpy as np

  from bigmodel_jax import data, losses, models, optim, parallel, timing, train_state
  from bigmodel_jax.data import pipeline
  from configs import fashion_mnist_mlp

  config = fashion_mnist_mlp.get_config()
  config.steps_per_call = args.steps_per_call
  start = time.perf_counter()
  datasets = data.load_datasets(config.data)
  load_s = time.perf_counter() - start
  reads = {'load_datasets (split cache)': load_s}
  if args.tfds:
    for split in ('train', 'test'):
      start = time.perf_counter()
      pipeline._read_source(pipeline._idx_source(config.data, split), config.data, split)
      reads[f'TFDS read of {split} (uncached)'] = time.perf_counter() - start

  par = parallel.from_config(config)
  batch, k = config.batch_size, config.steps_per_call
  steps = len(datasets.train) // batch
  model = models.create_model(config.model, datasets.num_classes)
  tx, _ = optim.create_optimizer(config.optimizer, steps, 3 * steps)
  state = par.init(lambda: train_state.create_train_state(
      0, model=model, tx=tx, input_shape=datasets.train.inputs.shape[1:]))
  call = par.train_call(state, loss_fn=losses.train_loss(config.loss, config.label_smoothing))
  _, chunk = next(data.train_chunks(datasets.train, batch_size=batch, steps_per_call=k, seed=0,
                                    epoch=0, shuffle=True))
  resident = par.put_batch(chunk, stacked=True)
  call(state, resident)  # Compiles (AOT, in CompiledCall); `state` is donated: make a fresh one.
  state = par.init(lambda: train_state.create_train_state(
      0, model=model, tx=tx, input_shape=datasets.train.inputs.shape[1:]))
  compiled = call._compiled[next(iter(call._compiled))]
  run = timing.donated_timer(compiled, state, resident)
  calls = steps // k

  def gather(epoch, put):
    start, n = time.perf_counter(), 0
    for _, c in data.train_chunks(datasets.train, batch_size=batch, steps_per_call=k, seed=0,
                                  epoch=epoch, shuffle=True):
      if put:
        jax.block_until_ready(par.put_batch(c, stacked=True))
      n += c['targets'].size
    return n / (time.perf_counter() - start)

  rates = {'gather': [], 'gather+put': [], 'train step': []}
  for r in range(args.rounds):
    jobs = [('gather', lambda r=r: gather(r, False)), ('gather+put', lambda r=r: gather(r, True)),
            ('train step', lambda: calls * k * batch / run(calls))]
    for name, job in (jobs if r % 2 == 0 else jobs[::-1]):
      rates[name].append(job())

  print(f'{time.strftime("%Y-%m-%d %H:%M", time.gmtime())} UTC; '
        f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load '
        f'{" ".join(f"{x:.1f}" for x in os.getloadavg())}; jax {jax.__version__}, '
        f'numpy {np.__version__}; batch {batch}, {k} steps per call, {args.rounds} rounds\n')
  for name, seconds in reads.items():
    print(f'{name}: {seconds:.3f} s')
  step_rate = statistics.median(rates['train step'])
  print('\n| what | examples/s per round | median | vs train step |')
  print('|---|---|---|---|')
  for name, values in rates.items():
    median = statistics.median(values)
    print(f"| {name} | {' / '.join(f'{v / 1e3:.0f}k' for v in values)} | {median:,.0f} | "
          f'{median / step_rate:.1f}x |')


if __name__ == '__main__':
  main()
