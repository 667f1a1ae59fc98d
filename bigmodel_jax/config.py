"""Validation of a whole config before any compute, in one place: one clear sentence per problem."""

from collections.abc import Iterable

import ml_collections

from bigmodel_jax import data, losses, models, optim
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import common


def _one_of(key: str, value, accepted: Iterable[str]) -> None:
  accepted = list(accepted)
  if value not in accepted:
    raise ConfigError(f'config.{key}={value!r} is not accepted; use one of: {", ".join(accepted)}.')


def _check(key: str, value, ok: bool, what: str) -> None:
  if not ok:
    raise ConfigError(f'config.{key}={value!r} is invalid: it must be {what}.')


def _positive_int(key: str, value) -> None:
  _check(key, value, isinstance(value, int) and value > 0, 'a positive integer')


def _non_negative(key: str, value) -> None:
  _check(key, value, value >= 0, '>= 0')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first key whose value cannot work, and what is accepted."""
  d = config.data
  _one_of('data.name', d.name, data.DATASETS)
  _one_of('data.source', d.source, data.SOURCES)
  for key in ('validation_size', 'max_train_examples', 'max_eval_examples'):
    _non_negative(f'data.{key}', d[key])

  m = config.model
  _one_of('model.name', m.name, models.MODELS)
  _one_of('model.activation', m.activation, common.ACTIVATIONS)
  _one_of('model.kernel_init', m.kernel_init, common.INITIALIZERS)
  _check('model.hidden_sizes', m.hidden_sizes,
         all(isinstance(w, int) and w > 0 for w in m.hidden_sizes), 'a tuple of positive integers')
  _check('model.init_scale', m.init_scale, m.init_scale > 0, '> 0')
  _check('model.dropout_rate', m.dropout_rate, 0 <= m.dropout_rate < 1, 'in [0, 1)')
  text_model, text_data = m.name in models.TEXT_MODELS, d.name in data.TEXT_DATASETS
  if text_model != text_data:
    raise ConfigError(f'config.model.name={m.name!r} cannot read config.data.name={d.name!r}: '
                      f'the language model {models.TEXT_MODELS} needs a text dataset '
                      f'{data.TEXT_DATASETS}, the others need images.')
  if m.name in ('gpt', 'vit'):
    _one_of('model.dtype', m.dtype, models.DTYPES)
    for key in ('num_layers', 'num_heads', 'embed_dim', 'mlp_ratio', 'max_len', 'patch_size'):
      _positive_int(f'model.{key}', m[key])
    _check('model.embed_dim', m.embed_dim, m.embed_dim % m.num_heads == 0,
           f'divisible by model.num_heads={m.num_heads}')
  if m.name == 'gpt':
    _one_of('model.position', m.position, ('learned', 'rope'))
    _positive_int('data.seq_len', d.seq_len)
    _check('model.max_len', m.max_len, m.max_len >= d.seq_len,
           f'>= data.seq_len={d.seq_len} (the context the model is trained on)')

  _one_of('loss', config.loss, losses.LOSSES)
  _check('label_smoothing', config.label_smoothing, 0 <= config.label_smoothing < 1, 'in [0, 1)')
  if config.label_smoothing and config.loss != 'cross_entropy':
    raise ConfigError(f'config.label_smoothing={config.label_smoothing} needs '
                      f"config.loss='cross_entropy'; got {config.loss!r}.")

  o = config.optimizer
  _one_of('optimizer.name', o.name, optim.OPTIMIZERS)
  _one_of('optimizer.schedule', o.schedule, optim.SCHEDULES)
  _check('optimizer.learning_rate', o.learning_rate, o.learning_rate > 0, '> 0')
  _non_negative('optimizer.warmup_epochs', o.warmup_epochs)
  _non_negative('optimizer.end_learning_rate_factor', o.end_learning_rate_factor)
  _check('optimizer.decay_every_epochs', o.decay_every_epochs, o.decay_every_epochs > 0, '> 0')
  _check('optimizer.decay_factor', o.decay_factor, 0 < o.decay_factor <= 1, 'in (0, 1]')
  _check('optimizer.momentum', o.momentum, 0 <= o.momentum < 1, 'in [0, 1)')
  for key in ('b1', 'b2'):
    _check(f'optimizer.{key}', o[key], 0 <= o[key] < 1, 'in [0, 1)')
  _check('optimizer.eps', o.eps, o.eps > 0, '> 0')
  _non_negative('optimizer.weight_decay', o.weight_decay)
  _non_negative('optimizer.grad_clip_norm', o.grad_clip_norm)

  for key in ('batch_size', 'eval_batch_size', 'steps_per_call', 'log_every_steps',
              'checkpoint_max_to_keep'):
    _positive_int(key, config[key])
  if config.num_train_steps <= 0:
    _check('num_epochs', config.num_epochs,
           isinstance(config.num_epochs, int) and config.num_epochs > 0,
           'a positive integer (or set num_train_steps > 0)')
  for key in ('early_stopping_patience', 'early_stopping_min_delta', 'checkpoint_every_steps',
              'profile_steps'):
    _non_negative(key, config[key])


# --- config.parallelism --------------------------------------------------------------------------
