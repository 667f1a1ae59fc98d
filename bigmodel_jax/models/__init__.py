"""Flax Linen models and a plain-dict registry that builds them from config."""

import flax.linen as nn
import ml_collections

from bigmodel_jax.models.mlp import MLP


def _mlp_from_config(model_config: ml_collections.ConfigDict, num_outputs: int) -> nn.Module:
  return MLP(
      hidden_sizes=tuple(model_config.hidden_sizes),
      num_outputs=num_outputs,
      activation=model_config.activation,
      kernel_init=model_config.kernel_init,
      init_scale=model_config.init_scale,
      dropout_rate=model_config.dropout_rate,
  )


# name -> builder(model_config, num_outputs) -> flax module.
MODELS = {
    'mlp': _mlp_from_config,
}


def create_model(model_config: ml_collections.ConfigDict, num_outputs: int) -> nn.Module:
  """Builds the model named by `model_config.name` (validated by config_checks)."""
  return MODELS[model_config.name](model_config, num_outputs)


__all__ = ['MLP', 'MODELS', 'create_model']
