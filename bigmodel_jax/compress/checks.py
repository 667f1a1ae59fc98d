"""Checks of a pruned model: compact exports reloaded and compared, shrunk models timed."""

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax import pruning, timing
from bigmodel_jax.compress.context import Context
from bigmodel_jax.config import Variant


def export(ctx: Context, directory: str, params, masks, prunable) -> dict[str, Any]:
  """Writes each configured compact format, reloads it and checks its predictions."""
  os.makedirs(directory, exist_ok=True)
  params, masks = ctx.par.to_host((params, masks))
  out = {}
  reference = ctx.model.apply({'params': params}, ctx.test_split.inputs[:1000])
  for quantize in ctx.config.prune.export_formats:
    path = os.path.join(directory, f'model-{"float32" if quantize == "none" else quantize}.npz')
    sizes = pruning.save_compact(path, params, masks, prunable, quantize=quantize)
    loaded, _ = pruning.load_compact(path)
    loaded = jax.tree.map(jnp.asarray, loaded)
    logits = ctx.model.apply({'params': loaded}, ctx.test_split.inputs[:1000])
    out[quantize] = {
        'path': os.path.relpath(path, ctx.workdir), 'bytes': sizes['file_bytes'],
        'dense_float32_bytes': sizes['dense_float32_bytes'],
        'max_abs_logit_diff': float(jnp.max(jnp.abs(logits - reference))),
        'test_accuracy': ctx.test_accuracy(loaded),
    }
  return out


def latency(ctx: Context, variant: Variant, dense_params, keep, params) -> dict[str, Any]:
  """Forward latency of the dense model vs the physically shrunk one (neuron or heads kind)."""
  dense_params, params = ctx.par.to_host((dense_params, params))
  if variant.kind == 'heads':
    small_model, small_params = pruning.heads.shrink_heads(ctx.model, params, keep)
    result = {'heads_per_layer': list(small_model.heads_per_layer)}
  else:
    small_model, small_params = pruning.shrink_mlp(ctx.model, params, keep)
    result = {'hidden_sizes': list(small_model.hidden_sizes)}
  for batch in (1, 256):
    x = jnp.asarray(np.resize(ctx.test_split.inputs[:batch], (batch, *ctx.input_shape)))
    dense_ms = timing.median_ms(jax.jit(ctx.model.apply), {'params': dense_params}, x)
    small_ms = timing.median_ms(jax.jit(small_model.apply), {'params': small_params}, x)
    result[f'batch_{batch}'] = {'dense_ms': dense_ms, 'shrunk_ms': small_ms,
                                'speedup': dense_ms / small_ms}
  logits = small_model.apply({'params': small_params}, ctx.test_split.inputs[:1000])
  masked_logits = ctx.model.apply({'params': params}, ctx.test_split.inputs[:1000])
  result['max_abs_logit_diff_vs_masked'] = float(jnp.max(jnp.abs(logits - masked_logits)))
  return result
