"""A Llama-family decoder (Llama 2/3, SmolLM, Qwen2, Mistral without sliding windows).

    model = Llama(vocab_size=49152, num_layers=30, embed_dim=576, num_heads=9, num_kv_heads=3,
                  mlp_dim=1536, rope_base=100000.0, max_len=2048)
    logits = model.apply({'params': params}, tokens)          # [batch, length, vocab] float32

Pre-RMSNorm blocks: x + attn(norm(x)), then x + down(silu(gate(h)) * up(h)) with h = norm(x).
Attention is grouped-query: `num_heads` query heads share `num_kv_heads` key/value heads, query
head h reading key/value head h // (num_heads // num_kv_heads) as in Hugging Face's `repeat_kv`;
queries and keys are rotated by position (RoPE, optionally with Llama 3's or linear frequency
scaling). Every projection is a 2-D `nn.Dense` kernel [in, out] with a telling name
(`block_3/attn/query/kernel`, `block_3/mlp/gate/kernel`, ...) so that the pruning filters reach
them, and carries logical axis names (`embed`, `heads`, `mlp`, `vocab`) for the sharding rules.

Structured pruning makes blocks differ: `kv_heads_per_layer` and `mlp_dims_per_layer` hold what
each block kept (a removed key/value head takes its whole query group with it, so the group size
num_heads // num_kv_heads never changes). With `decode=True` the key/value cache
('cache' collection) holds only the key/value heads, as GQA intends.
"""

import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from bigmodel_jax.models.transformer import EMBED, HEADS, MLP_AXIS, VOCAB, _dense

_NEG_INF = -1e9  # Large and finite: a fully masked row must not produce NaNs.
_PIECES = 4  # Causal attention's query runs (see _causal_in_pieces).
ROPE_TYPES = ('default', 'linear', 'llama3')


def rope_inv_freq(head_dim: int, base: float, scaling: Mapping | None = None) -> jax.Array:
  """Inverse frequencies [head_dim // 2] of rotary embeddings, as Hugging Face computes them.

  `scaling` is a config.json `rope_scaling` dict: None / 'default'; 'linear' (positions divided
  by `factor`); 'llama3' (Llama 3.1: long wavelengths divided by `factor`, short ones kept,
  smoothly in between, by `low_freq_factor`, `high_freq_factor`,
  `original_max_position_embeddings`).
  """
  inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  kind = (scaling or {}).get('rope_type', (scaling or {}).get('type', 'default'))
  if kind == 'default':
    return inv_freq
  if kind == 'linear':
    return inv_freq / scaling['factor']
  if kind == 'llama3':
    factor, low, high = scaling['factor'], scaling['low_freq_factor'], scaling['high_freq_factor']
    old_len = scaling['original_max_position_embeddings']
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    middle = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return jnp.where(middle, smoothed, scaled)
  raise ValueError(f'rope_scaling type {kind!r} is not supported; use one of: '
                   f'{", ".join(ROPE_TYPES)}.')


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotates x [batch, length, heads, head_dim] at positions [length] (halves convention)."""
  half = x.shape[-1] // 2
  angles = positions[:, None].astype(jnp.float32) * inv_freq[None, :]  # [length, half]
  sin, cos = jnp.sin(angles)[None, :, None, :], jnp.cos(angles)[None, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def _rms_norm(name: str, eps: float, dtype) -> nn.RMSNorm:
  return nn.RMSNorm(epsilon=eps, dtype=dtype, name=name,
                    scale_init=nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)))


class GroupedQueryAttention(nn.Module):
  """Causal self-attention with `num_kv_heads` key/value heads shared by groups of query heads.

  Attributes:
    num_heads, num_kv_heads, head_dim: query heads, key/value heads (dividing num_heads), width.
    rope_base, rope_scaling: RoPE base and scaling (`rope_inv_freq`; scaling as sorted items).
    max_len: decoding cache length.
    qkv_bias, out_bias: biases on the q/k/v projections (Qwen2) and on the output projection.
    query_chunk: without a cache, attend `query_chunk` queries at a time, in runs that skip
      the keys no query of the run may see (`_causal_in_pieces`: the same result, faster on
      CPU); 0 = all queries in one product.
    dtype: compute dtype.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_base: float = 10000.0
  rope_scaling: tuple | None = None
  max_len: int = 2048
  qkv_bias: bool = False
  out_bias: bool = False
  query_chunk: int = 64
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, *, decode: bool = False) -> jax.Array:
    batch, length, width = x.shape
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'{self.num_heads} query heads do not divide into {self.num_kv_heads} '
                       'key/value heads.')
    group = self.num_heads // self.num_kv_heads
    proj = lambda heads, name: _dense(heads * self.head_dim, name, (EMBED, HEADS),
                                      use_bias=self.qkv_bias, dtype=self.dtype)(x).reshape(
                                          batch, length, heads, self.head_dim)
    q = proj(self.num_heads, 'query')
    k, v = proj(self.num_kv_heads, 'key'), proj(self.num_kv_heads, 'value')
    inv_freq = rope_inv_freq(self.head_dim, self.rope_base,
                             dict(self.rope_scaling) if self.rope_scaling else None)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    key_positions = positions
    if decode:
      shape = (batch, self.max_len, self.num_kv_heads, self.head_dim)
      cached_k = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
      cached_v = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
      start = positions[0]
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, start, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, start, 0, 0))
      k, v = cached_k.value, cached_v.value
      key_positions = jnp.arange(self.max_len)
    q = q.reshape(batch, length, self.num_kv_heads, group, self.head_dim)
    if decode or not self.query_chunk:
      out = _attend(q, k, v, positions, key_positions, self.dtype)
    else:
      out = _causal_in_pieces(q, k, v, positions, self.query_chunk, self.dtype)
    out = out.reshape(batch, length, self.num_heads * self.head_dim)
    return _dense(width, 'out', (HEADS, EMBED), use_bias=self.out_bias, dtype=self.dtype)(out)


