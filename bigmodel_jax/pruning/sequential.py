"""One-shot pruning of a decoder language model block by block (Wanda, SparseGPT, OWL).

    windows = sequential.calibration_windows(train_tokens, 64, 256, seed=0)
    params, masks, info = sequential.prune(model, params, windows, method='wanda', sparsity=0.5)
    params, masks, info = sequential.prune(model, params, windows, method='sparsegpt', n=2, m=4)
    params, masks, info = sequential.prune(model, params, windows, method='wanda', sparsity=0.7,
                                           owl=sequential.Owl())

The procedure of the Wanda and SparseGPT papers' code: the calibration windows are embedded
once; then for each block in order, the inputs of its linear layers are reduced to statistics
(`layerwise.LayerStats`) in one pass of the block over the current hidden states, every chosen
layer of the block is pruned from them, and the *pruned* block's outputs become the next block's
inputs - so later blocks are calibrated on what the pruned model really feeds them. Only one
block's statistics exist at a time (X^T X of SparseGPT is freed after its block).

OWL (Yin et al. 2023, "Outlier Weighed Layerwise sparsity") first runs the dense model block by
block and measures each block's outlier ratio: the fraction of its Wanda scores |W| * ||X|| above
`m` times their mean. Blocks with more outliers are pruned less: the keep ratios are the outlier
ratios mapped linearly onto [0, 2 * lam], then shifted to average 1 - sparsity - the same total
as uniform sparsity, since every block has the same size.

The model must provide `embed(tokens)` and `block(i)` (an unbound module taking (x, positions)),
as `models.Llama` does; other Flax models use the generic `oneshot.prune`.
"""

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import layerwise, linear, oneshot

# The linear layers of a block that one-shot pruning takes (never embeddings, norms or the head).
LAYERS = ('attn/query', 'attn/key', 'attn/value', 'attn/out', 'mlp/gate', 'mlp/up', 'mlp/down')


@dataclasses.dataclass(frozen=True)
class Owl:
  """OWL's hyperparameters: outliers are scores above `m` x the block mean; keep ratios spread
  over 2 * `lam` (the paper's M = 5 and lambda = 0.08)."""
  m: float = 5.0
  lam: float = 0.08


def prunable_tree(params: Any, layers: tuple[str, ...] = LAYERS) -> Any:
  """Bool tree like params: True for the kernels `prune` takes (`layers` of every block)."""
  def take(path, _):
    names = [str(getattr(k, 'key', k)) for k in path]
    return (len(names) == 4 and names[0].startswith('block_') and names[-1] == 'kernel'
            and '/'.join(names[1:3]) in layers)
  return jax.tree_util.tree_map_with_path(take, params)


def calibration_windows(tokens, num: int, length: int, seed: int) -> np.ndarray:
  """`num` windows [num, length] of consecutive tokens at random offsets (seeded), as the papers
  draw calibration data from their training text."""
  tokens = np.asarray(tokens, np.int32).reshape(-1)
  if num < 1 or length < 2:
    raise ConfigError(f'Calibration needs num >= 1 windows of length >= 2; got {num} x {length}.')
  if len(tokens) <= length:
    raise ConfigError(f'The calibration text has {len(tokens)} tokens, too few for windows of '
                      f'{length}.')
  starts = np.random.default_rng(seed).integers(0, len(tokens) - length, num)
  return np.stack([tokens[s:s + length] for s in starts])


def _layer_rows(block: nn.Module, block_params, x, positions, layers):
  """Runs one block; {layer: [its input rows [N, fan_in] of every call]} for `layers`, and
  {layer: its kernel view} (`linear`: any linear-like layer, each call of a shared one)."""
  rows = {name: [] for name in layers}
  views = {}
  apply = lambda variables, x: block.apply(variables, x, positions)
  for call in linear.calls(apply, {'params': block_params}, x):
    name = call.path[:-len('/kernel')]
    if name in rows:
      if call.view is None:
        raise ConfigError(f'layers holds {name!r}, a layer one-shot pruning cannot take as one '
                          f'matrix: {call.refused}.')
      rows[name].append(call.rows)
      views[name] = call.view
  return rows, views


