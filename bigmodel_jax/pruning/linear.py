"""Linear-like Flax layers as matrices: a kernel view [fan_in, fan_out] and input rows [N, fan_in].

Wanda and SparseGPT prune a layer y = X @ W from statistics of X alone. Every Flax layer whose
output is such a product - X built from its input, W a transpose and reshape of its kernel - is
captured here while the model runs:

  nn.Dense         kernel [in, out]; X = x.reshape(-1, in).
  nn.DenseGeneral  kernel [*contracted, *features] -> [prod(contracted), prod(features)]; X = x
                   with the contracted axes (`axis`) moved last. Flax's attention projections:
                   query/key/value [embed, heads, head_dim] -> [embed, heads * head_dim], out
                   [heads, head_dim, embed] -> [heads * head_dim, embed]. `batch_dims` (a matrix
                   per batch index) is refused.
  nn.Conv          kernel [*window, cin, cout] -> [prod(window) * cin, cout]; X = the input's
                   im2col patches, computed by the layer itself with an identity kernel, so its
                   padding, strides and dilations are the layer's own. Grouped (depthwise)
                   convolutions are refused: each output group sees other inputs.
  nn.Einsum        `einsum_str` splits the kernel's axes into contracted ones (in the input, not
                   in the output) and output ones; the kernel view puts the contracted first.
                   Axes shared by input, kernel and output (a batched map) are refused.

A layer called more than once (shared weights) appears once per call, so its statistics can
cover every call. Kernel paths are '/'.join(module path) + '/kernel', as `masks.leaf_paths`.
"""

import dataclasses
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KINDS = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum)


@dataclasses.dataclass(frozen=True)
class KernelView:
  """A kernel of `shape` as a matrix: its axes `perm` (the `num_in` contracted first, in the
  order of X's columns), flattened to [fan_in, fan_out]. Hashable: a static jit argument."""
  shape: tuple[int, ...]
  perm: tuple[int, ...]
  num_in: int

  @property
  def fan_in(self) -> int:
    return math.prod(self.shape[p] for p in self.perm[:self.num_in])

  def to_matrix(self, kernel: jax.Array) -> jax.Array:
    """[fan_in, fan_out] from a kernel of `shape` (also for masks)."""
    return jnp.transpose(kernel, self.perm).reshape(self.fan_in, -1)

  def from_matrix(self, matrix: jax.Array) -> jax.Array:
    """The kernel (or mask) of `shape` from its matrix [fan_in, fan_out]."""
    permuted = tuple(self.shape[p] for p in self.perm)
    return jnp.transpose(matrix.reshape(permuted), tuple(np.argsort(self.perm)))


class Call(NamedTuple):
  """One call of a linear-like layer: its kernel path, kernel view and input rows [N, fan_in];
  for a layer that cannot be seen as a matrix, view and rows are None and `refused` says why."""
  path: str
  view: KernelView | None
  rows: jax.Array | None
  refused: str = ''


def _identity(n: int) -> tuple[int, ...]:
  return tuple(range(n))


def _dense(module, x, args, kwargs):
  del args, kwargs
  view = KernelView((x.shape[-1], module.features), (0, 1), 1)
  return view, x.reshape(-1, x.shape[-1])


def _dense_general(module, x, args, kwargs):
  del args, kwargs
  if tuple(np.atleast_1d(module.batch_dims)):
    return f'nn.DenseGeneral with batch_dims={module.batch_dims} (a matrix per batch index)', None
  axis = tuple(sorted(a % x.ndim for a in np.atleast_1d(module.axis)))
  features = tuple(np.atleast_1d(module.features).tolist())
  shape = tuple(x.shape[a] for a in axis) + features
  view = KernelView(shape, _identity(len(shape)), len(axis))
  moved = jnp.moveaxis(x, axis, tuple(range(x.ndim - len(axis), x.ndim)))
  return view, moved.reshape(-1, view.fan_in)


def _conv(module, x, args, kwargs):
  del args, kwargs
  if module.feature_group_count != 1:
    return f'nn.Conv with feature_group_count={module.feature_group_count}', None
  window = tuple(np.atleast_1d(module.kernel_size).tolist())
  shape = window + (x.shape[-1], module.features)
  view = KernelView(shape, _identity(len(shape)), len(shape) - 1)
  # The layer's own convolution of an identity kernel gives the patches, column f being entry f
  # of the flattened kernel [*window, cin]; computed later, outside the interception.
  patcher = module.clone(parent=None, features=view.fan_in, use_bias=False, mask=None,
                         precision=jax.lax.Precision.HIGHEST)
  return view, (patcher, x)


def _patches(patcher, x, fan_in: int) -> jax.Array:
  eye = jnp.eye(fan_in, dtype=patcher.param_dtype).reshape(
      *np.atleast_1d(patcher.kernel_size).tolist(), -1, fan_in)
  return patcher.apply({'params': {'kernel': eye}}, x).reshape(-1, fan_in)


def _einsum(module, x, args, kwargs):
  spec = kwargs.get('einsum_str', args[1] if len(args) > 1 else None) or module.einsum_str
  if not isinstance(spec, str) or '->' not in spec or spec.count(',') != 1:
    return f'nn.Einsum with einsum_str={spec!r} (not "input,kernel->output")', None
  spec = spec.replace(' ', '')
  lhs, out = spec.split('->')
  given, kernel = lhs.split(',')
  if '...' in kernel:
    return f'nn.Einsum {spec!r} with "..." in the kernel', None
  free = [chr(0x100 + i) for i in range(x.ndim - len(given.replace('...', '')))]
  given, out = given.replace('...', ''.join(free)), out.replace('...', ''.join(free))
  if len(set(given)) < len(given) or len(set(kernel)) < len(kernel):
    return f'nn.Einsum {spec!r} with a repeated index', None
  contracted = [c for c in kernel if c in given and c not in out]
  odd = [c for c in kernel if (c in given) == (c in out)] + [
      c for c in given if c not in kernel and c not in out]
  if odd or not contracted:
    return f'nn.Einsum {spec!r} (index {"".join(odd) or "none"} is not a plain contraction)', None
  perm = tuple(kernel.index(c) for c in contracted) + tuple(
      i for i, c in enumerate(kernel) if c not in contracted)
  view = KernelView(tuple(module.shape), perm, len(contracted))
  order = [i for i, c in enumerate(given) if c not in contracted] + [
      given.index(c) for c in contracted]
  return view, jnp.transpose(x, order).reshape(-1, view.fan_in)


_VIEWS = ((nn.Dense, _dense), (nn.DenseGeneral, _dense_general), (nn.Conv, _conv),
          (nn.Einsum, _einsum))


def calls(apply_fn, variables: Any, inputs: Any) -> list[Call]:
  """Runs `apply_fn(variables, inputs)`; every call of a linear-like layer, in call order."""
  recorded = []

  def capture(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__':
      for kind, view_of in _VIEWS:
        if isinstance(module, kind):
          x = kwargs['inputs'] if 'inputs' in kwargs else args[0]
          path = '/'.join(module.path) + '/kernel'
          view, rows = view_of(module, jnp.asarray(x), args, kwargs)
          recorded.append(Call(path, None, None, view) if isinstance(view, str)
                          else Call(path, view, rows))
          break
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    apply_fn(variables, inputs)
  return [c._replace(rows=_patches(*c.rows, c.view.fan_in)) if isinstance(c.rows, tuple) else c
          for c in recorded]
