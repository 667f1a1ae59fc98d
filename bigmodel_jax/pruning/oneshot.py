"""One-shot post-training pruning of a whole model from calibration data (Wanda, SparseGPT).

    params, masks = oneshot.prune(model.apply, params, batches, method='sparsegpt',
                                  prunable=prunable, sparsity=0.5)    # or n=2, m=4

The inputs of every prunable `nn.Dense` are captured with `flax.linen.intercept_methods` while
the model runs on the calibration batches, and reduced to `layerwise.LayerStats`. Layers are handled
in groups by their top-level module (a Transformer block, or an MLP layer), in the order the
forward pass reaches them, and each group is calibrated on the outputs of the groups already
pruned - the sequential procedure of the Wanda and SparseGPT papers, so that later layers
compensate for the error of earlier ones. Works on any Flax model whose prunable kernels belong
to `nn.Dense` layers (2-D kernels [in, out]).
"""

from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import layerwise, selection
from bigmodel_jax.pruning import masks as masks_lib


def _dense_inputs(apply_fn, params, inputs) -> dict[str, jax.Array]:
  """Runs the model; {kernel path: input [tokens, in]} of every nn.Dense, in call order."""
  seen = {}

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == '__call__':
      x = args[0]
      seen.setdefault('/'.join(context.module.path) + '/kernel', x.reshape(-1, x.shape[-1]))
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(capture):
    apply_fn({'params': params}, inputs)
  return seen


def _dense_calls(apply_fn, params, inputs) -> list[str]:
  """Kernel paths of the Dense layers in the order one forward pass calls them."""
  order = []
  # Shapes only; the names are kept in a list because pytrees sort dict keys.
  jax.eval_shape(lambda p, x: order.extend(_dense_inputs(apply_fn, p, x)), params, inputs)
  return order


def collect_stats(apply_fn: Callable, params: Any, batches: Iterable[jax.Array],
                  names: list[str]) -> dict[str, layerwise.LayerStats]:
  """Input statistics of the Dense layers `names` (kernel paths) over calibration batches."""

  def batch_stats(params, inputs, stats):
    seen = _dense_inputs(apply_fn, params, inputs)
    return {name: layerwise.accumulate(stats[name], seen[name]) for name in names}

  step = jax.jit(batch_stats)
  kernels = dict(zip(masks_lib.leaf_paths(params), jax.tree.leaves(params), strict=True))
  stats = {name: layerwise.init_stats(int(kernels[name].shape[0])) for name in names}
  count = 0
  for inputs in batches:
    stats = step(params, jnp.asarray(inputs), stats)
    count += 1
  if not count:
    raise ConfigError('One-shot pruning needs at least one calibration batch.')
  return stats


def _sparsegpt(kernel, stats, sparsity, n, m, block_size, damp):
  return layerwise.sparsegpt(kernel, stats, sparsity, n=n, m=m, block_size=block_size, damp=damp)


def _wanda(kernel, stats, sparsity, n, m, block_size, damp):
  del block_size, damp
  mask = layerwise.wanda_mask(kernel, stats, sparsity, n=n, m=m)
  return jnp.where(mask, kernel, 0), mask


def _magnitude(kernel, stats, sparsity, n, m, block_size, damp):
  """|W|, the baseline of both papers: the lowest fraction of the whole layer (as the Wanda
  reference code's `prune_magnitude`), or N:M groups along each output's inputs."""
  del stats, block_size, damp
  scores = jnp.abs(kernel)
  if n:
    mask = selection.nm_mask(scores, n, m)
  else:
    mask = selection.lowest_k_masks([scores], layerwise._count(sparsity, scores.size))[0]
  return jnp.where(mask, kernel, 0), mask


# Per-layer rules: (kernel, stats, sparsity, n, m, block_size, damp) -> (new kernel, mask).
RULES = {'wanda': _wanda, 'sparsegpt': _sparsegpt, 'magnitude': _magnitude}
METHODS = tuple(RULES)


def prune(apply_fn: Callable, params: Any, batches: list, *, method: str, prunable: Any,
          sparsity: float | None = None, n: int = 0, m: int = 0, block_size: int = 128,
          damp: float = 0.01, log: Callable[[str], None] | None = None) -> tuple[Any, Any]:
  """Prunes every prunable Dense kernel one-shot; returns (new params, masks).

  Args:
    apply_fn: the model's `apply`.
    params: trained params.
    batches: calibration model inputs (e.g. token windows [batch, seq_len]); reused per group.
    method: 'wanda', 'sparsegpt' (which also updates the kept weights), or 'magnitude' (|W|
      over the whole layer, the papers' baseline).
    prunable: bool tree like params (`masks.prunable_tree`); only Dense kernels may be True.
    sparsity: fraction of each layer's weights to remove (Wanda: of each output unit's inputs).
    n, m: instead of `sparsity`, keep n of every m consecutive inputs of each output.
    block_size, damp: SparseGPT's column block and Hessian dampening.
    log: optional callback for one progress line per group.
  """
  if method not in METHODS:
    raise ConfigError(f'One-shot method {method!r}; use one of: {", ".join(METHODS)}.')
  names = masks_lib.leaf_paths(params)
  flags = dict(zip(names, jax.tree.leaves(prunable), strict=True))
  chosen = [name for name, flag in flags.items() if flag]
  order = _dense_calls(apply_fn, params, jnp.asarray(batches[0]))
  missing = [name for name in chosen if name not in order]
  if missing:
    raise ConfigError(f'One-shot pruning handles nn.Dense kernels only; {missing[0]!r} is not '
                      'one (narrow prune.include).')
  groups: dict[str, list[str]] = {}
  for name in order:
    if name in chosen:
      groups.setdefault(name.split('/')[0], []).append(name)
  leaves = dict(zip(names, jax.tree.leaves(params), strict=True))
  keep = {name: jnp.ones(leaf.shape, jnp.bool_) for name, leaf in leaves.items()}
  prune_layer = jax.jit(RULES[method], static_argnums=(2, 3, 4, 5, 6))
  for g, (group, members) in enumerate(groups.items()):
    current = _tree_from(params, names, leaves)
    stats = collect_stats(apply_fn, current, batches, members)
    for name in members:
      leaves[name], keep[name] = prune_layer(leaves[name], stats[name], sparsity, n, m, block_size,
                                             damp)
    if log is not None:
      log(f'{method}: pruned {group} ({len(members)} layers, group {g + 1}/{len(groups)})')
  return _tree_from(params, names, leaves), _tree_from(params, names, keep)


def _tree_from(template, names, values):
  return jax.tree.unflatten(jax.tree.structure(template), [values[name] for name in names])