def _views(block, block_params, x, layers) -> dict[str, linear.KernelView]:
  """The kernel views of `layers` (shapes only)."""
  views = {}
  jax.eval_shape(lambda p, x: views.update(
      _layer_rows(block, p, x, jnp.arange(x.shape[1]), layers)[1]), block_params, x)
  missing = [name for name in layers if name not in views]
  if missing:
    raise ConfigError(f'layers holds {missing[0]!r}, which the block never calls as a '
                      'linear-like layer (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum).')
  return views


@functools.partial(jax.jit, static_argnames=('block', 'layers', 'need_xtx'))
def _accumulate(block, block_params, x, stats, *, layers, need_xtx):
  positions = jnp.arange(x.shape[1])
  seen, _ = _layer_rows(block, block_params, x, positions, layers)
  out = {}
  for name in layers:
    s = stats[name]
    for inputs in seen[name]:
      inputs = inputs.astype(jnp.float32)
      xtx = s.xtx + jnp.matmul(inputs.T, inputs, precision=jax.lax.Precision.HIGHEST) \
          if need_xtx else s.xtx
      s = layerwise.LayerStats(s.sq_norm + jnp.sum(inputs * inputs, 0), xtx,
                               s.count + inputs.shape[0])
    out[name] = s
  return out


@functools.partial(jax.jit, static_argnames='block')
def _forward(block, block_params, x):
  return block.apply({'params': block_params}, x, jnp.arange(x.shape[1]))


def _get(tree, name):
  for key in name.split('/'):
    tree = tree[key]
  return tree


def _block_stats(block, block_params, hidden, layers, need_xtx, batch_size):
  """Statistics of the inputs of `layers` of one block over all hidden states [N, L, E]."""
  stats = {}
  views = _views(block, block_params, hidden[:1], layers)
  for name in layers:
    fan_in = views[name].fan_in
    stats[name] = layerwise.LayerStats(
        jnp.zeros((fan_in,), jnp.float32),
        jnp.zeros((fan_in, fan_in) if need_xtx else (0, 0), jnp.float32),
        jnp.zeros((), jnp.int32))
  for i in range(0, len(hidden), batch_size):
    stats = _accumulate(block, block_params, hidden[i:i + batch_size], stats, layers=layers,
                        need_xtx=need_xtx)
  return stats, views


def _block_outputs(block, block_params, hidden, batch_size):
  return jnp.concatenate([_forward(block, block_params, hidden[i:i + batch_size])
                          for i in range(0, len(hidden), batch_size)])


def _block(model, i: int) -> nn.Module:
  # One name for all blocks: equal blocks are then one static argument, compiled once.
  return model.block(i).clone(name='block')


def _embed(model, params, windows, batch_size):
  embed = jax.jit(lambda p, t: model.apply({'params': p}, t, method='embed'))
  return jnp.concatenate([embed(params, jnp.asarray(windows[i:i + batch_size]))
                          for i in range(0, len(windows), batch_size)])


