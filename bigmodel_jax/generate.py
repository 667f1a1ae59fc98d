"""Autoregressive sampling from a causal LM (`models.GPT`), with or without a key/value cache.

    tokens = generate.sample(model, params, prompt, 200, rng=jax.random.PRNGKey(0),
                             temperature=0.8, top_k=40)

With the cache (the default) the prompt is encoded once and every new token is one call on one
position; without it, every new token re-encodes the whole window (the cost the cache removes;
`bench/` measures both). Both draw token t with the key `fold_in(rng, t)`, so they produce the
same tokens.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def next_token(logits: jax.Array, key: jax.Array, *, temperature: float, top_k: int) -> jax.Array:
  """Draws from logits [batch, vocab]: greedy when temperature == 0, else softmax(logits / T)
  restricted to the top_k most likely tokens (top_k == 0: all)."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _check(model: nn.Module, prompt: jax.Array, num_tokens: int, temperature: float,
           top_k: int) -> None:
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f'prompt must be [batch, length >= 1] tokens; got shape {prompt.shape}.')
  if num_tokens < 1:
    raise ValueError(f'num_tokens={num_tokens} must be >= 1.')
  if prompt.shape[1] + num_tokens > model.max_len:
    raise ValueError(f'A prompt of {prompt.shape[1]} tokens + {num_tokens} new ones exceeds the '
                     f"model's max_len={model.max_len}.")
  if temperature < 0 or not 0 <= top_k <= model.vocab_size:
    raise ValueError(f'temperature={temperature} must be >= 0 and top_k={top_k} in '
                     f'[0, {model.vocab_size}].')


@functools.partial(jax.jit, static_argnames=('model', 'num_tokens', 'temperature', 'top_k'))
def _sample_cached(model, params, prompt, num_tokens, rng, temperature, top_k):
  batch, length = prompt.shape
  cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                            jnp.zeros((batch, 1), jnp.int32), decode=True))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache['cache'])
  logits, updated = model.apply({'params': params, 'cache': cache}, prompt, decode=True,
                                mutable=['cache'])
  first = next_token(logits[:, -1], jax.random.fold_in(rng, length), temperature=temperature,
                     top_k=top_k)

  def step(carry, t):
    cache, token = carry
    logits, updated = model.apply({'params': params, 'cache': cache}, token[:, None],
                                  decode=True, mutable=['cache'])
    new = next_token(logits[:, -1], jax.random.fold_in(rng, t), temperature=temperature,
                     top_k=top_k)
    return (updated['cache'], new), new

  _, rest = jax.lax.scan(step, (updated['cache'], first),
                         jnp.arange(length + 1, length + num_tokens))
  return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)


@functools.partial(jax.jit, static_argnames=('model', 'num_tokens', 'temperature', 'top_k'))
def _sample_uncached(model, params, prompt, num_tokens, rng, temperature, top_k):
  batch, length = prompt.shape
  window = length + num_tokens
  tokens = jnp.zeros((batch, window), jnp.int32).at[:, :length].set(prompt)

  def step(tokens, t):
    # Re-encodes the whole window; causal attention makes the unused tail irrelevant.
    logits = model.apply({'params': params}, tokens)
    new = next_token(jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False),
                     jax.random.fold_in(rng, t), temperature=temperature, top_k=top_k)
    return jax.lax.dynamic_update_index_in_dim(tokens, new, t, axis=1), None

  tokens, _ = jax.lax.scan(step, tokens, jnp.arange(length, window))
  return tokens


def sample(model: nn.Module, params, prompt: jax.Array, num_tokens: int, *, rng: jax.Array,
           temperature: float = 1.0, top_k: int = 0, use_cache: bool = True) -> jax.Array:
  """Continues prompt [batch, length] by `num_tokens` tokens -> [batch, length + num_tokens].

  Args:
    model: a `models.GPT` (its `max_len` bounds prompt + new tokens).
    params: its parameters.
    prompt: int tokens [batch, length].
    num_tokens: how many to generate.
    rng: PRNG key; token t uses `fold_in(rng, t)`.
    temperature: 0 = greedy; otherwise softmax temperature.
    top_k: sample among the k most likely tokens (0 = all).
    use_cache: key/value cache (one position per new token) or full re-encoding.
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  _check(model, prompt, num_tokens, temperature, top_k)
  fn = _sample_cached if use_cache else _sample_uncached
  return fn(model, params, prompt, num_tokens, rng, float(temperature), int(top_k))
