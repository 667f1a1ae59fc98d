"""Analytic FLOP counts, for achieved FLOP/s and utilisation figures.

Counts a multiply-add of a matrix product as 2 FLOPs; bias adds, activations, the loss and the
optimizer update are left out (under 1% for the MLPs here). Compare against a *measured* matmul
peak of the machine (bench/mlp_throughput.py measures one), never a datasheet number.
"""

from typing import Any

import jax


def dense_kernel_sizes(params: Any) -> list[tuple[int, int]]:
  """(fan_in, fan_out) of every 2-D 'kernel' leaf, in tree order."""
  return [(int(leaf.shape[0]), int(leaf.shape[1]))
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)
          if getattr(path[-1], 'key', None) == 'kernel' and len(leaf.shape) == 2]


def dense_forward_flops(params: Any, batch_size: int) -> int:
  """Forward pass of a stack of Dense layers: 2 * batch * fan_in * fan_out per layer."""
  return sum(2 * batch_size * i * o for i, o in dense_kernel_sizes(params))


def dense_train_step_flops(params: Any, batch_size: int) -> int:
  """One training step by the usual convention: 3x the forward pass (6 * batch * weights).

  Backward needs a weight-gradient and an input-gradient product per layer. The first layer's
  input gradient is never computed (XLA drops it), so the executed count is lower by
  2 * batch * fan_in * fan_out of the first layer; we keep the convention so figures compare
  with other reports, and the benchmark prints both.
  """
  return 3 * dense_forward_flops(params, batch_size)


def transformer_forward_flops_per_token(*, num_layers: int, embed_dim: int, seq_len: int,
                                        vocab_size: int, mlp_ratio: int = 4) -> int:
  """Matmul FLOPs of one token's forward pass through a GPT (`models.GPT`).

  Per layer: the q, k, v and out projections 4 x 2E^2, the MLP 2 x 2 r E^2, and attention's
  scores and weighted sum 2 x 2 T E (the full T x T products: the causal mask saves no work in
  a dense kernel); then the output projection 2 E V. Embedding lookups cost no FLOPs.
  """
  e, t = embed_dim, seq_len
  per_layer = 8 * e * e + 4 * mlp_ratio * e * e + 4 * t * e
  return num_layers * per_layer + 2 * e * vocab_size


def transformer_train_flops_per_token(**kwargs) -> int:
  """Forward + backward: 3x the forward (the same convention as nanoGPT's 6N + 12LHQT)."""
  return 3 * transformer_forward_flops_per_token(**kwargs)
