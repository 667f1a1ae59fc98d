"""The launchable compression workflow: dense training -> prune -> retrain -> evaluate -> export.

    python launch.py --config=configs/fashion_mnist_mlp_prune.py --workdir=runs/prune

Layout of WORKDIR (every phase is resumable; re-running the command continues where it stopped):

    dense/                       the dense run (a normal training workdir), or `prune.dense_dir`
    <variant>_s<sparsity>/       one folder per (variant, sparsity) of the sweep, e.g.
      pruned/                      magnitude-global_s0.90: Orbax checkpoint of params + masks
      retrained/                   a training workdir whose checkpoints carry the masks
      round_<r>/{pruned,retrained}   (schedule 'iterative': one pair per round)
      export/                      compact files (bitmask + float32, bitmask + int8)
    results.json, results.md     one row per (variant, sparsity)
    sparsity_sweep.png           test accuracy vs sparsity, a curve per variant

A variant is '<score>/<kind>': score in magnitude | saliency | sensitivity | random; kind in
global | layerwise (unstructured), neuron (structured: whole hidden units, physically removed
afterwards), heads (structured: whole attention heads of a GPT / ViT, scored by the norm of what
each adds to the residual stream - or at random, the control - then physically removed) or N:M
such as 2:4 (semi-structured).
"""

import copy
import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigmodel_jax import (
  checkpoint,
  data,
  loop,
  losses,
  metrics,
  models,
  optim,
  parallel,
  pruning,
  report,
  timing,
  train_state,
)
from bigmodel_jax import config as config_lib
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import gradual, selection

# Post-training methods that calibrate on layer inputs (pruning/oneshot.py); SparseGPT also
# updates the kept weights.
ONE_SHOT = ('wanda', 'sparsegpt')
# Scores of whole attention heads (kind 'heads'): magnitude = pruning.heads.head_scores.
HEAD_SCORES = ('magnitude', 'random')


@dataclasses.dataclass(frozen=True)
class Variant:
  """A parsed '<score>/<kind>' string."""
  name: str
  score: str
  kind: str  # 'global' | 'layerwise' | 'neuron' | 'heads' | 'nm'
  n: int = 0
  m: int = 0

  @property
  def slug(self) -> str:
    return self.name.replace('/', '-').replace(':', 'of')


def parse_variant(name: str) -> Variant:
  """'magnitude/global' -> Variant; raises ConfigError on anything else."""
  parts = name.split('/')
  scores = pruning.METHODS + ONE_SHOT
  if len(parts) != 2 or parts[0] not in scores:
    raise ConfigError(f'prune.variants: {name!r} is not <score>/<kind> with score one of '
                      f'{", ".join(scores)} (e.g. magnitude/global, saliency/layerwise, '
                      'magnitude/neuron, magnitude/heads, magnitude/2:4, sparsegpt/layerwise).')
  score, kind = parts
  if score in ONE_SHOT and kind in ('global', 'neuron', 'heads'):
    raise ConfigError(f'prune.variants: {name!r}: {score} prunes layer by layer; use '
                      f'{score}/layerwise or an N:M kind such as {score}/2:4.')
  if kind == 'heads' and score not in HEAD_SCORES:
    raise ConfigError(f'prune.variants: {name!r}: attention heads are scored by '
                      f'{" or ".join(HEAD_SCORES)} (magnitude = the norm of what a head adds to '
                      'the residual stream on calibration batches; random = the control).')
  if kind in ('global', 'layerwise', 'neuron', 'heads'):
    return Variant(name, score, kind)
  if ':' in kind:
    try:
      n, m = (int(v) for v in kind.split(':'))
    except ValueError:
      raise ConfigError(f'prune.variants: {name!r} has an N:M part that is not two '
                        'integers.') from None
    selection.check_nm(n, m)
    return Variant(name, score, 'nm', n, m)
  raise ConfigError(f'prune.variants: {name!r} has kind {kind!r}; use global, layerwise, neuron, '
                    'heads or N:M such as 2:4.')


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


