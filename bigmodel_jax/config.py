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
# Checked apart from validate(): these checks need the devices and processes of the cluster, so
# they run after `parallel.initialize_distributed` (parallel.from_config calls this too).


def _resolve_mesh(p: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) of a sharded mesh over `num_devices`, -1 resolved; raises on any misfit."""
  data, fsdp, tensor = p.data, p.fsdp, p.tensor
  if data == -1 and fsdp == -1:
    raise ConfigError('config.parallelism: only one of data and fsdp may be -1.')
  for name, size in (('data', data), ('fsdp', fsdp)):
    if size == 0 or size < -1:
      raise ConfigError(f'config.parallelism.{name}={size}: use a positive size or -1 (the rest).')
  if not isinstance(tensor, int) or tensor < 1:
    raise ConfigError(f'config.parallelism.tensor={tensor!r}: use a positive size (1 = none).')
  known = max(data, 1) * max(fsdp, 1) * tensor
  if num_devices % known:
    raise ConfigError(f'config.parallelism: a data={data} x fsdp={fsdp} x tensor={tensor} mesh '
                      f'does not divide the {num_devices} devices.')
  data = num_devices // known if data == -1 else data
  fsdp = num_devices // known if fsdp == -1 else fsdp
  if data * fsdp * tensor != num_devices:
    raise ConfigError(f'config.parallelism: the mesh data={data} x fsdp={fsdp} x tensor={tensor} '
                      f'= {data * fsdp * tensor} devices, but {num_devices} are in use '
                      '(parallelism.num_devices or the machine); make the product match, or set '
                      'data or fsdp to -1.')
  return data, fsdp


def _devices_in_use(p: ml_collections.ConfigDict, visible: int, multi: bool) -> int:
  if p.num_devices == -1:
    return visible
  if p.num_devices <= 0:
    raise ConfigError(f'config.parallelism.num_devices={p.num_devices}: use -1 (all) '
                      'or a positive count.')
  if p.num_devices > visible:
    raise ConfigError(f'config.parallelism.num_devices={p.num_devices}, but only '
                      f'{visible} devices are visible.')
  if multi and p.num_devices != visible:
    raise ConfigError('config.parallelism.num_devices must be -1 on several hosts: every '
                      'device of the cluster takes part.')
  return p.num_devices


def validate_parallelism(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError if `config.parallelism` cannot lay out `config.batch_size` on this cluster.

  Reads `jax.devices()` and `jax.process_count()`, so on several hosts it must run after
  `parallel.initialize_distributed`.
  """
  import jax  # Not at the top: validate() above needs no devices.

  from bigmodel_jax import parallel  # Not at the top: parallel imports this module.
  p = config.parallelism
  _one_of('parallelism.mode', p.mode, parallel.MODES)
  multi = jax.process_count() > 1
  num_devices = _devices_in_use(p, len(jax.devices()), multi)
  if p.mode == 'single':
    if multi:
      raise ConfigError("config.parallelism.mode='single' cannot run on several hosts; use "
                        "'sharded' or 'pmap'.")
    num_devices = 1
  if p.mode != 'sharded' and p.tensor != 1:
    raise ConfigError(f'config.parallelism.tensor={p.tensor} needs mode=\'sharded\'.')
  shards, where = num_devices, f'{num_devices} device(s)'
  if p.mode == 'sharded':
    data, fsdp = _resolve_mesh(p, num_devices)
    shards, where = data * fsdp, (f'mesh data={data} x fsdp={fsdp}'
                                  + (f' x tensor={p.tensor}' if p.tensor > 1 else ''))
  elif p.mode == 'single':
    shards = 1
  if config.batch_size % shards:
    raise ConfigError(
        f'config.batch_size={config.batch_size} does not divide over the {shards} data-parallel '
        f'shards of this run ({where}): use a multiple of {shards} (it is the global batch; each '
        'shard gets batch / shards).')
