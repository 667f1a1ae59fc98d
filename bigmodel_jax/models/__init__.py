"""Flax Linen models and a plain-dict registry that builds them from config."""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from bigmodel_jax.models.llama import Llama
from bigmodel_jax.models.mlp import MLP
from bigmodel_jax.models.transformer import GPT, ViT

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _mlp_from_config(model_config: ml_collections.ConfigDict, num_outputs: int) -> nn.Module:
  return MLP(
      hidden_sizes=tuple(model_config.hidden_sizes),
      num_outputs=num_outputs,
      activation=model_config.activation,
      kernel_init=model_config.kernel_init,
      init_scale=model_config.init_scale,
      dropout_rate=model_config.dropout_rate,
  )


def _gpt_from_config(model_config: ml_collections.ConfigDict, num_outputs: int) -> nn.Module:
  return GPT(vocab_size=num_outputs, num_layers=model_config.num_layers,
             num_heads=model_config.num_heads, embed_dim=model_config.embed_dim,
             mlp_ratio=model_config.mlp_ratio, max_len=model_config.max_len,
             dropout_rate=model_config.dropout_rate, position=model_config.position,
             tie_embeddings=model_config.tie_embeddings, use_bias=model_config.use_bias,
             dtype=DTYPES[model_config.dtype])


def _vit_from_config(model_config: ml_collections.ConfigDict, num_outputs: int) -> nn.Module:
  return ViT(num_classes=num_outputs, patch_size=model_config.patch_size,
             num_layers=model_config.num_layers, num_heads=model_config.num_heads,
             embed_dim=model_config.embed_dim, mlp_ratio=model_config.mlp_ratio,
             dropout_rate=model_config.dropout_rate, dtype=DTYPES[model_config.dtype])


# name -> builder(model_config, num_outputs) -> flax module.
MODELS = {
    'mlp': _mlp_from_config,
    'gpt': _gpt_from_config,
    'vit': _vit_from_config,
}
# Which data each model reads: token windows or images.
TEXT_MODELS = ('gpt',)


def logical_axes(model: nn.Module, input_shape: tuple[int, ...], input_dtype=jnp.float32):
  """The params' logical axis names (PartitionSpecs of names; empty where a model has none)."""
  import jax
  example = jax.ShapeDtypeStruct((1, *input_shape), input_dtype)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), example)['params']
  return nn.get_partition_spec(boxed)


def create_model(model_config: ml_collections.ConfigDict, num_outputs: int) -> nn.Module:
  """Builds the model named by `model_config.name` (validated by bigmodel_jax.config)."""
  return MODELS[model_config.name](model_config, num_outputs)


__all__ = ['DTYPES', 'GPT', 'Llama', 'MLP', 'MODELS', 'TEXT_MODELS', 'ViT', 'create_model',
           'logical_axes']
