"""Validation of a whole config before any compute, in one place: one clear sentence per problem."""

import dataclasses
from collections.abc import Iterable

import ml_collections

from bigmodel_jax import data, losses, models, optim
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import common
from bigmodel_jax.pruning import distributions, export, methods, schedules, selection


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


def validate(config: ml_collections.ConfigDict, *, prune: bool | None = None) -> None:
  """Raises ConfigError naming the first key whose value cannot work, and what is accepted.

  Args:
    config: a whole config (configs/default.py).
    prune: also check the `prune` section; default: when `config.prune.enabled`.
  """
  if config.get('job') == 'prune_pretrained':
    validate_pretrained_lm(config)
    return
  _validate_training(config)
  if config.prune.enabled if prune is None else prune:
    variants(config)


def _validate_training(config: ml_collections.ConfigDict) -> None:
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
  _check('eval_every_steps', config.eval_every_steps,
         isinstance(config.eval_every_steps, int) and config.eval_every_steps >= 0,
         'a non-negative integer (0 = evaluate at epoch ends only)')



@dataclasses.dataclass(frozen=True)
class Steps:
  """A run's length, resolved once from `num_train_steps` or `num_epochs`."""
  per_epoch: int
  total: int
  epochs: int  # Epochs begun, the last one possibly partial.