def _attend(q, k, v, positions, key_positions, dtype):
  """Softmax attention of q [b, lq, g, r, d] (r query heads per key/value head) over k, v
  [b, lk, g, d]; a query sees the keys at positions up to its own."""
  logits = jnp.einsum('bqgrd,bkgd->bgrqk', q, k).astype(jnp.float32)
  logits = logits / math.sqrt(q.shape[-1])
  allowed = key_positions[None, :] <= positions[:, None]  # [q, k]
  logits = jnp.where(allowed[None, None, None], logits, _NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
  return jnp.einsum('bgrqk,bkgd->bqgrd', weights, v)


def _causal_in_pieces(q, k, v, positions, chunk: int, dtype, pieces: int = _PIECES):
  """`_attend` over the call's own keys (increasing positions, no cache), with the same result
  computed in pieces: the queries split into `pieces` runs, each seeing only the keys up to
  its end (the later keys are masked for all of them anyway), and each run taken `chunk`
  queries at a time by lax.map, so that a chunk's logits stay in cache. On XLA:CPU, one
  thread, the whole attention layer runs 1.5x faster than with one [q, k] product at 8 x 256
  and 4 x 512 tokens and 3x at 1 x 2048 (bench/attention.py); the pieces are unrolled, the
  chunks are not, so compilation grows by `pieces`, not by the length."""
  length = q.shape[1]
  if length % pieces:
    pieces = 1
  run = length // pieces
  outs = [_attend_run(q[:, p * run:(p + 1) * run], k[:, :(p + 1) * run], v[:, :(p + 1) * run],
                      positions[p * run:(p + 1) * run], positions[:(p + 1) * run], chunk, dtype)
          for p in range(pieces)]
  return jnp.concatenate(outs, 1)


def _attend_run(q, k, v, positions, key_positions, chunk: int, dtype):
  """`_attend` of one run of queries, `chunk` of them at a time (lax.map) when they divide."""
  run = q.shape[1]
  n = run // chunk if run % chunk == 0 and run > chunk else 1
  if n == 1:
    return _attend(q, k, v, positions, key_positions, dtype)
  q = jnp.swapaxes(q.reshape(q.shape[0], n, chunk, *q.shape[2:]), 0, 1)
  out = jax.lax.map(lambda a: _attend(a[0], k, v, a[1], key_positions, dtype),
                    (q, positions.reshape(n, chunk)))
  return jnp.swapaxes(out, 0, 1).reshape(out.shape[1], run, *out.shape[3:])


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)) with `mlp_dim` hidden units."""
  mlp_dim: int
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda n, name, axes: _dense(n, name, axes, use_bias=self.use_bias, dtype=self.dtype)
    h = nn.silu(dense(self.mlp_dim, 'gate', (EMBED, MLP_AXIS))(x))
    h = h * dense(self.mlp_dim, 'up', (EMBED, MLP_AXIS))(x)
    return dense(x.shape[-1], 'down', (MLP_AXIS, EMBED))(h)


class LlamaBlock(nn.Module):
  """x + attn(norm_1(x)), then x + mlp(norm_2(x))."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_base: float = 10000.0
  rope_scaling: tuple | None = None
  max_len: int = 2048
  norm_eps: float = 1e-5
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  query_chunk: int = 64
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, *, decode: bool = False) -> jax.Array:
    h = _rms_norm('ln_1', self.norm_eps, self.dtype)(x)
    x = x + GroupedQueryAttention(
        self.num_heads, self.num_kv_heads, self.head_dim, self.rope_base, self.rope_scaling,
        max_len=self.max_len,
        qkv_bias=self.qkv_bias, out_bias=self.out_bias, query_chunk=self.query_chunk,
        dtype=self.dtype, name='attn')(h, positions, decode=decode)
    h = _rms_norm('ln_2', self.norm_eps, self.dtype)(x)
    return x + SwiGLU(self.mlp_dim, self.mlp_bias, self.dtype, name='mlp')(h)


class _DecodePosition(nn.Module):
  """The next position of a decoded sequence ('cache' collection), advanced by each call."""

  @nn.compact
  def __call__(self, length: int) -> jax.Array:
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    start = index.value
    index.value = start + length
    return start


