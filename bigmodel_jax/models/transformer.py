"""Transformers: a GPT-style causal language model and a ViT-style encoder classifier.

Both are built from the same pre-LayerNorm block (multi-head self-attention, then an MLP with
GELU). Every projection is a plain `nn.Dense` with a 2-D kernel [in, out] and a telling name, so
that pruning's path filters reach them (`*/attn/query/kernel`, `*/mlp/fc/kernel`, ...) and N:M
patterns run along the input dimension as for the MLP. Kernels and embeddings carry logical axis
names (`embed`, `heads`, `mlp`, `vocab`) for sharding rules; `train_state.create_train_state`
strips the metadata boxes, so params are plain arrays.

Generation with `decode=True` keeps a key/value cache in the 'cache' collection: each call
attends from its new tokens to everything cached so far, so a token costs the same whatever the
prompt length (see `bigmodel_jax.generate`).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# Logical axis names of the parameters; a sharding rule maps them to mesh axes.
EMBED, HEADS, MLP_AXIS, VOCAB = 'embed', 'heads', 'mlp', 'vocab'
_NEG_INF = -1e9  # Large and finite: a fully masked row (padding) must not produce NaNs.


class TokenDense(nn.Dense):
  """nn.Dense (same params) that multiplies [tokens, features] as one 2-D matrix.

  For inputs [batch, length, features] the weight gradient of a plain `nn.Dense` contracts over
  two dimensions (batch and length), which XLA's CPU backend runs well below its 2-D matmul speed;
  folding them first made the character GPT's training step ~20% faster there (README). The
  result is the same; on accelerators it is a free reshape.
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    lead = inputs.shape[:-1]
    out = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
    return out.reshape(*lead, out.shape[-1])


def _dense(features: int, name: str, axes: tuple[str, str], *, std: float = 0.02,
           use_bias: bool, dtype) -> nn.Dense:
  init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
  return TokenDense(features, name=name, use_bias=use_bias, dtype=dtype, kernel_init=init,
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


def _layer_norm(name: str, use_bias: bool, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, use_bias=use_bias, dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)))


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding of x [batch, length, heads, head_dim] at positions [length]."""
  half = x.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[:, None].astype(jnp.float32) * freqs[None, :]  # [length, half]
  sin, cos = jnp.sin(angles)[None, :, None, :], jnp.cos(angles)[None, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with separate query/key/value/out projections.

  Attributes:
    num_heads: heads; the width must divide by it.
    causal: mask attention to later positions (the LM) or not (the encoder).
    rope: rotate queries and keys by position (rotary embeddings).
    dropout_rate: dropout on attention weights and on the output.
    max_len: cache length for decoding.
    use_bias: biases on the projections.
    dtype: compute dtype (params stay float32).
  """
  num_heads: int
  causal: bool = True
  rope: bool = False
  dropout_rate: float = 0.0
  max_len: int = 1024
  use_bias: bool = True
  out_std: float = 0.02
  head_dim: int | None = None  # None: width / num_heads. Set when heads were pruned away.
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, *, train: bool = False,
               decode: bool = False) -> jax.Array:
    """x [batch, length, width] at positions [length] -> [batch, length, width]."""
    batch, length, width = x.shape
    if self.head_dim is None and width % self.num_heads:
      raise ValueError(f'Width {width} does not divide into {self.num_heads} heads.')
    head_dim = self.head_dim or width // self.num_heads
    inner = self.num_heads * head_dim
    split = lambda t: t.reshape(batch, length, self.num_heads, head_dim)
    proj = lambda name: _dense(inner, name, (EMBED, HEADS), use_bias=self.use_bias,
                               dtype=self.dtype)
    q, k, v = (split(proj(name)(x)) for name in ('query', 'key', 'value'))
    if self.rope:
      q, k = rotary(q, positions), rotary(k, positions)
    key_positions = positions
    if decode:
      # The cache holds keys/values of every position decoded so far; new ones go at
      # `positions` (consecutive), so the call attends over [0, positions[-1]].
      shape = (batch, self.max_len, self.num_heads, head_dim)
      cached_k = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
      cached_v = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
      start = positions[0]
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, start, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, start, 0, 0))
      k, v = cached_k.value, cached_v.value
      key_positions = jnp.arange(self.max_len)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) / math.sqrt(head_dim)
    if self.causal or decode:
      allowed = key_positions[None, :] <= positions[:, None]  # [q, k]
      logits = jnp.where(allowed[None, None], logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate, deterministic=not train)(weights)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, length, inner)
    out = _dense(width, 'out', (HEADS, EMBED), std=self.out_std, use_bias=self.use_bias,
                 dtype=self.dtype)(out)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(out)


class Block(nn.Module):
  """x + attn(ln(x)), then x + mlp(ln(x)) (pre-LayerNorm, as GPT-2 and ViT)."""
  num_heads: int
  mlp_ratio: int = 4
  causal: bool = True
  rope: bool = False
  dropout_rate: float = 0.0
  max_len: int = 1024
  use_bias: bool = True
  out_std: float = 0.02
  head_dim: int | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, *, train: bool = False,
               decode: bool = False) -> jax.Array:
    width = x.shape[-1]
    h = _layer_norm('ln_1', self.use_bias, self.dtype)(x)
    x = x + SelfAttention(self.num_heads, causal=self.causal, rope=self.rope,
                          dropout_rate=self.dropout_rate, max_len=self.max_len,
                          use_bias=self.use_bias, out_std=self.out_std,
                          head_dim=self.head_dim, dtype=self.dtype,
                          name='attn')(h, positions, train=train, decode=decode)
    h = _layer_norm('ln_2', self.use_bias, self.dtype)(x)
    h = _dense(self.mlp_ratio * width, 'fc', (EMBED, MLP_AXIS), use_bias=self.use_bias,
               dtype=self.dtype)(h)
    h = _dense(width, 'proj', (MLP_AXIS, EMBED), std=self.out_std, use_bias=self.use_bias,
               dtype=self.dtype)(nn.gelu(h))
    return x + nn.Dropout(self.dropout_rate, deterministic=not train)(h)


