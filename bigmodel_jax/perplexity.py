"""Perplexity of a causal language model on held-out tokens, with a documented protocol.

    result = perplexity.evaluate(model.apply, params, tokens, context=512, stride=512)
    result['perplexity'], result['tokens']       # exp(mean NLL), the number of tokens scored

The protocol is the sliding window of Hugging Face's guide "Perplexity of fixed-length models",
so figures compare with transformers' directly:

- the text is tokenized once into `tokens` (1-D), with the tokenizer's own special tokens;
- windows begin at 0, stride, 2 * stride, ... and hold up to `context` tokens; the last window
  ends at the last token (it may be shorter);
- a window scores only the targets no earlier window scored (its last `end - previous end`
  positions), each predicted from every token before it in the window; the very first token is
  never scored, and with stride == context the first token of each window is not either;
- perplexity = exp(sum of NLL / number of scored targets), in float32.

stride < context gives every scored token more context (lower perplexity, more compute).
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import ConfigError


def windows(num_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
  """(begin, end, first scored target) of every window of the protocol."""
  if context < 2 or not 1 <= stride <= context:
    raise ConfigError(f'context={context} must be >= 2 and stride={stride} in [1, context].')
  if num_tokens < 2:
    raise ConfigError(f'Perplexity needs at least 2 tokens; got {num_tokens}.')
  out, previous_end = [], 0
  for begin in range(0, num_tokens, stride):
    end = min(begin + context, num_tokens)
    out.append((begin, end, max(begin + 1, previous_end)))
    previous_end = end
    if end == num_tokens:
      break
  return out


def window_batches(tokens: np.ndarray, context: int, stride: int):
  """(inputs [W, context] int32, weights [W, context] float32) of the protocol's windows.

  weights[w, j] = 1 where the logits at position j (predicting the token at j + 1) are scored;
  the last window is padded at its end (causal attention: padding never reaches scored tokens).
  """
  tokens = np.asarray(tokens, np.int32).reshape(-1)
  spans = windows(len(tokens), context, stride)
  inputs = np.zeros((len(spans), context), np.int32)
  weights = np.zeros((len(spans), context), np.float32)
  for w, (begin, end, first) in enumerate(spans):
    inputs[w, :end - begin] = tokens[begin:end]
    weights[w, first - begin - 1:end - begin - 1] = 1.0
  return inputs, weights


@functools.partial(jax.jit, static_argnums=0)
def _window_nll(apply_fn, params, inputs, weights):
  logits = apply_fn({'params': params}, inputs).astype(jnp.float32)
  targets = jnp.concatenate([inputs[:, 1:], jnp.zeros_like(inputs[:, :1])], axis=1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * weights)


def evaluate(apply_fn: Callable, params: Any, tokens, *, context: int = 512,
             stride: int | None = None, batch_size: int = 8,
             log: Callable[[str], None] | None = None) -> dict[str, float]:
  """Perplexity of `tokens` (1-D ids) under the protocol above.

  Args:
    apply_fn: the model's `apply`; called as apply_fn({'params': params}, inputs [b, context]).
    params: the model's params.
    tokens: held-out token ids, 1-D.
    context: window length (<= the model's context).
    stride: window step (default: context, i.e. non-overlapping windows).
    batch_size: windows per forward pass.
    log: optional callback for a progress line per batch.

  Returns:
    {'perplexity', 'nll' (mean per scored token), 'tokens' (scored), 'windows', 'context',
     'stride'}.
  """
  stride = stride or context
  inputs, weights = window_batches(tokens, context, stride)
  if batch_size < 1:
    raise ConfigError(f'batch_size={batch_size} must be >= 1.')
  total = 0.0
  for i in range(0, len(inputs), batch_size):
    chunk, chunk_weights = inputs[i:i + batch_size], weights[i:i + batch_size]
    if len(chunk) < batch_size:  # One compiled shape: pad with unscored windows.
      pad = batch_size - len(chunk)
      chunk = np.concatenate([chunk, np.zeros((pad, context), np.int32)])
      chunk_weights = np.concatenate([chunk_weights, np.zeros((pad, context), np.float32)])
    total += float(_window_nll(apply_fn, params, chunk, chunk_weights))
    if log is not None:
      log(f'perplexity: {min(i + batch_size, len(inputs))}/{len(inputs)} windows')
  scored = int(weights.sum())
  nll = total / scored
  return {'perplexity': float(np.exp(nll)), 'nll': nll, 'tokens': scored,
          'windows': len(inputs), 'context': context, 'stride': stride}
