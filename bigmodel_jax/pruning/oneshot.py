"""One-shot post-training pruning of a whole model from calibration data (Wanda, SparseGPT).

    params, masks = oneshot.prune(model.apply, params, batches, method='sparsegpt',
                                  prunable=prunable, sparsity=0.5)    # or n=2, m=4
    params, masks = oneshot.prune(model.apply, params, loader, input_key='image',
                                  group_by=('encoder/block_*',), method='wanda', ...)

The inputs of every linear-like layer - `nn.Dense`, `nn.DenseGeneral` (Flax's attention
projections), `nn.Conv` (as im2col patches) and `nn.Einsum` - are captured with
`flax.linen.intercept_methods` while the model runs on the calibration batches, seen as rows
X: [N, fan_in] of a matrix product with the kernel's matrix view (`linear`), and reduced to
`layerwise.LayerStats`; a layer called several times (shared weights) is calibrated on every
call. Layers are handled in groups (by default their top-level module: a Transformer block, or
an MLP layer; `group_by` names deeper ones), in the order the forward pass reaches them, and
each group is calibrated on the outputs of the groups already pruned - the sequential procedure
of the Wanda and SparseGPT papers, so that later layers compensate for the error of earlier
ones.
"""

import fnmatch
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import layerwise, linear, selection
from bigmodel_jax.pruning import masks as masks_lib


def calibration_inputs(batches: Iterable, input_key: Any = None) -> list:
  """The model inputs of every calibration batch, as a list (iterators are read once).

  Args:
    batches: any iterable of arrays, or of dicts / tuples holding the model input.
    input_key: how to take the input from a batch: a key (`batch[input_key]`, e.g. 'image' or
      0) or a callable (`input_key(batch)`); None: each batch is the input array itself.

  Raises:
    ConfigError: `batches` is not an iterable of batches, is empty, or holds dicts / tuples
      without `input_key`, or `input_key` is not in a batch.
  """
  if isinstance(batches, str | bytes | Mapping) or hasattr(batches, 'shape') or not isinstance(
      batches, Iterable):
    raise ConfigError(f'batches must be an iterable of calibration batches (a list, generator, '
                      f'data loader); got {type(batches).__name__}'
                      + (f' of shape {batches.shape}: split it, e.g. np.array_split(x, 4)'
                         if hasattr(batches, 'shape') else '') + '.')
  out = []
  for i, batch in enumerate(batches):
    if callable(input_key):
      batch = input_key(batch)
    elif input_key is not None:
      try:
        batch = batch[input_key]
      except (KeyError, IndexError, TypeError) as e:
        keys = list(batch) if isinstance(batch, Mapping) else None
        raise ConfigError(f'Calibration batch {i} has no input_key={input_key!r}'
                          + (f'; its keys: {", ".join(map(str, keys))}' if keys else '')
                          + '.') from e
    elif isinstance(batch, Mapping | tuple | list):
      raise ConfigError(f'Calibration batch {i} is a {type(batch).__name__}'
                        + (f' with keys {", ".join(map(str, batch))}'
                           if isinstance(batch, Mapping) else '')
                        + ': pass input_key= naming the model input (a key, an index or a '
                          'callable).')
    if not hasattr(batch, 'shape'):
      batch = np.asarray(batch)
    out.append(batch)
  if not out:
    raise ConfigError('batches is empty: one-shot pruning needs at least one calibration batch.')
  return out


def _rows_by_layer(apply_fn, params, inputs, names) -> dict[str, list[jax.Array]]:
  """{kernel path: the input rows [N, fan_in] of each of its calls} for the layers `names`."""
  seen = {name: [] for name in names}
  for call in linear.calls(apply_fn, {'params': params}, inputs):
    if call.path in seen:
      seen[call.path].append(call.rows)
  return seen