def owl_sparsities(model, params, windows, sparsity: float, owl: Owl, *, layers=LAYERS,
                   batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """(per-block sparsity, per-block outlier ratio) by OWL from the dense model."""
  hidden = _embed(model, params, windows, batch_size)
  ratios = []
  for i in range(model.num_layers):
    block, block_params = _block(model, i), params[f'block_{i}']
    stats, views = _block_stats(block, block_params, hidden, layers, False, batch_size)
    scores = jnp.concatenate([layerwise.wanda_scores(
        views[n].to_matrix(_get(block_params, n)['kernel']), stats[n]).reshape(-1)
        for n in layers])
    ratios.append(float(jnp.mean(scores > owl.m * jnp.mean(scores))))
    hidden = _block_outputs(block, block_params, hidden, batch_size)
  ratios = np.asarray(ratios)
  spread = ratios.max() - ratios.min()
  keep = (ratios - ratios.min()) / spread * 2 * owl.lam if spread > 0 else np.zeros_like(ratios)
  keep = keep - keep.mean() + (1 - sparsity)
  sparsities = 1 - keep
  if sparsities.min() < 0 or sparsities.max() >= 1:
    raise ConfigError(f'OWL with lam={owl.lam} at sparsity {sparsity} asks some block for a '
                      f'sparsity outside [0, 1) ({sparsities.min():.3f} to '
                      f'{sparsities.max():.3f}); lower lam.')
  return sparsities, ratios


def _check(model, params, method, sparsity, n, m, owl, layers):
  if method not in oneshot.RULES:
    raise ConfigError(f'method={method!r} is not a one-shot method; use one of: '
                      f'{", ".join(oneshot.RULES)}.')
  if not (hasattr(model, 'embed') and hasattr(model, 'block')):
    raise ConfigError(f'{type(model).__name__} has no embed() and block(i): block-by-block '
                      'pruning needs them (models.Llama has them; use oneshot.prune otherwise).')
  if owl is not None and (n or m):
    raise ConfigError('OWL sets per-block sparsities; it does not apply to N:M patterns.')
  missing = [name for name in layers if not _has(params['block_0'], name)]
  if missing:
    raise ConfigError(f'The blocks have no layer {missing[0]!r}; the layers to prune are '
                      f'{", ".join(layers)}.')


def _has(tree, name):
  try:
    _get(tree, name)['kernel']
    return True
  except (KeyError, TypeError):
    return False


# Over 80 lines: the docstring is long; the loop body is the procedure, read in one place.
def prune(model, params: Any, windows, *, method: str, sparsity: float | None = None,
          n: int = 0, m: int = 0, owl: Owl | None = None, layers: tuple[str, ...] = LAYERS,
          batch_size: int = 8, block_size: int = 128, damp: float = 0.01,
          log: Callable[[str], None] | None = None) -> tuple[Any, Any, dict]:
  """Prunes every block's linear layers one-shot, block by block; (params, masks, info).

  Args:
    model: a model with `embed` and `block(i)` (e.g. models.Llama).
    params: its params.
    windows: calibration token windows [N, L] (`calibration_windows`); unused by magnitude.
    method: 'magnitude' (|W| over each whole layer, the papers' baseline), 'wanda' or
      'sparsegpt'.
    sparsity: fraction of each layer's weights to remove; or n and m for N:M (e.g. 2, 4).
    owl: OWL's per-block sparsities (unstructured only) instead of the same for every block.
    layers: the block-relative layers to prune.
    batch_size: calibration windows per forward pass.
    block_size, damp: SparseGPT's column block and Hessian dampening.
    log: optional callback, one line per block.

  Returns:
    (pruned params, bool masks like params (True = keep), info: {'block_sparsity',
     'outlier_ratio' (OWL), 'seconds'}).
  """
  _check(model, params, method, sparsity, n, m, owl, layers)
  start = time.perf_counter()
  info: dict[str, Any] = {}
  sparsities = [sparsity] * model.num_layers
  if owl is not None:
    found, ratios = owl_sparsities(model, params, windows, sparsity, owl, layers=layers,
                                   batch_size=batch_size)
    sparsities = [jnp.float32(s) for s in found]  # Traced: one compilation for all blocks.
    info.update(block_sparsity=found.tolist(), outlier_ratio=ratios.tolist())
  rule = jax.jit(oneshot.RULES[method], static_argnums=(2, 3, 4, 5, 6) if owl is None
                 else (3, 4, 5, 6))
  calibrate = method != 'magnitude'
  hidden = _embed(model, params, windows, batch_size) if calibrate else None
  params = jax.tree.map(lambda x: x, params)  # New containers; arrays are replaced, not edited.
  masks = jax.tree.map(lambda x: jnp.ones(x.shape, jnp.bool_), params)
  for i in range(model.num_layers):
    name, block = f'block_{i}', _block(model, i)
    block_params = params[name]
    stats, views = (_block_stats(block, block_params, hidden, layers, method == 'sparsegpt',
                                 batch_size) if calibrate else (None, None))
    for layer in layers:
      kernel = _get(block_params, layer)['kernel']
      view = views[layer] if calibrate else linear.KernelView(  # Magnitude: [*in, out].
          tuple(kernel.shape), tuple(range(kernel.ndim)), kernel.ndim - 1)
      new, keep = rule(view.to_matrix(kernel), stats[layer] if calibrate else None,
                       sparsities[i], n, m, block_size, damp)
      _get(block_params, layer)['kernel'] = view.from_matrix(new)
      _get(masks[name], layer)['kernel'] = view.from_matrix(keep)
    del stats  # The block's X^T X go before the next block's are made.
    if calibrate and i + 1 < model.num_layers:
      hidden = _block_outputs(block, block_params, hidden, batch_size)
    if log is not None:
      log(f'{method}: block {i + 1}/{model.num_layers} pruned '
          f'({time.perf_counter() - start:.1f} s)')
  info['seconds'] = time.perf_counter() - start
  return params, masks, info