def validate_prune_config(config: ml_collections.ConfigDict) -> list[Variant]:
  """Checks the `prune` section; returns the parsed variants."""
  p = config.prune
  if p.schedule not in pruning.SCHEDULES:
    raise ConfigError(f'config.prune.schedule={p.schedule!r} is not accepted; use one of: '
                      f'{", ".join(pruning.SCHEDULES)}.')
  variants = [parse_variant(v) for v in p.variants]
  if not variants:
    raise ConfigError('config.prune.variants is empty: name at least one, e.g. magnitude/global.')
  if not p.sparsities:
    raise ConfigError('config.prune.sparsities is empty: give at least one, e.g. (0.9,).')
  for s in p.sparsities:
    selection.check_sparsity(s, 'config.prune.sparsities entry')
  if parse_overrides(p.overrides):
    for v in variants:
      if v.kind not in ('global', 'layerwise') or v.score in ONE_SHOT:
        raise ConfigError(f'prune.overrides sets per-layer sparsities of unstructured '
                          f'magnitude|saliency|sensitivity|random global|layerwise variants; '
                          f'{v.name!r} would ignore it. Drop the variant or the overrides.')
  for key in ('retrain_epochs', 'retrain_steps', 'score_batches', 'score_batch_size',
              'gradual_every_steps'):
    low = 0 if key.startswith('retrain') else 1
    if not isinstance(p[key], int) or p[key] < low:
      raise ConfigError(f'config.prune.{key}={p[key]!r} is invalid: it must be a '
                        f'{"non-negative" if low == 0 else "positive"} integer.')
  if p.retrain_learning_rate <= 0:
    raise ConfigError(f'config.prune.retrain_learning_rate={p.retrain_learning_rate} must be > 0.')
  if p.rewind_epoch >= 0 and p.schedule != 'iterative':
    raise ConfigError(f'config.prune.rewind_epoch={p.rewind_epoch} rewinds between the rounds '
                      f'of the iterative schedule; schedule {p.schedule!r} would ignore it.')
  if (p.gradual_begin_step >= 0 or p.gradual_end_step >= 0) and p.schedule != 'gradual':
    raise ConfigError('config.prune.gradual_begin_step / gradual_end_step set the ramp of the '
                      f'gradual schedule; schedule {p.schedule!r} would ignore them.')
  if p.schedule == 'iterative':
    pruning.iterative_sparsities(0.5, p.rounds)
    if p.rewind_epoch > config.num_epochs:
      raise ConfigError(f'config.prune.rewind_epoch={p.rewind_epoch} is after the dense run\'s '
                        f'{config.num_epochs} epochs.')
  if p.schedule == 'gradual':
    for v in variants:
      if v.kind not in ('global', 'layerwise') or v.score not in gradual.GRADUAL_METHODS:
        raise ConfigError(f'Gradual pruning supports magnitude|random with global|layerwise; '
                          f'{v.name!r} is not one of them.')
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
  if p.schedule != 'one_shot' and any(v.score in ONE_SHOT for v in variants):
    raise ConfigError(f'{", ".join(ONE_SHOT)} run with prune.schedule=\'one_shot\' only.')
  if p.schedule != 'one_shot' and p.retrain_epochs == 0 and p.retrain_steps == 0:
    raise ConfigError(f'Schedule {p.schedule!r} needs prune.retrain_epochs (or retrain_steps) '
                      '> 0.')
  for q in p.export_formats:
    if q not in pruning.export.QUANTIZE:
      raise ConfigError(f'config.prune.export_formats: {q!r}; use '
                        f'{", ".join(pruning.export.QUANTIZE)}.')
  return variants


def _retrain_config(config: ml_collections.ConfigDict, epochs: int) -> ml_collections.ConfigDict:
  c = copy.deepcopy(config)
  with c.unlocked():
    c.num_epochs, c.num_train_steps = epochs, config.prune.retrain_steps or -1
    c.optimizer.learning_rate = config.prune.retrain_learning_rate
    c.optimizer.warmup_epochs = config.prune.retrain_warmup_epochs
    c.early_stopping_patience = 0
    c.write_plot = False
  return c