def resolve_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> Steps:
  """Steps per epoch (full batches), total steps and epochs of a run of `config`."""
  if config.batch_size > num_train_examples:
    raise ConfigError(f'config.batch_size={config.batch_size} is larger than the '
                      f'{num_train_examples} training examples; use a smaller batch.')
  per_epoch = num_train_examples // config.batch_size
  total = (config.num_train_steps if config.num_train_steps > 0
           else config.num_epochs * per_epoch)
  return Steps(per_epoch=per_epoch, total=total, epochs=-(-total // per_epoch))


# --- config.prune ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
  """A parsed '<method>/<kind>' string of `prune.variants`."""
  name: str
  score: str  # A name of the registry `pruning.methods.METHODS`.
  kind: str  # 'global' | 'layerwise' | 'neuron' | 'heads' | 'nm'
  n: int = 0
  m: int = 0

  @property
  def method(self) -> methods.Method:
    return methods.METHODS[self.score]

  @property
  def slug(self) -> str:
    return self.name.replace('/', '-').replace(':', 'of')


def parse_variant(name: str) -> Variant:
  """'magnitude/global' -> Variant; raises ConfigError on anything else."""
  parts = name.split('/')
  if len(parts) != 2 or parts[0] not in methods.METHODS:
    raise ConfigError(f'prune.variants: {name!r} is not <score>/<kind> with score one of '
                      f'{", ".join(methods.METHODS)} (e.g. magnitude/global, saliency/layerwise, '
                      'magnitude/neuron, magnitude/heads, magnitude/2:4, sparsegpt/layerwise).')
  score, kind = parts
  method = methods.METHODS[score]
  n = m = 0
  if ':' in kind:
    try:
      n, m = (int(v) for v in kind.split(':'))
    except ValueError:
      raise ConfigError(f'prune.variants: {name!r} has an N:M part that is not two '
                        'integers.') from None
    selection.check_nm(n, m)
    kind = 'nm'
  elif kind not in methods.KINDS:
    raise ConfigError(f'prune.variants: {name!r} has kind {kind!r}; use global, layerwise, '
                      'neuron, heads or N:M such as 2:4.')
  if kind not in method.kinds:
    if method.layer_rule:
      why = (f'{score} prunes layer by layer; use {score}/layerwise or an N:M kind such as '
             f'{score}/2:4.')
    elif kind == 'heads':
      why = (f'attention heads are scored by {" or ".join(methods.supporting(kind="heads"))} '
             '(magnitude = the norm of what a head adds to the residual stream on calibration '
             'batches; random = the control).')
    else:
      why = f'{score} supports the kinds {", ".join(method.kinds)}.'
    raise ConfigError(f'prune.variants: {name!r}: {why}')
  return Variant(name, score, kind, n, m)


def parse_overrides(text: str) -> dict[str, float]:
  """'Dense_2/kernel=0.5,Dense_0/*=0.95' -> {pattern: sparsity}."""
  result = {}
  for item in filter(None, (s.strip() for s in text.split(','))):
    pattern, sep, value = item.partition('=')
    try:
      result[pattern.strip()] = float(value)
    except ValueError:
      sep = ''
    if not sep:
      raise ConfigError(f'prune.overrides: {item!r} is not PATTERN=SPARSITY.')
    selection.check_sparsity(result[pattern.strip()], f'prune.overrides[{pattern.strip()!r}]')
  return result


def variants(config: ml_collections.ConfigDict) -> list[Variant]:
  """Checks the `prune` section of `config`; returns its parsed variants."""
  p = config.prune
  _one_of('prune.schedule', p.schedule, schedules.SCHEDULES)
  parsed = [parse_variant(v) for v in p.variants]
  if not parsed:
    raise ConfigError('config.prune.variants is empty: name at least one, e.g. magnitude/global.')
  if not p.sparsities:
    raise ConfigError('config.prune.sparsities is empty: give at least one, e.g. (0.9,).')
  for s in p.sparsities:
    selection.check_sparsity(s, 'config.prune.sparsities entry')
  for key in ('retrain_epochs', 'retrain_steps'):
    _check(f'prune.{key}', p[key], isinstance(p[key], int) and p[key] >= 0,
           'a non-negative integer')
  for key in ('score_batches', 'score_batch_size', 'gradual_every_steps'):
    _positive_int(f'prune.{key}', p[key])
  _check('prune.retrain_learning_rate', p.retrain_learning_rate, p.retrain_learning_rate > 0,
         '> 0')
  for q in p.export_formats:
    _one_of('prune.export_formats entry', q, export.QUANTIZE)
  for v in parsed:
    if p.schedule not in v.method.schedules:
      raise ConfigError(f'prune.variants: {v.name!r} runs with prune.schedule '
                        f'{" or ".join(map(repr, v.method.schedules))}, not {p.schedule!r}.')
  if parse_overrides(p.overrides):
    for v in parsed:
      if v.kind not in ('global', 'layerwise') or v.method.score is None:
        raise ConfigError(f'prune.overrides sets per-layer sparsities of unstructured '
                          f'{"|".join(methods.supporting(kind="global"))} global|layerwise '
                          f'variants; {v.name!r} would ignore it. Drop the variant or the '
                          'overrides.')
  _check_prune_schedule(config, parsed)
  _check_prune_training(config, parsed)
  return parsed


TRAININGS = ('masked', 'ste', 'set', 'rigl')


def _check_prune_training(config: ml_collections.ConfigDict, parsed: list[Variant]) -> None:
  """prune.distribution, prune.training (STE, SET, RigL) and prune.nm_skip_indivisible."""
  p = config.prune
  _one_of('prune.distribution', p.distribution, distributions.DISTRIBUTIONS)
  _one_of('prune.training', p.training, TRAININGS)
  _check('prune.nm_skip_indivisible', p.nm_skip_indivisible,
         isinstance(p.nm_skip_indivisible, bool), 'True or False')
  unstructured = [v for v in parsed if v.kind in ('global', 'layerwise')]
  if p.distribution != 'global':
    for v in parsed:
      if v not in unstructured or v.method.score is None:
        raise ConfigError(f'prune.distribution={p.distribution!r} spreads the sparsity of '
                          'unstructured global|layerwise variants of a weight score; '
                          f'{v.name!r} would ignore it.')
  if p.training == 'masked':
    return
  if p.training == 'ste' and p.schedule != 'gradual':
    raise ConfigError("prune.training='ste' recomputes masks along the gradual ramp: set "
                      "prune.schedule='gradual'.")
  if p.training in ('set', 'rigl'):
    if p.schedule != 'one_shot':
      raise ConfigError(f'prune.training={p.training!r} prunes once and then drops and regrows '
                        "during retraining: set prune.schedule='one_shot'.")
    if p.retrain_epochs == 0 and p.retrain_steps == 0:
      raise ConfigError(f'prune.training={p.training!r} needs a retraining phase: '
                        'prune.retrain_epochs (or retrain_steps) > 0.')
    _positive_int('prune.dst_every_steps', p.dst_every_steps)
    _check('prune.dst_drop_fraction', p.dst_drop_fraction, 0 < p.dst_drop_fraction < 1,
           'in (0, 1)')
    _check('prune.dst_end_fraction', p.dst_end_fraction, 0 < p.dst_end_fraction <= 1,
           'in (0, 1]')
  for v in parsed:
    if v not in unstructured:
      raise ConfigError(f'prune.training={p.training!r} trains unstructured global|layerwise '
                        f'masks; {v.name!r} is not one.')
    if p.training == 'ste' and v.score != 'magnitude':
      raise ConfigError(f"prune.training='ste' recomputes masks from the dense weights' "
                        f'magnitude; {v.name!r} scores otherwise (use magnitude/...).')


def _check_prune_schedule(config: ml_collections.ConfigDict, parsed: list[Variant]) -> None:
  p = config.prune
  if p.rewind_epoch >= 0 and p.schedule != 'iterative':
    raise ConfigError(f'config.prune.rewind_epoch={p.rewind_epoch} rewinds between the rounds '
                      f'of the iterative schedule; schedule {p.schedule!r} would ignore it.')
  if (p.gradual_begin_step >= 0 or p.gradual_end_step >= 0) and p.schedule != 'gradual':
    raise ConfigError('config.prune.gradual_begin_step / gradual_end_step set the ramp of the '
                      f'gradual schedule; schedule {p.schedule!r} would ignore them.')
  if p.schedule != 'one_shot' and p.retrain_epochs == 0 and p.retrain_steps == 0:
    raise ConfigError(f'Schedule {p.schedule!r} needs prune.retrain_epochs (or retrain_steps) '
                      '> 0.')
  if p.schedule == 'iterative':
    schedules.iterative_sparsities(0.5, p.rounds)
    if p.rewind_epoch > config.num_epochs:
      raise ConfigError(f'config.prune.rewind_epoch={p.rewind_epoch} is after the dense run\'s '
                        f'{config.num_epochs} epochs.')
  if p.schedule != 'gradual':
    return
  for v in parsed:
    if v.kind not in ('global', 'layerwise'):
      raise ConfigError(f'Gradual pruning supports '
                        f'{"|".join(methods.supporting(schedule="gradual"))} with '
                        f'global|layerwise; {v.name!r} is not one of them.')
  if p.gradual_begin_step >= 0 or p.gradual_end_step >= 0:
    if p.retrain_steps == 0:
      raise ConfigError('prune.gradual_begin_step / gradual_end_step count steps of a '
                        'step-based retraining phase: set prune.retrain_steps too (or use '
                        'gradual_begin_epoch / gradual_end_epoch with retrain_epochs).')
    if not 0 <= p.gradual_begin_step < p.gradual_end_step <= p.retrain_steps:
      raise ConfigError('Gradual pruning needs 0 <= prune.gradual_begin_step < '
                        'prune.gradual_end_step <= prune.retrain_steps; got '
                        f'{p.gradual_begin_step}, {p.gradual_end_step}, {p.retrain_steps}.')
  elif p.retrain_steps > 0:
    raise ConfigError('A step-based gradual phase (prune.retrain_steps > 0) needs '
                      'prune.gradual_begin_step and prune.gradual_end_step.')
  elif not 0 <= p.gradual_begin_epoch < p.gradual_end_epoch <= p.retrain_epochs:
    raise ConfigError('Gradual pruning needs 0 <= prune.gradual_begin_epoch < '
                      'prune.gradual_end_epoch <= prune.retrain_epochs; got '
                      f'{p.gradual_begin_epoch}, {p.gradual_end_epoch}, {p.retrain_epochs}.')


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


# --- the pretrained-LM workflow (configs/smollm2_prune.py) ---------------------------------

LM_STRUCTURED = ('mlp', 'heads', 'mlp+heads')  # Parts removed physically (a smaller model).
LM_METHODS = ('magnitude', 'wanda', 'sparsegpt', 'owl-wanda', 'owl-sparsegpt') + LM_STRUCTURED


@dataclasses.dataclass(frozen=True)
class LmVariant:
  """One variant: a method and either a sparsity or an N:M pattern."""
  method: str
  sparsity: float | None = None
  n: int = 0
  m: int = 0

  @property
  def label(self) -> str:
    target = f'{self.n}:{self.m}' if self.n else f'{self.sparsity:g}'
    return f'{self.method}/{target}'

  @property
  def slug(self) -> str:
    return self.label.replace('/', '_').replace(':', '-')

  @property
  def pattern(self) -> str:
    if self.structured:
      parts = {'mlp': 'MLP units', 'heads': 'kv groups', 'mlp+heads': 'MLP units + kv groups'}
      return f'{self.sparsity:.0%} of {parts[self.method]}'
    return f'{self.n}:{self.m}' if self.n else f'{self.sparsity:.0%} unstructured'

  @property
  def structured(self) -> bool:
    return self.method in LM_STRUCTURED


def parse_lm_variant(text: str) -> LmVariant:
  """'wanda/0.5', 'sparsegpt/2:4', 'owl-wanda/0.7' -> LmVariant (ConfigError otherwise)."""
  method, _, target = str(text).partition('/')
  if method not in LM_METHODS or not target:
    raise ConfigError(f'prune.variants entry {text!r}: use <method>/<sparsity or N:M> with a '
                      f'method in {", ".join(LM_METHODS)}, e.g. wanda/0.5 or sparsegpt/2:4.')
  if ':' in target and method.startswith('owl-'):
    raise ConfigError(f'prune.variants entry {text!r}: OWL sets per-block sparsities and takes '
                      'a sparsity, not an N:M pattern.')
  if ':' in target and method in LM_STRUCTURED:
    raise ConfigError(f'prune.variants entry {text!r}: a structured variant takes the fraction '
                      'removed (e.g. mlp/0.25), not an N:M pattern.')
  try:
    if ':' in target:
      n, m = (int(x) for x in target.split(':'))
      if not 0 < n < m:
        raise ValueError
      return LmVariant(method, n=n, m=m)
    sparsity = float(target)
  except ValueError:
    raise ConfigError(f'prune.variants entry {text!r}: the target must be a sparsity in (0, 1) '
                      'or N:M with 0 < N < M.') from None
  if not 0 < sparsity < 1:
    raise ConfigError(f'prune.variants entry {text!r}: the sparsity must be in (0, 1).')
  return LmVariant(method, sparsity=sparsity)


def validate_pretrained_lm(config: ml_collections.ConfigDict) -> list[LmVariant]:
  """Checks the keys of a pretrained-LM config (configs/smollm2_prune.py); its variants."""
  positive = {'model.max_len': config.model.max_len, 'eval.context': config.eval.context,
              'eval.batch_size': config.eval.batch_size, 'eval.num_tokens': config.eval.num_tokens,
              'calibration.num': config.calibration.num,
              'calibration.length': config.calibration.length,
              'calibration.batch_size': config.calibration.batch_size}
  for key, value in positive.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f'config.{key}={value!r} is invalid: it must be a positive integer.')
  if config.sample.num_tokens < 0 or (config.sample.num_tokens and not config.sample.prompt):
    raise ConfigError('config.sample.num_tokens must be >= 0, with a non-empty sample.prompt.')
  if config.eval.context > config.model.max_len:
    raise ConfigError(f'config.eval.context={config.eval.context} exceeds config.model.max_len='
                      f'{config.model.max_len}.')
  if not 1 <= config.eval.stride <= config.eval.context:
    raise ConfigError(f'config.eval.stride={config.eval.stride} must be in [1, eval.context].')
  for key in ('recover.steps', 'recover.checkpoint_every', 'seed'):
    value = config[key.split('.')[0]][key.split('.')[1]] if '.' in key else config[key]
    if not isinstance(value, int) or value < 0:
      raise ConfigError(f'config.{key}={value!r} is invalid: it must be an integer >= 0.')
  if not config.recover.learning_rate > 0:
    raise ConfigError(f'config.recover.learning_rate={config.recover.learning_rate!r} must be '
                      '> 0.')
  if not config.prune.variants:
    raise ConfigError('config.prune.variants is empty: name at least one, e.g. wanda/0.5.')
  variants = [parse_lm_variant(v) for v in config.prune.variants]
  if any(v.structured for v in variants):
    _validate_lm_structured(config)
  return variants


def _validate_lm_structured(config: ml_collections.ConfigDict) -> None:
  s = config.structured
  if s.scope not in ('layerwise', 'global'):
    raise ConfigError(f"config.structured.scope={s.scope!r} is invalid: use 'layerwise' or "
                      "'global'.")
  for key, least in (('latency_rounds', 0), ('latency_length', 1), ('decode_steps', 1)):
    if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < least:
      raise ConfigError(f'config.structured.{key}={s[key]!r} is invalid: it must be an integer '
                        f'>= {least}.')
  batches = tuple(s.latency_batches)
  if not batches or not all(isinstance(b, int) and b >= 1 for b in batches):
    raise ConfigError(f'config.structured.latency_batches={batches!r} must be positive integers.')
  if s.latency_rounds and s.latency_length + s.decode_steps > config.model.max_len:
    raise ConfigError(f'config.structured.latency_length={s.latency_length} + decode_steps='
                      f'{s.decode_steps} exceed config.model.max_len={config.model.max_len}.')
