"""One-shot post-training pruning of single linear layers from calibration data: Wanda, SparseGPT.

Both methods prune a trained layer without retraining, using only statistics of its inputs over a
small calibration set, and are what large language models are pruned with:

    stats = layerwise.init_stats(kernel.shape[0])
    for x in calibration_inputs:                # x: [tokens, in], batch and sequence flattened
      stats = layerwise.accumulate(stats, x)
    mask = layerwise.wanda_mask(kernel, stats, 0.5)              # or n=2, m=4
    new_kernel, mask = layerwise.sparsegpt(kernel, stats, 0.5)   # also updates kept weights

- Wanda (Sun et al. 2023): score |W_ij| * ||X_i||_2, each output unit pruned by the same
  fraction; only the mask changes.
- SparseGPT (Frantar & Alistarh 2023): the layer-wise OBS reconstruction of the original
  `fasterprune`, written for the Flax layout. Inputs are processed in order, in blocks; pruning
  input i's weights is compensated by updating the weights of the later inputs through the
  inverse Hessian of the layer's squared reconstruction error, H = X^T X.

Kernels are Flax [in, out] (PyTorch's W transposed), so the reference's column blocks of W are
row blocks here. Masks are bool [in, out], True = keep; N:M groups run along the input
dimension, as in `selection.nm_mask`. Everything is jittable; keep `n`, `m`, `block_size`
static. `sparsity` may be a traced scalar (counts are then rounded in float32, so they are exact
for layers of up to 2^24 weights; Python floats are exact always).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import selection

_HIGHEST = jax.lax.Precision.HIGHEST  # Accelerators' default float32 matmuls lose Hessian bits.


class LayerStats(NamedTuple):
  """Sums over calibration rows of a linear layer's inputs x: [tokens, in]; a pytree.

  Attributes:
    sq_norm: [in] float32, sum of x**2 per input feature (Wanda's ||X_i||_2 squared).
    xtx: [in, in] float32, sum of x^T x (SparseGPT's Hessian, up to a factor).
    count: int32 scalar, number of rows accumulated.
  """
  sq_norm: jax.Array
  xtx: jax.Array
  count: jax.Array


def init_stats(in_features: int) -> LayerStats:
  """Empty statistics for a layer with `in_features` inputs."""
  if not isinstance(in_features, int) or in_features < 1:
    raise ConfigError(f'in_features={in_features!r} is invalid: it must be a positive integer.')
  return LayerStats(jnp.zeros((in_features,), jnp.float32),
                    jnp.zeros((in_features, in_features), jnp.float32), jnp.zeros((), jnp.int32))


def accumulate(stats: LayerStats, x: jax.Array) -> LayerStats:
  """`stats` plus the rows of x: [tokens, in] (flatten batch and sequence dims first)."""
  in_features = stats.sq_norm.shape[0]
  if x.ndim != 2 or x.shape[1] != in_features:
    raise ConfigError(f'Calibration inputs have shape {x.shape}; they must be [tokens, '
                      f'{in_features}] for these stats (flatten batch and sequence dims).')
  x = x.astype(jnp.float32)
  return LayerStats(stats.sq_norm + jnp.sum(x * x, axis=0), stats.xtx + _gram(x),
                    stats.count + x.shape[0])


def _gram(x: jax.Array, parts: int = 4) -> jax.Array:
  """x^T x: [in, in] for x: [tokens, in], from the products of its upper block triangle.

  XLA has no symmetric rank-k update (BLAS syrk), so the inputs are split into `parts` groups
  and only the parts * (parts + 1) / 2 products on and above the diagonal are computed (10 of 16
  for 4: ~0.6x the time of the full product on CPU); the rest are their transposes, so the
  result is exactly symmetric.
  """
  width = -(-x.shape[1] // parts)
  if width < 128:  # Small layers: one product; splitting would only add overhead.
    return jnp.matmul(x.T, x, precision=_HIGHEST)
  groups = [x[:, i:i + width] for i in range(0, x.shape[1], width)]
  upper = {(i, j): jnp.matmul(groups[i].T, groups[j], precision=_HIGHEST)
           for i in range(len(groups)) for j in range(i, len(groups))}
  return jnp.block([[upper[i, j] if i <= j else upper[j, i].T for j in range(len(groups))]
                    for i in range(len(groups))])


def reconstruction_error(x: jax.Array, kernel: jax.Array, new_kernel: jax.Array) -> jax.Array:
  """||x @ kernel - x @ new_kernel||_F^2 / ||x @ kernel||_F^2 for x: [tokens, in]."""
  x = x.astype(jnp.float32)
  y = jnp.matmul(x, kernel.astype(jnp.float32), precision=_HIGHEST)
  y_new = jnp.matmul(x, new_kernel.astype(jnp.float32), precision=_HIGHEST)
  return jnp.sum((y - y_new) ** 2) / jnp.sum(y * y)


def _check_layer(kernel: jax.Array, stats: LayerStats, need_xtx: bool) -> None:
  if kernel.ndim != 2:
    raise ConfigError(f'The kernel has shape {kernel.shape}; one-shot pruning takes a single '
                      'linear layer kernel [in, out].')
  fan_in = kernel.shape[0]
  shapes = {'sq_norm': (stats.sq_norm.shape, (fan_in,))}
  if need_xtx:
    shapes['xtx'] = (stats.xtx.shape, (fan_in, fan_in))
  for name, (got, want) in shapes.items():
    if tuple(got) != want:
      raise ConfigError(f'The stats field {name} has shape {tuple(got)} but the kernel '
                        f'{kernel.shape} has {fan_in} inputs, so it must be {want}.')


def _check_target(kernel: jax.Array, sparsity, n: int, m: int) -> bool:
  """Validates sparsity xor n:m for `kernel`; True for N:M."""
  if n or m:
    if sparsity is not None:
      raise ConfigError(f'Both sparsity={sparsity!r} and N:M {n}:{m} were given; give one.')
    selection.check_nm(n, m)
    if kernel.shape[0] % m:
      raise ConfigError(f'The kernel has shape {kernel.shape}: N:M sparsity {n}:{m} groups the '
                        f'input dimension (axis 0) in blocks of {m}, which needs it divisible '
                        f'by {m}.')
    return True
  if sparsity is None:
    raise ConfigError('No pruning target was given: pass a sparsity in [0, 1) or n and m.')
  if isinstance(sparsity, int | float):
    selection.check_sparsity(sparsity)
  return False


def _count(sparsity, size):
  """round(sparsity * size) for an int or int array `size`: exact ints for Python floats."""
  if isinstance(sparsity, int | float):
    return np.asarray([int(round(sparsity * int(s))) for s in np.ravel(size)]).reshape(
        np.shape(size))
  size = jnp.asarray(size, jnp.float32)
  return jnp.round(jnp.asarray(sparsity, jnp.float32) * size).astype(jnp.int32)


def wanda_scores(kernel: jax.Array, stats: LayerStats) -> jax.Array:
  """Wanda's importance |W_ij| * ||X_i||_2: [in, out] float32 for kernel: [in, out]."""
  _check_layer(kernel, stats, need_xtx=False)
  norms = jnp.sqrt(jnp.maximum(stats.sq_norm, 0.0))
  return jnp.abs(kernel.astype(jnp.float32)) * norms[:, None]


def per_output_mask(scores: jax.Array, sparsity) -> jax.Array:
  """Prunes the round(sparsity * in) lowest scores of each output column of scores: [in, out].

  Ties go by position: the earlier input is pruned first. Every column has the same count.
  """
  return _lowest_k_per_column(scores, _count(sparsity, scores.shape[0]))


def _sort_keys(scores: jax.Array) -> jax.Array:
  """uint32 keys in the order of a float sort (jnp.sort): -0 equals +0, every NaN is last."""
  keys = selection.sortable_keys(jnp.where(scores == 0, 0.0, scores))
  return jnp.where(jnp.isnan(scores), jnp.uint32(0xFFFFFFFF), keys)


def _column_kth_smallest(keys: jax.Array, k, bits: int) -> jax.Array:
  """Per column of keys: [n, c] (uint32 below 2**bits), the smallest t with count(keys <= t) >= k.

  Found bit by bit from the top, as `selection.kth_smallest_key` does over a whole tree: `bits`
  counting passes, no sort. k: int32, scalar or [c]. Returns [c] uint32; 0 where k is 0.
  """
  def body(i, prefix):
    bit = jnp.uint32(bits - 1) - i.astype(jnp.uint32)
    low = prefix | ((jnp.uint32(1) << bit) - jnp.uint32(1))  # Bit `bit` clear, lower bits set.
    count = jnp.sum(keys <= low, axis=0, dtype=jnp.int32)
    return jnp.where(count >= k, prefix, prefix | (jnp.uint32(1) << bit))

  return jax.lax.fori_loop(0, bits, body, jnp.zeros(keys.shape[1:], jnp.uint32))


def _lowest_k_per_column(scores: jax.Array, k) -> jax.Array:
  """Keep-mask: bool [n, c] pruning exactly the k lowest of each column of scores: [n, c].

  Ties at a column's threshold go by row, the earlier first. XLA:CPU sorts are slow (a stable
  argsort of 1024 x 1024 takes longer than the whole search), so the threshold is searched:
  32 counting passes over the keys and, only when some column has more ties at its threshold
  than it prunes, a second search over the rows of the ties.
  """
  keys = _sort_keys(scores)
  k = jnp.asarray(k, jnp.int32)
  threshold = _column_kth_smallest(keys, k, 32)
  below = keys < threshold
  tie = keys == threshold
  ties_needed = k - jnp.sum(below, axis=0, dtype=jnp.int32)

  def earliest_ties(_):
    rows = jnp.arange(scores.shape[0], dtype=jnp.uint32)[:, None]
    tie_rows = jnp.where(tie, rows, jnp.uint32(scores.shape[0]))
    last = _column_kth_smallest(tie_rows, ties_needed, int(scores.shape[0]).bit_length())
    return tie & (rows <= last) & (ties_needed > 0)

  every_tie = jnp.all(jnp.sum(tie, axis=0, dtype=jnp.int32) == ties_needed)
  pruned_ties = jax.lax.cond(every_tie, lambda _: tie, earliest_ties, None)
  return ~(below | pruned_ties)


def wanda_mask(kernel: jax.Array, stats: LayerStats, sparsity=None, *, n: int = 0,
               m: int = 0) -> jax.Array:
  """Wanda keep-mask: bool [in, out] for kernel: [in, out].

  Args:
    kernel: [in, out] trained weights.
    stats: calibration statistics of the layer's inputs (`accumulate`); only sq_norm is used.
    sparsity: fraction in [0, 1) to prune from every output unit (column): exactly
      round(sparsity * in) of its inputs, so the layer loses out * round(sparsity * in).
    n, m: instead of `sparsity`, keep the n highest-scoring of every m consecutive inputs of each
      output (e.g. 2:4).
  """
  _check_layer(kernel, stats, need_xtx=False)
  nm = _check_target(kernel, sparsity, n, m)
  scores = wanda_scores(kernel, stats)
  if nm:
    return selection.nm_mask(scores, n, m)
  return per_output_mask(scores, sparsity)


def _inverse_hessian_factor(xtx: jax.Array, damp) -> tuple[jax.Array, jax.Array]:
  """(U upper triangular with U^T U = (H + damping)^-1: [in, in], dead inputs: bool [in]).

  One Cholesky factorisation and one triangular inverse, where the reference computes H^-1 and
  factors it again: with J the reversal of the inputs and J H J = L L^T, U = J L^-1 J is upper
  triangular with a positive diagonal and U^T U = J L^-T L^-1 J = H^-1, so it is the factor.
  """
  diag = jnp.diagonal(xtx)
  dead = diag == 0
  # An input that never fires has no curvature: unit diagonal keeps H invertible, and its
  # weights (zeroed by the caller) then neither matter nor propagate.
  h = xtx + jnp.diag(jnp.where(dead, 1.0, 0.0))
  h = h + jnp.eye(h.shape[0], dtype=h.dtype) * (damp * jnp.mean(jnp.diagonal(h)))
  # H is symmetric (`_gram`), and the factorisation reads one triangle: no symmetrising copy.
  lower = jax.lax.linalg.cholesky(h[::-1, ::-1], symmetrize_input=False)
  return jnp.triu(_lower_triangular_inverse(lower)[::-1, ::-1]), dead


def _lower_triangular_inverse(lower: jax.Array, leaf: int = 128) -> jax.Array:
  """L^-1 for L lower triangular [n, n], by halves: [[A, 0], [B, C]]^-1 is
  [[A^-1, 0], [-C^-1 B A^-1, C^-1]], so most of the work is in matmuls (on CPU ~2x faster than
  one triangular solve against the identity, which only the leaves do)."""
  n = lower.shape[0]
  if n <= leaf:
    return jax.scipy.linalg.solve_triangular(lower, jnp.eye(n, dtype=lower.dtype), lower=True)
  k = n // 2
  a_inv = _lower_triangular_inverse(lower[:k, :k], leaf)
  c_inv = _lower_triangular_inverse(lower[k:, k:], leaf)
  below = -jnp.matmul(c_inv, jnp.matmul(lower[k:, :k], a_inv, precision=_HIGHEST),
                      precision=_HIGHEST)
  return jnp.block([[a_inv, jnp.zeros((k, n - k), lower.dtype)], [below, c_inv]])


_LEAF_ROWS = 16  # Rows pruned one by one, between the matmuls that update a block's later rows.


def _prune_rows(w, u, keep, n: int, m: int):
  """Prunes the rows of w: [s, out] in order, each one's error spread over the later rows.

  Args:
    w: the rows' current weights, every earlier row's update applied.
    u: [s, s] the rows' block of the inverse Hessian factor.
    keep: bool [s, out], or None for N:M: each group of m rows is then chosen on its weights as
      they are when its first row is reached.
  Returns:
    (pruned rows [s, out], errors [s, out], keep [s, out]).
  """
  unit = m if keep is None else 1
  inv_diag_sq = 1.0 / jnp.diagonal(u) ** 2

  def group_step(g, carry):
    w, errors, keep = carry
    if unit > 1:
      rows = jax.lax.dynamic_slice_in_dim(w, g * unit, unit, axis=0)
      scale = jax.lax.dynamic_slice_in_dim(inv_diag_sq, g * unit, unit)
      group_keep = selection.nm_mask(rows * rows * scale[:, None], n, m)
      keep = jax.lax.dynamic_update_slice_in_dim(keep, group_keep, g * unit, axis=0)
    for r in range(unit):
      i = g * unit + r
      q = jnp.where(keep[i], w[i], 0.0)
      err = (w[i] - q) / u[i, i]
      # U is upper triangular, so rows before i are untouched; row i is set to q exactly.
      w = (w - u[i][:, None] * err[None, :]).at[i].set(q)
      errors = errors.at[i].set(err)
    return w, errors, keep

  keep = jnp.ones(w.shape, jnp.bool_) if keep is None else keep
  return jax.lax.fori_loop(0, w.shape[0] // unit, group_step, (w, jnp.zeros_like(w), keep))


def _leaf_rows(block: int, unit: int) -> int:
  """Rows per leaf: the largest multiple of `unit` dividing `block`, at most ~_LEAF_ROWS."""
  return max(r for r in range(unit, max(_LEAF_ROWS, unit) + 1, unit) if block % r == 0)


def _prune_block(w, u, keep, n: int, m: int):
  """`_prune_rows` for a whole block w: [block, out], in leaves of a few rows: each leaf's rows
  update only each other one by one, and the block's later rows get the leaf's errors in one
  product (the reference updates all later rows of the block after every row)."""
  unit = m if keep is None else 1
  block, leaf = w.shape[0], _leaf_rows(w.shape[0], unit)
  keep = jnp.ones(w.shape, jnp.bool_) if keep is None else keep

  u_t = u.T  # Column j of U as a row: the coefficients of input j's error in later rows.

  def leaf_step(j, carry):
    w, errors, keep = carry
    start = j * leaf
    rows = lambda x: jax.lax.dynamic_slice_in_dim(x, start, leaf, axis=0)
    u_leaf = jax.lax.dynamic_slice_in_dim(rows(u), start, leaf, axis=1)
    q, err, leaf_keep = _prune_rows(rows(w), u_leaf, None if unit > 1 else rows(keep), n, m)
    # Rows before the leaf have zero coefficients (U is upper triangular), and the leaf's own
    # rows are then overwritten with their final values.
    w = w - jnp.matmul(jax.lax.dynamic_slice_in_dim(u_t, start, leaf, axis=1), err,
                       precision=_HIGHEST)
    update = lambda x, part: jax.lax.dynamic_update_slice_in_dim(x, part, start, axis=0)
    return update(w, q), update(errors, err), update(keep, leaf_keep)

  return jax.lax.fori_loop(0, block // leaf, leaf_step, (w, jnp.zeros_like(w), keep))


# Over 80 lines: a 27-line docstring, and a loop body that closes over the padded block layout.
def sparsegpt(kernel: jax.Array, stats: LayerStats, sparsity=None, *, n: int = 0, m: int = 0,
              block_size: int = 128, damp: float = 0.01) -> tuple[jax.Array, jax.Array]:
  """SparseGPT: prunes `kernel` and updates its kept weights to reconstruct the layer's outputs.

  With H = X^T X + damp * mean(diag(H)) * I and U the upper Cholesky factor of H^-1, inputs are
  visited in order in blocks of `block_size`. At a block's start (for N:M: at each group's
  start) the mask is chosen on the current weights by w^2 / U_ii^2; then for each input i of
  the block, its pruned weights are zeroed, err = (w - q) / U_ii, the block's later inputs get
  w -= U[i, j] * err, and after the block all later inputs get the block's errors at once.

  Exact count: the reference prunes the fraction `sparsity` of each block, which does not in
  general add up to round(sparsity * in * out) over the layer. Here the block of rows [a, b)
  prunes exactly K(b) - K(a) entries (lowest scores, ties by position), with
  K(r) = round(sparsity * r * out); the counts add up to K(in) = round(sparsity * size), and each
  lies in [0, (b - a) * out] because sparsity < 1.

  Args:
    kernel: [in, out] trained weights (any float dtype; computed in float32).
    stats: calibration statistics of the layer's inputs (`accumulate`); xtx is used.
    sparsity: fraction in [0, 1) of the layer's weights to prune (unstructured).
    n, m: instead of `sparsity`, keep n of every m consecutive inputs of each output.
    block_size: inputs per block (the last block may be shorter: it is padded). For N:M it must
      be a multiple of m so that no group straddles two blocks.
    damp: diagonal dampening relative to the mean diagonal of H, for a stable inverse.

  Returns:
    (new_kernel [in, out] in kernel's dtype, exactly 0 where the mask is False;
     mask bool [in, out], True = keep). Inputs that never fired (diag(H) = 0) get zero weights.
  """
  _check_layer(kernel, stats, need_xtx=True)
  nm = _check_target(kernel, sparsity, n, m)
  if not isinstance(block_size, int) or block_size < 1:
    raise ConfigError(f'block_size={block_size!r} is invalid: it must be a positive integer.')
  if nm and block_size % m:
    raise ConfigError(f'block_size={block_size} must be a multiple of m={m} for N:M sparsity, '
                      'so that no group of inputs straddles two blocks.')
  if isinstance(damp, int | float) and damp < 0:
    raise ConfigError(f'damp={damp!r} is invalid: it must be >= 0.')

  fan_in, fan_out = kernel.shape
  block = min(block_size, fan_in)
  num_blocks = -(-fan_in // block)
  padded = num_blocks * block
  pad = padded - fan_in

  factor, dead = _inverse_hessian_factor(stats.xtx.astype(jnp.float32), damp)
  # Padding inputs are decoupled (identity rows/columns of U) with zero weights: their errors
  # are zero and they are sliced off at the end.
  factor = jnp.pad(factor, ((0, pad), (0, pad)))
  factor = factor + jnp.diag(jnp.concatenate([jnp.zeros(fan_in), jnp.ones(pad)]))
  factor_t = factor.T  # Its column blocks as row blocks: the matmuls' preferred layout.
  weights = jnp.where(dead[:, None], 0.0, kernel.astype(jnp.float32))
  weights = jnp.pad(weights, ((0, pad), (0, 0)))
  keep = jnp.ones((padded, fan_out), jnp.bool_)

  if not nm:
    bounds = np.minimum(np.arange(num_blocks + 1) * block, fan_in)
    cumulative = _count(sparsity, bounds * fan_out)
    block_counts = jnp.asarray(cumulative[1:] - cumulative[:-1], jnp.int32)
  real_rows = (jnp.arange(padded) < fan_in)

  def block_step(b, state):
    weights, keep = state
    start = b * block
    w_block = jax.lax.dynamic_slice_in_dim(weights, start, block, axis=0)
    u_rows = jax.lax.dynamic_slice_in_dim(factor, start, block, axis=0)
    u_block = jax.lax.dynamic_slice_in_dim(u_rows, start, block, axis=1)
    u_cols = jax.lax.dynamic_slice_in_dim(factor_t, start, block, axis=1)  # = u_rows.T
    keep_block = None
    if not nm:
      scores = w_block * w_block * (1.0 / jnp.diagonal(u_block) ** 2)[:, None]
      in_layer = jax.lax.dynamic_slice_in_dim(real_rows, start, block)
      scores = jnp.where(in_layer[:, None], scores, jnp.inf)  # Padding is never chosen.
      keep_block = _lowest_k_per_column(scores.reshape(-1, 1), block_counts[b])
      keep_block = keep_block.reshape(scores.shape)
    w_block, errors, keep_block = _prune_block(w_block, u_block, keep_block, n, m)

    weights = jax.lax.dynamic_update_slice_in_dim(weights, w_block, start, axis=0)

    def spread(c, weights):
      """Lazy batch update: later block c receives this block's errors in one matmul."""
      rows = jax.lax.dynamic_slice_in_dim(weights, c * block, block, axis=0)
      coupling = jax.lax.dynamic_slice_in_dim(u_cols, c * block, block, axis=0)
      rows = rows - jnp.matmul(coupling, errors, precision=_HIGHEST)
      return jax.lax.dynamic_update_slice_in_dim(weights, rows, c * block, axis=0)

    # Only the later blocks, one by one (not one product over all rows with the earlier ones'
    # coefficients zeroed, which would do twice the work).
    weights = jax.lax.fori_loop(b + 1, num_blocks, spread, weights)
    keep = jax.lax.dynamic_update_slice_in_dim(keep, keep_block, start, axis=0)
    return weights, keep

  weights, keep = jax.lax.fori_loop(0, num_blocks, block_step, (weights, keep))
  keep = keep[:fan_in]
  new_kernel = jnp.where(keep, weights[:fan_in], 0.0).astype(kernel.dtype)
  return new_kernel, keep