class _Context:
  """What every phase needs: data, the model, the dense state and its evaluation."""

  def __init__(self, config, workdir, console):
    self.config, self.workdir, self.console = config, workdir, console
    self.datasets = parallel.process_zero_first(lambda: data.load_datasets(config.data))
    n_train = len(self.datasets.train)
    self.steps_per_epoch = n_train // config.batch_size
    self.model = models.create_model(config.model, self.datasets.num_classes)
    self.loss = losses.LOSSES[config.loss]
    self.input_shape = self.datasets.train.inputs.shape[1:]
    self.par = parallel.from_config(config)
    self.par.set_logical_axes(models.logical_axes(self.model, self.input_shape,
                                                  self.datasets.train.inputs.dtype))
    self.eval_call = self.par.eval_call(loss_fn=self.loss)
    self.test_split = (self.datasets.test if self.datasets.test is not None
                       else self.datasets.eval)
    self.template = self.par.init(self.init_fn(config))  # Evaluation swaps params in.

  def init_fn(self, cfg: ml_collections.ConfigDict, masked: bool = False):
    """() -> the initial TrainState of a run of `cfg` (dense, or masked for retraining)."""
    steps = cfg.num_epochs * self.steps_per_epoch
    tx, _ = optim.create_optimizer(cfg.optimizer, self.steps_per_epoch, steps)
    tx = pruning.masked(tx) if masked else tx
    return lambda: train_state.create_train_state(
        cfg.seed, model=self.model, tx=tx, input_shape=self.input_shape, masked=masked,
        input_dtype=self.datasets.train.inputs.dtype)

  def restore(self, run_dir: str, init, step: int | None = None) -> train_state.TrainState:
    """The state of the training workdir `run_dir` at `step` (default: its latest checkpoint)."""
    ckpt = checkpoint.Checkpointer(os.path.join(run_dir, 'checkpoints'), async_save=False)
    try:
      step = ckpt.latest_step() if step is None else step
      if step is None or step not in ckpt.all_steps():
        raise ConfigError(
            f'No dense checkpoint{"" if step is None else f" at step {step}"} in {run_dir}: '
            'run the dense phase first (leave prune.dense_dir empty to train it here), or point '
            'prune.dense_dir at a finished run of the same model.')
      abstract = jax.eval_shape(init)
      arrays, _ = ckpt.restore(step, self.par.abstract(abstract.arrays()))
    finally:
      ckpt.close()
    return abstract.replace_arrays(arrays)

  def dense_state(self, dense_dir: str, step: int | None = None) -> train_state.TrainState:
    """Restores the dense run's state (latest, or `step`)."""
    return self.restore(dense_dir, self.init_fn(self.config), step)

  def test_metrics(self, params) -> dict[str, float]:
    """{'loss', 'accuracy'} of `params` on the test split."""
    state = self.template.replace(params=params)
    return loop.evaluate(self.eval_call, self.par, state, self.test_split,
                         self.par.eval_batch_size)

  def test_accuracy(self, params) -> float:
    return self.test_metrics(params)['accuracy']

  def score_batches(self) -> list[dict[str, np.ndarray]]:
    p = self.config.prune
    rng = np.random.default_rng(self.config.seed + 7919)
    train_split = self.datasets.train
    idx = rng.permutation(len(train_split))[:p.score_batches * p.score_batch_size]
    return [{'inputs': train_split.inputs[chunk], 'targets': train_split.targets[chunk]}
            for chunk in np.array_split(idx, max(1, len(idx) // p.score_batch_size))]


def _masks_for(ctx: _Context, variant: Variant, sparsity: float, params, prunable,
               previous_masks=None, overrides=None) -> tuple[Any, list | None, Any]:
  """Scores `params` by the variant's method and selects (`overrides`: per-layer sparsities).

  Returns:
    (masks, neuron keep or None, params: SparseGPT's updated ones, else the given ones).
  """
  if variant.score in ONE_SHOT:
    calibration = [b['inputs'] for b in ctx.score_batches()]
    target = ({'n': variant.n, 'm': variant.m} if variant.kind == 'nm'
              else {'sparsity': sparsity})
    params, masks = pruning.oneshot.prune(ctx.model.apply, params, calibration,
                                          method=variant.score, prunable=prunable,
                                          log=ctx.console.line, **target)
    return masks, None, params
  if variant.kind == 'heads':
    return _head_masks(ctx, variant, sparsity, params, previous_masks) + (params,)
  loss_fn = pruning.batch_loss_fn(ctx.model.apply, ctx.loss)
  batches = ctx.score_batches() if variant.score in ('saliency', 'sensitivity') else ()
  scores = pruning.compute_scores(variant.score, params, loss_fn=loss_fn, batches=batches,
                                  key=jax.random.PRNGKey(ctx.config.seed + 1))
  if previous_masks is not None:  # Masks only grow sparser: pruned weights go first.
    scores = jax.tree.map(lambda s, m: jnp.where(m, s, -jnp.inf), scores, previous_masks)
  if variant.kind == 'neuron':
    keep = pruning.neuron_keep(scores, sparsity, scope='layerwise')
    return pruning.neuron_masks(params, keep), keep, params
  if variant.kind == 'nm':
    return pruning.nm_masks(scores, variant.n, variant.m, prunable=prunable), None, params
  masks = jax.jit(lambda s: pruning.masks_from_scores(
      s, sparsity, scope=variant.kind, prunable=prunable, overrides=overrides))(scores)
  return masks, None, params


def _head_masks(ctx: _Context, variant: Variant, sparsity: float, params,
                previous_masks=None) -> tuple[Any, dict[str, np.ndarray]]:
  """(masks, {block: bool [heads] kept}) removing `sparsity` of the heads of every block."""
  model = ctx.model  # A GPT or ViT (run() checked).
  head_dim = model.embed_dim // model.num_heads
  calibration = [b['inputs'] for b in ctx.score_batches()]
  scores = pruning.heads.head_scores(model.apply, params, calibration, head_dim=head_dim)
  if variant.score == 'random':
    rng = np.random.default_rng(ctx.config.seed + 1)
    scores = {name: rng.random(len(s)) for name, s in scores.items()}
  if previous_masks is not None:  # Heads removed in an earlier round stay removed.
    kept = pruning.heads.kept_heads(ctx.par.to_host(previous_masks), head_dim)
    scores = {name: np.where(kept[name], s, -np.inf) for name, s in scores.items()}
  keep = pruning.heads.keep_heads(scores, sparsity)
  return pruning.heads.head_masks(params, keep, head_dim), keep


def _keep_to_meta(variant: Variant, keep) -> dict[str, Any]:
  """What was kept by a structured variant, as JSON for the prune checkpoint's metadata:
  'neuron_keep' (one 0/1 list per hidden layer) or 'head_keep' ({block: 0/1 per head})."""
  neurons = variant.kind == 'neuron' and keep is not None
  heads = variant.kind == 'heads' and keep is not None
  return {'neuron_keep': [np.asarray(k).astype(int).tolist() for k in keep] if neurons else None,
          'head_keep': ({k: np.asarray(v).astype(int).tolist() for k, v in keep.items()}
                        if heads else None)}


def _keep_from_meta(variant: Variant, meta: dict[str, Any]):
  """`_keep_to_meta`'s inverse: a list (neurons) or dict (heads) of bool arrays, else None."""
  if variant.kind == 'neuron' and meta.get('neuron_keep'):
    return [np.asarray(k, bool) for k in meta['neuron_keep']]
  if variant.kind == 'heads' and meta.get('head_keep'):
    return {k: np.asarray(v, bool) for k, v in meta['head_keep'].items()}
  return None


def _prune_phase(ctx, directory, variant, sparsity, params, prunable, previous_masks=None,
                 overrides=None):
  """Prunes once (or restores a finished prune from `directory`): (params, masks, keep, meta)."""
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  try:
    target = {'params': params, 'masks': pruning.ones_like(params)}
    if ckpt.latest_step() is not None:
      arrays, meta = ckpt.restore(ckpt.latest_step(), ctx.par.abstract(target))
      return arrays['params'], arrays['masks'], _keep_from_meta(variant, meta), meta
    start = time.perf_counter()
    masks, keep, params = _masks_for(ctx, variant, sparsity, params, prunable, previous_masks,
                                     overrides)
    masks = jax.block_until_ready(ctx.par.place(masks))  # Laid out like the params.
    seconds = time.perf_counter() - start
    params = pruning.apply_masks(params, masks)
    stats = pruning.sparsity_stats(params, masks, prunable)
    meta = {'variant': variant.name, 'target_sparsity': sparsity,
            'sparsity': stats['sparsity'], 'total_sparsity': stats['total_sparsity'],
            'select_seconds': seconds, **_keep_to_meta(variant, keep)}
    keep = _keep_from_meta(variant, meta)  # bool numpy arrays, as after a restore.
    evaluation = ctx.test_metrics(params)
    meta['test_accuracy'], meta['test_loss'] = evaluation['accuracy'], evaluation['loss']
    ckpt.save(0, {'params': params, 'masks': masks}, meta)
    ckpt.wait()
    return params, masks, keep, meta
  finally:
    ckpt.close()


def _retrain_phase(ctx, directory, params, masks, prunable, epochs, before_step=None,
                   prefix='') -> train_state.TrainState:
  """Masked retraining from (params, masks) with a fresh optimizer; resumable in `directory`."""
  def start(state):
    state = state.replace(params=pruning.apply_masks(params, masks), masks=masks)
    return state.replace(opt_state=pruning.prune_opt_state(state.tx, state.opt_state, masks))
  cfg = _retrain_config(ctx.config, epochs)
  loop.train_and_evaluate(cfg, directory, masked=True, initial_state=start,
                          before_step=before_step, prunable=prunable, log_prefix=prefix)
  return ctx.restore(directory, ctx.init_fn(cfg, masked=True))


def _export(ctx, directory, params, masks, prunable) -> dict[str, Any]:
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


def _latency(ctx, variant, dense_params, keep, params) -> dict[str, Any]:
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


def _run_one(ctx, dense_dir, dense_state, variant, sparsity, prunable) -> dict[str, Any]:
  p = ctx.config.prune
  label = f'{variant.slug}_s{sparsity:.4g}' if variant.kind != 'nm' else variant.slug
  run_dir = os.path.join(ctx.workdir, label)
  prefix = f'[{label}] '
  row_path = os.path.join(run_dir, 'row.json')
  fingerprint = hashlib.sha256(json.dumps(ctx.config.to_dict(), sort_keys=True,
                                          default=str).encode()).hexdigest()[:16]
  if os.path.exists(row_path):  # Finished earlier with this config: phases, export, timings.
    with open(row_path) as f:
      cached = json.load(f)
    if cached.get('config_fingerprint') == fingerprint:
      return cached
  row = {'config_fingerprint': fingerprint, 'variant': variant.name, 'schedule': p.schedule,
         'target_sparsity': sparsity, 'dir': label}
  retrain_epochs_total = 0
  if p.schedule == 'gradual':
    if p.gradual_begin_step >= 0:
      begin, end = p.gradual_begin_step, p.gradual_end_step
    else:
      begin, end = (int(e * ctx.steps_per_epoch)
                    for e in (p.gradual_begin_epoch, p.gradual_end_epoch))
    hook = gradual.mask_updater(
        final_sparsity=sparsity, begin_step=begin, end_step=end, frequency=p.gradual_every_steps,
        prunable=prunable, scope=variant.kind, method=variant.score, seed=ctx.config.seed + 1,
        overrides=parse_overrides(p.overrides))
    state = _retrain_phase(ctx, os.path.join(run_dir, 'retrained'), dense_state.params,
                           pruning.ones_like(dense_state.params), prunable, p.retrain_epochs,
                           before_step=hook, prefix=prefix)
    params, masks, keep = state.params, state.masks, None
    row['one_shot_test_accuracy'] = None
    retrain_epochs_total = p.retrain_epochs
    if p.retrain_steps:
      row['retrain_steps'] = p.retrain_steps
  else:
    rounds = p.rounds if p.schedule == 'iterative' else 1

    def per_round(target):  # Each iterative round removes the same fraction of what is left.
      return (pruning.iterative_sparsities(target, rounds) if p.schedule == 'iterative'
              else [target])
    targets = per_round(sparsity)
    # Per-layer overrides follow the same rounds as the global target.
    overrides = {pattern: per_round(value)
                 for pattern, value in parse_overrides(p.overrides).items()}
    rewind = None
    if p.schedule == 'iterative' and p.rewind_epoch >= 0:
      rewind = (ctx.template if p.rewind_epoch == 0 else
                ctx.dense_state(dense_dir, p.rewind_epoch * ctx.steps_per_epoch)).params
    params, masks = dense_state.params, None
    for r, target in enumerate(targets):
      where = run_dir if rounds == 1 else os.path.join(run_dir, f'round_{r + 1}')
      params, masks, keep, meta = _prune_phase(
          ctx, os.path.join(where, 'pruned'), variant, target, params, prunable, masks,
          overrides={pattern: values[r] for pattern, values in overrides.items()})
      if r == 0:
        row['one_shot_test_accuracy'] = meta['test_accuracy']
        row['one_shot_test_loss'] = meta.get('test_loss')
      ctx.console.line(f'{prefix}pruned to {meta["sparsity"]:.4f} (round {r + 1}/{rounds}): '
                       f'test_accuracy before retraining {meta["test_accuracy"]:.4f}')
      if rewind is not None:
        params = pruning.apply_masks(rewind, masks)
      if p.retrain_epochs > 0 or p.retrain_steps > 0:
        state = _retrain_phase(ctx, os.path.join(where, 'retrained'), params, masks,
                               prunable, p.retrain_epochs, prefix=prefix)
        params, masks = state.params, state.masks
        retrain_epochs_total += p.retrain_epochs
        row['retrain_steps'] = row.get('retrain_steps', 0) + p.retrain_steps
  stats = pruning.sparsity_stats(params, masks, prunable)
  row.update(sparsity=stats['sparsity'], total_sparsity=stats['total_sparsity'],
             nonzero=stats['total_nonzero'], dense_bytes=stats['dense_bytes'],
             retrain_epochs=retrain_epochs_total,
             total_epochs=ctx.config.num_epochs + retrain_epochs_total,
             **{f'test_{k}': v for k, v in ctx.test_metrics(params).items()},
             layers={k: v['sparsity'] for k, v in stats['layers'].items()})
  if p.export_formats:
    row['export'] = _export(ctx, os.path.join(run_dir, 'export'), params, masks, prunable)
  if variant.kind in ('neuron', 'heads') and p.measure_latency:
    row['structured'] = _latency(ctx, variant, dense_state.params, keep, params)
  if jax.process_index() == 0:
    with open(row_path, 'w') as f:
      json.dump(row, f, indent=1)
  return row


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the whole workflow of `config.prune` in `workdir` (resuming); returns results.json."""
  config_lib.validate(config)
  variants = validate_prune_config(config)
  p = config.prune
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  lock = loop.lock_workdir(workdir, '.prune-lock')  # noqa: F841  (held until the end)
  console = metrics.Console()
  start = time.monotonic()

  ctx = _Context(config, workdir, console)
  for variant in variants:
    if variant.kind == 'heads' and not hasattr(ctx.model, 'heads_per_layer'):
      raise ConfigError(f'prune.variants: {variant.name!r} needs a Transformer (model.name gpt or '
                        f'vit); {type(ctx.model).__name__} has no attention heads.')
  if p.dense_dir:
    dense_dir = os.path.abspath(p.dense_dir)
    dense_results = report.read_results(dense_dir)
    if dense_results is None:
      raise ConfigError(f'prune.dense_dir={p.dense_dir} holds no finished dense run '
                        '(results.json): finish it first, or leave prune.dense_dir empty.')
  else:
    dense_dir = os.path.join(workdir, 'dense')
    # Keep the rewind point although checkpoint_max_to_keep would delete it.
    keep = ((p.rewind_epoch * ctx.steps_per_epoch,)
            if p.schedule == 'iterative' and p.rewind_epoch > 0 else ())
    dense_results = loop.train_and_evaluate(config, dense_dir, keep_steps=keep,
                                            log_prefix='[dense] ')
  dense_state = ctx.dense_state(dense_dir)
  dense_metrics = ctx.test_metrics(dense_state.params)
  dense_accuracy = dense_metrics['accuracy']
  prunable = pruning.prunable_tree(dense_state.params, tuple(p.include), tuple(p.exclude))
  console.line(f'Dense model: test_accuracy {dense_accuracy:.4f} ({dense_dir}); pruning '
               f'{len(variants)} variant(s) x {len(p.sparsities)} sparsity(ies), schedule '
               f'{p.schedule}, ' + (f'{p.retrain_steps} retrain step(s)' if p.retrain_steps else
                                    f'{p.retrain_epochs} retrain epoch(s)') + ' each')

  rows = []
  for variant in variants:
    for sparsity in (p.sparsities if variant.kind != 'nm' else [1 - variant.n / variant.m]):
      row = _run_one(ctx, dense_dir, dense_state, variant, float(sparsity), prunable)
      row['dense_test_accuracy'] = dense_accuracy
      row['delta'] = row['test_accuracy'] - dense_accuracy
      rows.append(row)
      console.line(f'[{row["dir"]}] sparsity {row["sparsity"]:.4f}: test_accuracy '
                   f'{row["test_accuracy"]:.4f} ({row["delta"]:+.4f} vs dense)')
  results = {
      'config_name': config.name, 'dataset': config.data.name, 'schedule': p.schedule,
      'dense_dir': dense_dir, 'dense_test_accuracy': dense_accuracy,
      'dense_test_loss': dense_metrics['loss'],
      'dense_epochs': dense_results.get('epochs_run'), 'rows': rows,
      'wall_time_s': time.monotonic() - start, 'jax_version': jax.__version__,
      'backend': jax.default_backend(), 'num_devices': len(ctx.par.devices),
      'parallelism': ctx.par.describe(),
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=1)
    with open(os.path.join(workdir, 'results.md'), 'w') as f:
      f.write(markdown_table(results))
    if config.write_plot:
      plot_sweep(results, os.path.join(workdir, 'sparsity_sweep.png'))
  console.line(markdown_table(results))
  return results


def _fmt(value) -> str:
  return '' if value is None else f'{value:.4f}'


def markdown_table(results: dict[str, Any]) -> str:
  lines = [f'Dense test accuracy {results["dense_test_accuracy"]:.4f}, loss '
           f'{_fmt(results.get("dense_test_loss"))}; schedule '
           f'{results["schedule"]}.', '',
           '| variant | sparsity | one-shot acc | final acc | vs dense | one-shot loss '
           '| final loss | retrain epochs | bitmask+f32 | bitmask+int8 | notes |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in results['rows']:
    one = r.get('one_shot_test_accuracy')
    exp = r.get('export', {})
    size = {q: f'{e["bytes"] / 1024:.0f} KiB' for q, e in exp.items()}
    notes = ''
    if 'structured' in r:
      s = r['structured']
      shape = (f'hidden {s["hidden_sizes"]}' if 'hidden_sizes' in s
               else f'heads {s["heads_per_layer"]}')
      notes = (f'{shape}, speed-up x{s["batch_1"]["speedup"]:.2f} (b1), '
               f'x{s["batch_256"]["speedup"]:.2f} (b256)')
    lines.append(f'| {r["variant"]} | {r["sparsity"]:.4f} | '
                 f'{"" if one is None else f"{one:.4f}"} | {r["test_accuracy"]:.4f} | '
                 f'{r["delta"] * 100:+.2f} pt | {_fmt(r.get("one_shot_test_loss"))} | '
                 f'{_fmt(r.get("test_loss"))} | {r["retrain_epochs"]} | {size.get("none", "")} | '
                 f'{size.get("int8", "")} | {notes} |')
  return '\n'.join(lines) + '\n'


def plot_sweep(results: dict[str, Any], path: str) -> None:
  """Accuracy vs sparsity, a curve per variant; with one sparsity per variant (e.g. the LM's 50% /
  2:4 comparison), bars of test loss one-shot and after retraining instead."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = results['rows']
  if len({r['variant'] for r in rows}) == len(rows) and all('test_loss' in r for r in rows):
    _plot_losses(results, path, plt)
    return
  fig, ax = plt.subplots(figsize=(7, 4.5))
  by_variant: dict[str, list] = {}
  for r in results['rows']:
    by_variant.setdefault(r['variant'], []).append((r['sparsity'], r['test_accuracy']))
  for name, points in by_variant.items():
    points.sort()
    ax.plot([x for x, _ in points], [y * 100 for _, y in points], marker='o', label=name)
  epochs = results.get('dense_epochs')
  ax.axhline(results['dense_test_accuracy'] * 100, color='k', linestyle='--',
             label=f'dense phase ({epochs} epochs)' if epochs else 'dense')
  ax.set_xlabel('sparsity of prunable weights')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(f'{results["config_name"]}: {results["schedule"]} pruning')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_losses(results: dict[str, Any], path: str, plt) -> None:
  rows = results['rows']
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4.5))
  x = np.arange(len(rows))
  one_shot = [r.get('one_shot_test_loss') or np.nan for r in rows]
  ax.bar(x - 0.2, one_shot, 0.4, label='one-shot')
  ax.bar(x + 0.2, [r['test_loss'] for r in rows], 0.4, label='after retraining')
  if results.get('dense_test_loss') is not None:
    ax.axhline(results['dense_test_loss'], color='k', linestyle='--', label='dense')
  values = [v for v in one_shot + [r['test_loss'] for r in rows] if np.isfinite(v)]
  low = min(values + [results.get('dense_test_loss') or min(values)])
  ax.set_ylim(low - 0.05 * (max(values) - low + 1e-9) - 0.02, max(values) * 1.01)
  labels = [r['variant'].replace('/', '/\n') + f'\n{r["sparsity"]:.0%}' for r in rows]
  ax.set_xticks(x, labels, fontsize=8)
  ax.set_ylabel('test loss')
  ax.set_title(f'{results["config_name"]}: {results["schedule"]} pruning')
  ax.grid(alpha=0.3, axis='y')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
