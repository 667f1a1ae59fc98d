"""Exact selection on a 2-D sharded tree against the same tree replicated, on 8 fake CPU devices.

    .venv/bin/python bench/sharded_selection.py [--weights 50e6] [--layers 4] [--rounds 3]
        [--mesh explicit,auto] [--sparsity 0.9] [--scope global]

The tree is `--layers` kernels [rows, cols] (cols = rows * 3 / 4, rounded to a multiple of 8)
holding at least `--weights` weights in all, plus a bias per kernel (not prunable). Sharded: each
kernel P('data', 'model') on a 2 x 4 mesh ('data', 'model'), biases replicated; replicated: every
leaf P() on the same mesh (each fake device holds and ranks the whole tree, as an unsharded
model would); and, for scale, the tree on one device (`--one_device`: the work of replicated
done once, not 8 times on the same cores). Scores are |W| of float32 normal weights with 1%
exact zeros, so the position tie-break has ties to break. `pruning.masks_from_scores(...,
prunable=kernels)` is jitted once per layout, compiled and run once, the masks are checked
equal; then each round times every layout (block_until_ready), the order reversed every other
round: medians, and the median of the per-round ratios sharded / replicated (paired: drift
cancels). Nothing here asserts a speed.
"""

import argparse
import os
import statistics
import sys
import time

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8').strip()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'bench'))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from startup import describe, machine  # noqa: E402

from bigmodel_jax import pruning  # noqa: E402


def _shape(weights: float, layers: int) -> tuple[int, int]:
  rows = int(np.ceil(np.sqrt(weights / layers * 4 / 3) / 8)) * 8
  cols = max(8, int(round(rows * 3 / 4 / 8)) * 8)
  while rows * cols * layers < weights:
    rows += 8
  return rows, cols


def _tree(rows: int, cols: int, layers: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tree = {}
  for i in range(layers):
    kernel = rng.standard_normal((rows, cols), dtype=np.float32)
    kernel[rng.random((rows, cols)) < 0.01] = 0.0
    tree[f'Dense_{i}'] = {'kernel': kernel, 'bias': rng.standard_normal(cols, dtype=np.float32)}
  return tree


def _place(tree: dict, mesh, sharded: bool) -> dict:
  def put(path, x):
    spec = P('data', 'model') if sharded and path[-1].key == 'kernel' else P()
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree_util.tree_map_with_path(put, tree)


def _time(fn, tree) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(tree))
  return time.perf_counter() - start


def run(kind: str, args, tree: dict) -> dict:
  types = (AxisType.Explicit if kind == 'explicit' else AxisType.Auto,) * 2
  mesh = jax.make_mesh((2, 4), ('data', 'model'), axis_types=types)
  prunable = jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == 'kernel', tree)
  select = jax.jit(lambda s: pruning.masks_from_scores(
      pruning.magnitude(s), args.sparsity, scope=args.scope, prunable=prunable))
  layouts = {'sharded': _place(tree, mesh, True), 'replicated': _place(tree, mesh, False)}
  if args.one_device:
    layouts['one device'] = jax.device_put(tree, jax.devices()[0])
  first = {}
  for name, placed in layouts.items():
    start = time.perf_counter()
    first[name] = jax.device_get(select(placed))
    print(f'  {kind} {name}: compile + first run {time.perf_counter() - start:.2f} s',
          flush=True)
  for name in layouts:
    jax.tree.map(np.testing.assert_array_equal, first['sharded'], first[name])
  del first
  print(f'  {kind}: masks equal across layouts', flush=True)
  seconds = {name: [] for name in layouts}
  ratios = []
  for r in range(args.rounds):
    order = list(layouts) if r % 2 == 0 else list(reversed(layouts))
    got = {name: _time(select, layouts[name]) for name in order}
    for name, s in got.items():
      seconds[name].append(s)
    ratios.append(got['sharded'] / got['replicated'])
    print(f'  {kind} round {r + 1}: ' + ', '.join(f'{n} {s:.3f} s' for n, s in got.items()),
          flush=True)
  result = {name: statistics.median(s) for name, s in seconds.items()}
  result['ratio'] = statistics.median(ratios)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--weights', type=float, default=50e6, help='prunable weights, at least')
  parser.add_argument('--layers', type=int, default=4, help='kernels in the tree')
  parser.add_argument('--rounds', type=int, default=3, help='timed rounds per layout')
  parser.add_argument('--mesh', default='explicit,auto', help='mesh axis types to run')
  parser.add_argument('--sparsity', type=float, default=0.9, help='fraction pruned')
  parser.add_argument('--scope', default='global', help="'global' or 'layerwise'")
  parser.add_argument('--one_device', action=argparse.BooleanOptionalAction, default=True,
                      help='also time the tree on one device')
  args = parser.parse_args()
  info = machine()
  print(describe(info))
  print('versions: ' + ', '.join(f'{k} {v}' for k, v in info['versions'].items()))
  print(f'flags: {vars(args)}; XLA_FLAGS={os.environ["XLA_FLAGS"]}; devices {jax.device_count()}')
  rows, cols = _shape(args.weights, args.layers)
  tree = _tree(rows, cols, args.layers)
  print(f'tree: {args.layers} kernels [{rows}, {cols}] = {args.layers * rows * cols:,} prunable '
        f'weights (+ {args.layers} biases)', flush=True)
  results = {kind: run(kind, args, tree) for kind in args.mesh.split(',')}
  print('\n| mesh | sharded P(data, model) s | replicated P() s | sharded / replicated | '
        'one device s |')
  print('|---|---|---|---|---|')
  for kind, r in results.items():
    one = f"{r['one device']:.3f}" if 'one device' in r else '-'
    print(f"| {kind} | {r['sharded']:.3f} | {r['replicated']:.3f} | {r['ratio']:.2f} | {one} |")


if __name__ == '__main__':
  main()