class Llama(nn.Module):
  """Decoder-only Llama-family language model.

  Attributes:
    vocab_size: tokens in the vocabulary.
    num_layers, embed_dim, mlp_dim: blocks, residual width, SwiGLU hidden units.
    num_heads, num_kv_heads: query and key/value heads (grouped-query attention).
    head_dim: width of a head; None = embed_dim // num_heads.
    rope_base, rope_scaling: RoPE base ("rope_theta") and a config.json-style scaling dict.
    norm_eps: RMSNorm epsilon.
    max_len: longest sequence for decoding (the cache length); RoPE itself has no limit.
    tie_embeddings: output logits from the token table (else a separate `lm_head`).
    qkv_bias, out_bias, mlp_bias: biases (Qwen2: qkv_bias only; Llama: none).
    kv_heads_per_layer, mlp_dims_per_layer: what each block kept after structured pruning
      (None = num_kv_heads / mlp_dim everywhere); query heads per block follow from the groups.
    query_chunk: queries attended at a time without a cache (GroupedQueryAttention); 0 = all.
    dtype: compute dtype, e.g. jnp.bfloat16; params stay float32, logits come out float32.
  """
  vocab_size: int
  num_layers: int = 2
  embed_dim: int = 64
  num_heads: int = 4
  num_kv_heads: int = 4
  mlp_dim: int = 256
  head_dim: int | None = None
  rope_base: float = 10000.0
  rope_scaling: tuple | None = None  # A dict's items, sorted: modules must stay hashable.
  norm_eps: float = 1e-5
  max_len: int = 2048
  tie_embeddings: bool = True
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  kv_heads_per_layer: tuple[int, ...] | None = None
  mlp_dims_per_layer: tuple[int, ...] | None = None
  query_chunk: int = 64
  dtype: jnp.dtype = jnp.float32

  @property
  def group_size(self) -> int:
    """Query heads per key/value head."""
    return self.num_heads // self.num_kv_heads

  @nn.nowrap
  def layer_sizes(self, i: int) -> tuple[int, int, int]:
    """(query heads, key/value heads, MLP units) of block i."""
    kv = self.kv_heads_per_layer[i] if self.kv_heads_per_layer else self.num_kv_heads
    mlp = self.mlp_dims_per_layer[i] if self.mlp_dims_per_layer else self.mlp_dim
    return kv * self.group_size, kv, mlp

  @nn.nowrap
  def block(self, i: int) -> LlamaBlock:
    """Block i as an unbound module: `model.block(i).apply({'params': params['block_i']}, ...)`
    runs one block alone (the sequential one-shot pruning does)."""
    heads, kv, mlp = self.layer_sizes(i)
    return LlamaBlock(heads, kv, self.resolved_head_dim, mlp, self.rope_base, self.rope_scaling,
                      max_len=self.max_len,
                      norm_eps=self.norm_eps, qkv_bias=self.qkv_bias, out_bias=self.out_bias,
                      mlp_bias=self.mlp_bias, query_chunk=self.query_chunk, dtype=self.dtype,
                      name=f'block_{i}')

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  def setup(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads={self.num_heads} must be a multiple of '
                       f'num_kv_heads={self.num_kv_heads}.')
    for name, sizes in (('kv_heads_per_layer', self.kv_heads_per_layer),
                        ('mlp_dims_per_layer', self.mlp_dims_per_layer)):
      if sizes is not None and len(sizes) != self.num_layers:
        raise ValueError(f'{name} has {len(sizes)} entries for {self.num_layers} layers.')
    self.wte = nn.Embed(self.vocab_size, self.embed_dim, name='wte',
                        embedding_init=nn.with_logical_partitioning(
                            nn.initializers.normal(0.02), (VOCAB, EMBED)))
    self.blocks = [self.block(i) for i in range(self.num_layers)]
    self.ln_f = _rms_norm('ln_f', self.norm_eps, self.dtype)
    self.position = _DecodePosition()
    if not self.tie_embeddings:
      self.lm_head = _dense(self.vocab_size, 'lm_head', (EMBED, VOCAB), use_bias=False,
                            dtype=self.dtype)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """tokens [batch, length] -> the first block's input [batch, length, embed_dim]."""
    return self.wte(tokens).astype(self.dtype)

  def head(self, x: jax.Array) -> jax.Array:
    """The last block's output -> logits [batch, length, vocab] float32."""
    x = self.ln_f(x)
    if self.tie_embeddings:
      return self.wte.attend(x.astype(jnp.float32)).astype(jnp.float32)
    return self.lm_head(x).astype(jnp.float32)

  def __call__(self, tokens: jax.Array, *, train: bool = False,
               decode: bool = False) -> jax.Array:
    """tokens [batch, length] int -> logits [batch, length, vocab_size] float32.

    With `decode=True` the tokens continue the cached sequence (mutable=['cache']). `train` is
    accepted for the training loop's sake (this model has no dropout).
    """
    del train
    length = tokens.shape[1]
    start = self.position(length) if decode else 0
    positions = start + jnp.arange(length)
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, positions, decode=decode)
    return self.head(x)