def layer_calls(apply_fn: Callable, params: Any, inputs: Any) -> dict[str, linear.Call]:
  """{kernel path: its first call} of the linear-like layers, in the order the model calls them
  (shapes only: nothing is computed)."""
  order: dict[str, linear.Call] = {}

  def run(p, x):
    for call in linear.calls(apply_fn, {'params': p}, x):
      order.setdefault(call.path, call._replace(rows=None))
  jax.eval_shape(run, params, inputs)
  return order


def collect_stats(apply_fn: Callable, params: Any, batches: Iterable,
                  names: list[str]) -> dict[str, layerwise.LayerStats]:
  """Input statistics of the linear-like layers `names` (kernel paths) over calibration batches
  (model inputs, see `calibration_inputs`), over every call of each layer."""
  batches = calibration_inputs(batches)
  views = layer_calls(apply_fn, params, jnp.asarray(batches[0]))
  missing = [name for name in names if name not in views or views[name].view is None]
  if missing:
    raise ConfigError(f'names holds {missing[0]!r}, which is not a kernel the model uses in a '
                      'linear-like layer (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum).')
  return _collect(apply_fn, params, batches, names, views)


def _collect(apply_fn, params, batches, names, views):
  def batch_stats(params, inputs, stats):
    seen = _rows_by_layer(apply_fn, params, inputs, names)
    for name in names:
      for rows in seen[name]:
        stats[name] = layerwise.accumulate(stats[name], rows)
    return stats

  step = jax.jit(batch_stats)
  stats = {name: layerwise.init_stats(views[name].view.fan_in) for name in names}
  for inputs in batches:
    stats = step(params, jnp.asarray(inputs), stats)
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


def prune(apply_fn: Callable, params: Any, batches: Iterable, *, method: str, prunable: Any,
          sparsity: float | None = None, n: int = 0, m: int = 0, block_size: int = 128,
          damp: float = 0.01, input_key: Any = None, group_by: int | Sequence[str] = 1,
          log: Callable[[str], None] | None = None) -> tuple[Any, Any]:
  """Prunes every prunable linear-like kernel one-shot; returns (new params, masks).

  Args:
    apply_fn: the model's `apply`, called as apply_fn({'params': params}, inputs) (wrap it, e.g.
      functools.partial(model.apply, train=False), for other arguments).
    params: trained params.
    batches: calibration batches, any iterable (read once, kept, reused per group): model
      inputs (e.g. token windows [batch, seq_len]), or dicts / tuples with `input_key`.
    method: 'wanda', 'sparsegpt' (which also updates the kept weights), or 'magnitude' (|W|
      over the whole layer, the papers' baseline).
    prunable: bool tree like params (`masks.prunable_tree`); True only for kernels of
      nn.Dense, nn.DenseGeneral, nn.Conv or nn.Einsum layers (see `linear`).
    sparsity: fraction of each layer's weights to remove (Wanda: of each output unit's inputs).
    n, m: instead of `sparsity`, keep n of every m consecutive inputs of each output (of the
      kernel's matrix view: for a Conv, along [*window, cin] flattened).
    block_size, damp: SparseGPT's column block and Hessian dampening.
    input_key: the model input of a batch: `batch[input_key]`, or `input_key(batch)` if callable.
    group_by: the units calibrated in turn: an int d groups layers by the first d names of
      their module path (1: top-level modules, e.g. 'block_0'); or path patterns (e.g.
      ('encoder/layer_*', 'head')): each layer joins the shortest prefix of its module path that
      matches one.
    log: optional callback for one progress line per group.
  """
  if method not in METHODS:
    raise ConfigError(f'method={method!r} is not a one-shot method; use one of: '
                      f'{", ".join(METHODS)}.')
  batches = calibration_inputs(batches, input_key)
  names = masks_lib.leaf_paths(params)
  if jax.tree.structure(prunable) != jax.tree.structure(params):
    raise ConfigError('prunable must be a tree of bools with the structure of params '
                      '(masks.prunable_tree(params)).')
  chosen = [name for name, flag in zip(names, jax.tree.leaves(prunable), strict=True) if flag]
  views = layer_calls(apply_fn, params, jnp.asarray(batches[0]))
  leaves = dict(zip(names, jax.tree.leaves(params), strict=True))
  _check_chosen(chosen, views, leaves)
  groups = _groups([name for name in views if name in chosen], group_by)
  keep = {name: jnp.ones(jnp.shape(leaf), jnp.bool_) for name, leaf in leaves.items()}
  if log is not None:
    log(f'{method}: {len(chosen)} layers in {len(groups)} groups (group_by={group_by!r})')
  for g, (group, members) in enumerate(groups.items()):
    current = _tree_from(params, names, leaves)
    stats = _collect(apply_fn, current, batches, members, views)
    for name in members:
      leaves[name], keep[name] = _prune_layer(
          leaves[name], stats[name], sparsity, RULES[method], views[name].view, n, m,
          block_size, damp)
    if log is not None:
      log(f'{method}: pruned {group} ({len(members)} layers, group {g + 1}/{len(groups)})')
  return _tree_from(params, names, leaves), _tree_from(params, names, keep)