class GPT(nn.Module):
  """Decoder-only causal language model.

  Attributes:
    vocab_size: tokens in the vocabulary.
    num_layers, num_heads, embed_dim, mlp_ratio: the usual sizes.
    max_len: longest sequence (learned position table and decoding cache).
    dropout_rate: dropout on embeddings, attention and residual branches.
    position: 'learned' (a position table, GPT-2) or 'rope' (rotary, no table).
    tie_embeddings: output logits from the token table (else a separate `lm_head`).
    use_bias: biases in projections and LayerNorms (nanoGPT's small recipe has none).
    heads_per_layer: after structured head pruning, the heads each block kept (head width stays
      embed_dim / num_heads); None = num_heads everywhere.
    dtype: compute dtype, e.g. jnp.bfloat16; params stay float32, logits come out float32.
  """
  vocab_size: int
  num_layers: int = 4
  num_heads: int = 4
  embed_dim: int = 128
  mlp_ratio: int = 4
  max_len: int = 64
  dropout_rate: float = 0.0
  position: str = 'learned'
  tie_embeddings: bool = True
  use_bias: bool = False
  heads_per_layer: tuple[int, ...] | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False,
               decode: bool = False) -> jax.Array:
    """tokens [batch, length] int -> logits [batch, length, vocab_size] float32.

    With `decode=True` the tokens continue the cached sequence (mutable=['cache']).
    """
    if self.position not in ('learned', 'rope'):
      raise ValueError(f"position={self.position!r}; use 'learned' or 'rope'.")
    length = tokens.shape[1]
    start = 0
    if decode:
      index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
      start = index.value
      index.value = start + length
    positions = start + jnp.arange(length)
    wte = nn.Embed(self.vocab_size, self.embed_dim, name='wte',
                   embedding_init=nn.with_logical_partitioning(
                       nn.initializers.normal(0.02), (VOCAB, EMBED)))
    x = wte(tokens).astype(self.dtype)
    if self.position == 'learned':
      wpe = self.param('wpe', nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                           (None, EMBED)),
                       (self.max_len, self.embed_dim))
      x = x + jnp.take(jnp.asarray(wpe), positions, axis=0).astype(self.dtype)[None]
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    out_std = 0.02 / math.sqrt(2 * self.num_layers)  # GPT-2's scaled residual projections.
    heads = self.heads_per_layer or (self.num_heads,) * self.num_layers
    for i in range(self.num_layers):
      x = Block(heads[i], self.mlp_ratio, causal=True, rope=self.position == 'rope',
                dropout_rate=self.dropout_rate, max_len=self.max_len, use_bias=self.use_bias,
                out_std=out_std, head_dim=self.embed_dim // self.num_heads, dtype=self.dtype,
                name=f'block_{i}')(x, positions, train=train, decode=decode)
    x = _layer_norm('ln_f', self.use_bias, self.dtype)(x)
    if self.tie_embeddings:
      logits = wte.attend(x.astype(jnp.float32))
    else:
      logits = _dense(self.vocab_size, 'lm_head', (EMBED, VOCAB), use_bias=False,
                      dtype=self.dtype)(x)
    return logits.astype(jnp.float32)


class ViT(nn.Module):
  """Encoder classifier on image patches (ViT): patch embedding, [CLS] token, blocks, head.

  Attributes:
    num_classes: output classes.
    patch_size: square patches; image height and width must divide by it.
    num_layers, num_heads, embed_dim, mlp_ratio, dropout_rate, heads_per_layer, dtype: as for GPT.
  """
  num_classes: int = 10
  patch_size: int = 7
  num_layers: int = 4
  num_heads: int = 4
  embed_dim: int = 128
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  heads_per_layer: tuple[int, ...] | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """images [batch, height, width, channels] -> logits [batch, num_classes]."""
    batch, height, width, channels = images.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f'Image {height}x{width} does not divide into {p}x{p} patches.')
    patches = images.reshape(batch, height // p, p, width // p, p, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, p * p * channels)
    x = _dense(self.embed_dim, 'patch_embed', (None, EMBED), use_bias=True,
               dtype=self.dtype)(patches)
    cls = self.param('cls', nn.with_logical_partitioning(nn.initializers.zeros, (None, EMBED)),
                     (1, self.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(jnp.asarray(cls, self.dtype)[None],
                                          (batch, 1, self.embed_dim)), x], axis=1)
    length = x.shape[1]
    pos = self.param('pos_embed', nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                               (None, EMBED)),
                     (length, self.embed_dim))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + jnp.asarray(pos, self.dtype))
    positions = jnp.arange(length)
    heads = self.heads_per_layer or (self.num_heads,) * self.num_layers
    for i in range(self.num_layers):
      x = Block(heads[i], self.mlp_ratio, causal=False, dropout_rate=self.dropout_rate,
                use_bias=True, head_dim=self.embed_dim // self.num_heads, dtype=self.dtype,
                name=f'block_{i}')(x, positions, train=train)
    x = _layer_norm('ln_f', True, self.dtype)(x)
    return _dense(self.num_classes, 'head', (EMBED, None), use_bias=True,
                  dtype=self.dtype)(x[:, 0]).astype(jnp.float32)
