"""Costs of pruning machinery on the seed MLP (batch 64, Adam or AdamW), on this machine's CPU.

    .venv/bin/python bench/prune_overhead.py [--repeats 31] [--optimizer adam|adamw]

Times blocks of `--block_steps` steps (100-step compiled calls on resident data, as `jax_bare` in
mlp_throughput.py) of each variant in turn, `--repeats` rounds. A variant's overhead is the median
over rounds of its block time / the dense block of the same round (paired, so that drift of the
machine's speed, which is of the order of the differences, cancels), with the interquartile
range of those ratios; ms/step are medians over rounds. Variants:
  dense      the plain train step
  masked     the same with fixed masks through `pruning.masked(adam)` (masks in the state);
             also with mask_gradients=False (only the updates masked)
  gradual    updates-only masking + the Zhu & Gupta hook recomputing global magnitude masks
             every 100 steps
the optimizer update alone (`tx.update` + `apply_updates` on fixed gradients, no forward or
backward pass) dense and masked, timed the same way: the difference is the mask's own cost, which
the whole step's round-to-round spread hides; and the time of one global mask selection over the
535k weights: our bisection (no sort) vs a full sort for the threshold. Prints a markdown table
and writes bench/out/prune_overhead.json. Nothing here asserts a speed.
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
import optax  # noqa: E402

from bigmodel_jax import models, optim, pruning, timing, train, train_state  # noqa: E402
from bigmodel_jax.pruning import gradual  # noqa: E402
from configs import fashion_mnist_mlp_gradual  # noqa: E402


def _gradual_config_optimizer():
  # configs/fashion_mnist_mlp_gradual.py's optimizer (AdamW, weight decay 0.1 on kernels) at a
  # constant 1e-3, built by the library as the launcher builds it.
  opt = fashion_mnist_mlp_gradual.get_config().optimizer
  opt.learning_rate, opt.schedule = 1e-3, 'constant'
  return optim.create_optimizer(opt, steps_per_epoch=1, total_steps=1)[0]


OPTIMIZERS = {'adam': lambda: optax.adam(1e-3), 'adamw': _gradual_config_optimizer}


def _state(masked: bool, mask_gradients: bool = True, optimizer: str = 'adam'):
  model = models.MLP()
  tx = OPTIMIZERS[optimizer]()
  tx = pruning.masked(tx, mask_gradients=mask_gradients) if masked else tx
  state = jax.jit(lambda: train_state.create_train_state(
      0, model=model, tx=tx, input_shape=(784,), masked=masked))()
  if masked:
    prunable = pruning.prunable_tree(state.params)
    masks = pruning.masks_from_scores(pruning.magnitude(state.params), 0.9, prunable=prunable)
    state = state.replace(params=pruning.apply_masks(state.params, masks), masks=masks)
  return state


def _block_timer(state, hook, calls: int):
  """A function that runs `calls` compiled 100-step calls and returns ms per step."""
  rng = np.random.default_rng(0)
  chunk = jax.device_put({'inputs': rng.normal(size=(100, 64, 784)).astype(np.float32),
                          'targets': rng.integers(0, 10, (100, 64)).astype(np.int32)})
  step = jax.jit(lambda s, c: train.train_steps(s, c, before_step=hook), donate_argnums=0)
  run = timing.donated_timer(step, state, chunk)
  return lambda: run(calls) / (100 * calls) * 1e3


def _interleaved(timers: dict, repeats: int) -> tuple[dict[str, float], dict[str, list[float]]]:
  """Blocks timed round-robin (the first timer is the reference).

  Returns ({variant: median ms/step}, {variant: [q1, median, q3] of its per-round ratio to the
  reference's block of the same round}).
  """
  times = timing.interleaved(timers, repeats)
  reference = next(iter(timers))
  ratios = {}
  for name, t in times.items():
    q = statistics.quantiles([a / b for a, b in zip(t, times[reference], strict=True)], n=4)
    ratios[name] = [q[0], q[1], q[2]]
  return {name: statistics.median(t) for name, t in times.items()}, ratios


def _update_timer(state, calls: int):
  """Like `_block_timer`, for the optimizer update alone: `tx.update` + `apply_updates` on fixed
  gradients, 100 per compiled call (no forward or backward pass, so that the mask's share of the
  update is not lost in the step's spread)."""
  # Gradients as an argument (not constants the compiler could fold), one tenth of them zero.
  grads = jax.tree.map(lambda p: jnp.where(jnp.arange(p.size).reshape(p.shape) % 10 == 0, 0.0,
                                           1e-3), state.params)
  extra = {} if state.masks is None else {'masks': state.masks}

  def updates(s, grads):
    def body(_, carry):
      params, opt_state = carry
      u, opt_state = s.tx.update(grads, opt_state, params, **extra)
      return optax.apply_updates(params, u), opt_state
    params, opt_state = jax.lax.fori_loop(0, 100, body, (s.params, s.opt_state))
    # A scalar of the result, for the timer to wait on.
    return s.replace(params=params, opt_state=opt_state), jax.tree.leaves(params)[0].ravel()[0]

  run = timing.donated_timer(jax.jit(updates, donate_argnums=0), state, grads)
  return lambda: run(calls) / (100 * calls) * 1e3


def _selection_ms(repeats: int) -> tuple[float, float]:
  params = models.MLP().init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))['params']
  prunable = pruning.prunable_tree(params)
  scores = pruning.magnitude(params)
  bisect = jax.jit(lambda s: pruning.masks_from_scores(s, 0.9, prunable=prunable))

  @jax.jit
  def by_sort(s):
    kernels = [s[n]['kernel'] for n in ('Dense_0', 'Dense_1', 'Dense_2')]
    flat = jnp.concatenate([k.ravel() for k in kernels])
    threshold = jnp.sort(flat)[int(0.9 * flat.size)]
    return [k >= threshold for k in kernels]

  out = []
  for fn in (bisect, by_sort):
    jax.block_until_ready(fn(scores))
    times = []
    for _ in range(repeats * 5):
      start = time.perf_counter()
      jax.block_until_ready(fn(scores))
      times.append(time.perf_counter() - start)
    out.append(statistics.median(times) * 1e3)
  return out[0], out[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=31, help='rounds of blocks')
  parser.add_argument('--block_steps', type=int, default=300, help='steps per block (x100)')
  parser.add_argument('--optimizer', choices=sorted(OPTIMIZERS), default='adam',
                      help='adamw = the gradual config\'s AdamW with weight decay 0.1')
  args = parser.parse_args()
  opt = args.optimizer
  calls = max(1, args.block_steps // 100)
  prunable = pruning.prunable_tree(_state(False).params)
  hook = gradual.mask_updater(final_sparsity=0.9, begin_step=0, end_step=10**6, frequency=100,
                              prunable=prunable)
  ms, ratios = _interleaved({
      'dense': _block_timer(_state(False, optimizer=opt), None, calls),
      'masked': _block_timer(_state(True, optimizer=opt), None, calls),
      'updates_only': _block_timer(_state(True, mask_gradients=False, optimizer=opt), None, calls),
      'gradual': _block_timer(_state(True, mask_gradients=False, optimizer=opt), hook, calls),
  }, args.repeats)
  dense, masked, updates_only, grad = (ms[k] for k in ('dense', 'masked', 'updates_only',
                                                       'gradual'))
  # The optimizer update alone, 10x as many per block (it is ~10x shorter than a step).
  update_ms, _ = _interleaved({
      'dense': _update_timer(_state(False, optimizer=opt), 10 * calls),
      'masked': _update_timer(_state(True, optimizer=opt), 10 * calls),
      'updates_only': _update_timer(_state(True, mask_gradients=False, optimizer=opt), 10 * calls),
  }, args.repeats)
  bisect_ms, sort_ms = _selection_ms(args.repeats)
  results = {'machine': f'{platform.machine()}, {os.cpu_count()} cores',
             'date': time.strftime('%Y-%m-%d'), 'jax': jax.__version__, 'optimizer': opt,
             'dense_step_ms': dense, 'masked_step_ms': masked, 'gradual_step_ms': grad,
             'masked_updates_only_step_ms': updates_only,
             'repeats': args.repeats, 'block_steps': 100 * calls,
             # Paired: median (and quartiles) over rounds of variant block / dense block - 1.
             'masked_overhead': ratios['masked'][1] - 1,
             'gradual_overhead': ratios['gradual'][1] - 1,
             'masked_updates_only_overhead': ratios['updates_only'][1] - 1,
             'overhead_quartiles': {k: [v[0] - 1, v[2] - 1] for k, v in ratios.items()
                                    if k != 'dense'},
             'select_bisection_ms': bisect_ms, 'select_sort_ms': sort_ms,
             # The optimizer update alone (median ms); its masked - dense difference over the
             # dense step is the fixed mask's cost per step, measured where it is not noise.
             'update_ms': update_ms,
             'mask_cost_of_step': {k: (update_ms[k] - update_ms['dense']) / dense
                                   for k in ('masked', 'updates_only')}}
  os.makedirs(os.path.join(REPO, 'bench', 'out'), exist_ok=True)
  name = 'prune_overhead.json' if opt == 'adam' else f'prune_overhead_{opt}.json'
  with open(os.path.join(REPO, 'bench', 'out', name), 'w') as f:
    json.dump(results, f, indent=1)
  print(f'Machine: {results["machine"]}; {results["date"]}; jax {jax.__version__}\n')
  print(f'{args.repeats} rounds of {100 * calls}-step blocks, optimizer {opt}\n')
  print('| step | ms/step (median) | vs dense, paired median (quartiles) |\n|---|---|---|')
  print(f'| dense | {dense:.3f} | |')
  quart = results['overhead_quartiles']
  for key, name, value in (
      ('masked', 'masked (fixed masks, 90%)', masked),
      ('updates_only', 'masked, updates only (mask_gradients=False)', updates_only),
      ('gradual', 'gradual (masks every 100 steps)', grad)):
    print(f'| {name} | {value:.3f} | {ratios[key][1] - 1:+.1%} ({quart[key][0]:+.1%} .. '
          f'{quart[key][1]:+.1%}) |')
  print(f'\nOptimizer update alone (ms): dense {update_ms["dense"]:.4f}, masked '
        f'{update_ms["masked"]:.4f}, updates only {update_ms["updates_only"]:.4f}; the mask\'s '
        f'cost as a share of the dense step: {results["mask_cost_of_step"]["masked"]:+.2%} / '
        f'{results["mask_cost_of_step"]["updates_only"]:+.2%}')
  print(f'\nGlobal selection over 535k weights: bisection {bisect_ms:.2f} ms, '
        f'full sort {sort_ms:.2f} ms')


if __name__ == '__main__':
  main()