def _prune_layer(kernel, stats, sparsity, rule, view, n, m, block_size, damp):
  """The rule on the kernel's matrix view, compiled once per matrix shape (q, k, v, out alike)."""
  new, mask = _jitted_rule(view.to_matrix(kernel), stats, sparsity, rule, n, m, block_size, damp)
  return view.from_matrix(new), view.from_matrix(mask)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))  # Sparsity static: exact counts.
def _jitted_rule(matrix, stats, sparsity, rule, n, m, block_size, damp):
  return rule(matrix, stats, sparsity, n, m, block_size, damp)


def _check_chosen(chosen: list[str], views: dict[str, linear.Call], leaves: dict) -> None:
  """Every chosen kernel belongs to a layer seen as a matrix, with the kernel's shape."""
  for name in chosen:
    call = views.get(name)
    if call is None:
      raise ConfigError(
          f'prunable is True for {name!r}, which is not the kernel of a linear-like layer the '
          'model calls (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum); set it False there.')
    if call.view is None:
      raise ConfigError(f'prunable is True for {name!r}, a layer one-shot pruning cannot take '
                        f'as one matrix: {call.refused}; set it False there.')
    if tuple(jnp.shape(leaves[name])) != call.view.shape:
      raise ConfigError(f'{name} has shape {tuple(jnp.shape(leaves[name]))} but its layer uses '
                        f'a kernel of shape {call.view.shape}.')


def _groups(order: list[str], group_by) -> dict[str, list[str]]:
  """{group: its kernel paths}, groups and members in call order (see `prune`'s group_by)."""
  if isinstance(group_by, bool) or not (
      (isinstance(group_by, int) and group_by >= 1)
      or (isinstance(group_by, Sequence) and not isinstance(group_by, str) and group_by
          and all(isinstance(p, str) for p in group_by))):
    raise ConfigError(f'group_by={group_by!r} is invalid: give a depth >= 1 or a list of module '
                      "path patterns (e.g. ['encoder/layer_*']; a bare string is not a list).")
  groups: dict[str, list[str]] = {}
  used = set()
  for name in order:
    parts = name.split('/')[:-1]  # The module path.
    if isinstance(group_by, int):
      key = '/'.join(parts[:group_by])
    else:
      key = next(('/'.join(parts[:d]) for d in range(1, len(parts) + 1)
                  if any(fnmatch.fnmatchcase('/'.join(parts[:d]), p) for p in group_by)), None)
      if key is None:
        raise ConfigError(f'{name} lies under none of group_by={list(group_by)}; add a pattern '
                          'for it (e.g. its top-level module).')
      used.update(p for p in group_by if fnmatch.fnmatchcase(key, p))
    groups.setdefault(key, []).append(name)
  unused = [p for p in (() if isinstance(group_by, int) else group_by) if p not in used]
  if unused:
    raise ConfigError(f'group_by pattern {unused[0]!r} matches no prunable layer\'s module path.')
  return groups


def _tree_from(template, names, values):
  return jax.tree.unflatten(jax.tree.structure(template), [values[name] for name in names])
