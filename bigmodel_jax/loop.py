"""The training loop: config + workdir -> a trained, checkpointed, logged and reported model.

`train_and_evaluate` is what `launch.py` runs. Re-running it on the same workdir resumes from the
newest checkpoint (params, optimizer state, step, data position, history) and reproduces the
uninterrupted run exactly: shuffling is a function of (seed, epoch), dropout keys of (seed, step),
and compiled chunks of steps start at the same boundaries.
"""

import datetime
import fcntl
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from bigmodel_jax import (
  checkpoint,
  data,
  losses,
  metrics,
  models,
  optim,
  parallel,
  pruning,
  report,
  train,
  train_state,
)
from bigmodel_jax import config as config_lib
from bigmodel_jax.errors import ConfigError, NonFiniteLossError


def _fresh_meta() -> dict[str, Any]:
  return {'step': 0, 'history': [], 'epoch_sums': {'loss': 0.0, 'accuracy': 0.0, 'steps': 0},
          'best_eval_loss': None, 'best_eval_accuracy': None, 'best_epoch': None, 'bad_evals': 0,
          'stopped_early': False, 'train_time_s': 0.0, 'wall_time_s': 0.0, 'compile_time_s': 0.0}


def evaluate(eval_call, par: parallel.Parallelism, state: train_state.TrainState,
             split: data.Split, batch_size: int) -> dict[str, float]:
  """Mean loss and accuracy over every example of `split` (padding masked out).

  Args:
    eval_call: `par.eval_call(...)`.
    par: the run's layout; each host feeds its rows of every global batch.
    state: the state to evaluate.
    split: the examples.
    batch_size: global evaluation batch.
  """
  rows = par.local_rows(batch_size)
  sums = [eval_call(state, par.put_batch(batch, stacked=False))
          for batch in data.eval_batches(split, batch_size, rows)]
  totals = jax.device_get(jax.tree.map(lambda *xs: sum(xs), *sums))
  return {'loss': float(totals['loss_sum'] / totals['count']),
          'accuracy': float(totals['correct_sum'] / totals['count'])}


def _trim(chunk: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
  return {k: v[:steps] for k, v in chunk.items()}


def lock_workdir(workdir: str, name: str = '.lock'):
  """An exclusive lock on WORKDIR/NAME (released when the process ends, even by kill -9)."""
  if jax.process_index() != 0:
    return None
  handle = open(os.path.join(workdir, name), 'w')
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.close()
    raise ConfigError(f'Another run is using --workdir={workdir}: wait for it to finish, or use '
                      'a new workdir.') from None
  return handle


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       masked: bool = False,
                       initial_state: Callable[[train_state.TrainState],
                                               train_state.TrainState] | None = None,
                       before_step: train.StateHook | None = None,
                       prunable: Any = None, keep_steps: Sequence[int] = (),
                       log_prefix: str = '') -> dict[str, Any]:
  """Trains and evaluates the configured model in `workdir`, resuming if it holds a checkpoint.

  The keyword arguments are how the pruning workflow (`compress.py`) reuses this loop:

  Args:
    config: the run's config (validated here).
    workdir: where checkpoints, TensorBoard files and results.json go.
    masked: train a pruned model: the state carries masks (saved in every checkpoint) and the
      optimizer is wrapped in `pruning.masked`, so pruned weights stay exactly zero.
    initial_state: maps the freshly initialised state to the starting state (e.g. pruned params,
      masks and zeroed moments); used only when `workdir` has no checkpoint yet.
    before_step: hook run inside the compiled step (gradual pruning).
    prunable: tree of bools; with masks, results report the sparsity over these leaves.
    keep_steps: checkpoint steps never deleted (e.g. an epoch to rewind to).
    log_prefix: put before every console line (which phase of a sweep is talking).

  Returns:
    The results written to WORKDIR/results.json.
  """
  session_start = time.monotonic()
  config_lib.validate(config)
  par = parallel.from_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  lock = lock_workdir(workdir)  # noqa: F841  (held until this function returns)
  console = metrics.Console(prefix=log_prefix)

  datasets = parallel.process_zero_first(lambda: data.load_datasets(config.data))
  n_train = len(datasets.train)
  if config.batch_size > n_train:
    raise ConfigError(f'config.batch_size={config.batch_size} is larger than the {n_train} '
                      'training examples; use a smaller batch.')
  steps_per_epoch = n_train // config.batch_size
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  num_epochs = -(-total_steps // steps_per_epoch)

  model = models.create_model(config.model, datasets.num_classes)
  par.set_logical_axes(models.logical_axes(model, datasets.train.inputs.shape[1:],
                                           datasets.train.inputs.dtype))
  tx, schedule = optim.create_optimizer(config.optimizer, steps_per_epoch, total_steps)
  if masked:
    # Masking the updates keeps pruned weights at zero; the gradients need masking too only
    # when the optimizer looks across entries (global-norm clipping), and it costs a pass.
    tx = pruning.masked(tx, mask_gradients=config.optimizer.grad_clip_norm > 0)
  loss_fn = losses.LOSSES[config.loss]  # Evaluation's; training's may be label-smoothed.
  train_loss_fn = losses.train_loss(config.loss, config.label_smoothing)
  init = functools.partial(train_state.create_train_state, model=model, tx=tx,
                           input_shape=datasets.train.inputs.shape[1:], masked=masked,
                           input_dtype=datasets.train.inputs.dtype)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 max_to_keep=config.checkpoint_max_to_keep,
                                 async_save=config.checkpoint_async, keep_steps=keep_steps)
  latest = ckpt.latest_step()
  init = functools.partial(init, config.seed)
  if latest is None:
    state, meta = par.init(init), _fresh_meta()
    if initial_state is not None:
      state = par.place(initial_state(state))
  else:
    # Restored straight into this run's shardings, whatever device count wrote the checkpoint.
    abstract = jax.eval_shape(init)
    arrays, meta = ckpt.restore(latest, par.abstract(abstract.arrays()))
    state = abstract.replace_arrays(arrays)
  step = int(meta['step'])
  if 'data_position' in meta and meta['data_position'] != {
      'epoch': step // steps_per_epoch, 'step_in_epoch': step % steps_per_epoch}:
    raise ConfigError(
        f'The checkpoint at step {step} was written with another epoch length '
        f'(data position {meta["data_position"]}); config.batch_size or the data limits changed: '
        'restore them or use a new --workdir.')
  num_params = train_state.param_count(state.params)

  def build_results() -> dict[str, Any]:
    history = meta['history']
    last = history[-1] if history else {}
    train_steps_done = sum(h['steps'] for h in history)
    results = {
        'config_name': config.name, 'dataset': config.data.name, 'model': config.model.name,
        'num_params': num_params, 'epochs_run': len(history), 'steps': step,
        'eval_split': 'validation' if datasets.test is not None else 'test',
        'final_eval_loss': last.get('eval_loss'), 'final_eval_accuracy': last.get('eval_accuracy'),
        'best_eval_loss': meta['best_eval_loss'],
        'best_eval_accuracy': meta['best_eval_accuracy'], 'best_epoch': meta['best_epoch'],
        'stopped_early': meta['stopped_early'], 'train_time_s': meta['train_time_s'],
        'wall_time_s': meta['wall_time_s'], 'compile_time_s': meta['compile_time_s'],
        'train_examples_per_s': (train_steps_done * config.batch_size / meta['train_time_s']
                                 if meta['train_time_s'] else None),
        'batch_size': config.batch_size, 'jax_version': jax.__version__,
        'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
        'num_devices': len(par.devices), 'parallelism': par.describe(),
        'finished_at': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
        'history': history,
    }
    if state.masks is not None:
      stats = pruning.sparsity_stats(state.params, state.masks, prunable)
      results['sparsity'] = stats['sparsity']
      results['sparsity_stats'] = stats
    if datasets.test is not None:
      test = evaluate(eval_call, par, state, datasets.test, par.eval_batch_size)
      results.update(test_loss=test['loss'], test_accuracy=test['accuracy'])
    else:
      results.update(test_loss=results['final_eval_loss'],
                     test_accuracy=results['final_eval_accuracy'])
    return results

  eval_call = par.eval_call(loss_fn=loss_fn)
  if step >= total_steps or meta['stopped_early']:
    previous = report.read_results(workdir)
    if previous is not None:
      console.line(f'Run in {workdir} already finished at step {step} '
                   f'(eval_accuracy {previous["final_eval_accuracy"]:.4f}); nothing to do.')
      return previous

  console.line(f'{config.name}: {num_params:,} params, {n_train:,} train / '
               f'{len(datasets.eval):,} eval examples, {steps_per_epoch} steps/epoch, '
               f'{num_epochs} epochs; {par.summary()}'
               + (f'; resuming at step {step}' if step else ''))
  writer = metrics.MetricWriter(os.path.join(workdir, 'tensorboard'))
  compile_step = par.train_call(state, loss_fn=train_loss_fn, before_step=before_step)
  rows = par.local_rows(config.batch_size)
  learning_rate = jax.jit(schedule)  # Compiled once here, not eagerly op by op inside epoch 1.
  learning_rate(step)
  profile_dir, profiled_steps = os.path.join(workdir, 'profile'), None

  def save(state):
    meta['wall_time_s'] += time.monotonic() - session_clock[0]
    session_clock[0] = time.monotonic()
    meta['compile_time_s'] = compile_base + compile_step.seconds
    # Where the input pipeline stands; a resume recomputes it from the step and checks it.
    meta['data_position'] = {'epoch': step // steps_per_epoch,
                             'step_in_epoch': step % steps_per_epoch}
    ckpt.save(step, par.for_checkpoint(state.arrays()), meta)

  session_clock = [session_start]
  compile_base = meta['compile_time_s']
  epoch_times = []
  try:
    for epoch in range(step // steps_per_epoch, num_epochs):
      if step >= total_steps or meta['stopped_early']:
        break
      epoch_start = epoch * steps_per_epoch
      epoch_end = min(epoch_start + steps_per_epoch, total_steps)
      sums = meta['epoch_sums']
      log_sums = {'loss': 0.0, 'accuracy': 0.0, 'steps': 0}
      epoch_clock, counted_seconds, steps_this_session = time.monotonic(), 0.0, 0
      compile_seconds_before = compile_step.seconds  # Compile time is not training time.
      chunks = data.train_chunks(datasets.train, batch_size=config.batch_size,
                                 steps_per_call=config.steps_per_call, seed=config.seed,
                                 epoch=epoch, shuffle=config.data.shuffle,
                                 start_step=step - epoch_start, rows=rows)
      upcoming = next(chunks, None)
      while upcoming is not None and step < epoch_end:
        _, chunk = upcoming
        chunk = _trim(chunk, epoch_end - step)
        k = len(chunk['targets'])
        if profiled_steps is None and config.profile_steps > 0 and jax.process_index() == 0:
          jax.profiler.start_trace(profile_dir)
          profiled_steps = 0
        compiled_before = compile_step.seconds
        state, step_metrics = compile_step(state, par.put_batch(chunk, stacked=True))
        if compile_step.seconds > compiled_before and compile_step.flops:
          console.line(f'compiled a {k}-step call in {compile_step.seconds - compiled_before:.1f}s'
                       f': {compile_step.flops / 1e6:.4g} MFLOP per step per device; memory '
                       + ', '.join(f'{name} {size / 2**20:.2f} MiB' for name, size in
                                   (compile_step.memory or {}).items()))
        upcoming = next(chunks, None)  # Gather the next chunk while this one computes.
        step_metrics = jax.device_get(step_metrics)
        bad = np.flatnonzero(~np.isfinite(step_metrics['loss']))
        if bad.size:
          ckpt.wait()
          raise NonFiniteLossError(
              f'The loss became {step_metrics["loss"][bad[0]]} at step {step + bad[0] + 1}; that '
              f'state was not saved. The last good checkpoint is step {ckpt.latest_step()} in '
              f'{ckpt.directory}: lower optimizer.learning_rate or set optimizer.grad_clip_norm, '
              'then re-run the same command to resume from it.')
        step += k
        steps_this_session += k
        for acc in (sums, log_sums):
          acc['loss'] += float(step_metrics['loss'].sum())
          acc['accuracy'] += float(step_metrics['accuracy'].sum())
          acc['steps'] += k
        if profiled_steps is not None and profiled_steps >= 0:
          profiled_steps += k
          if profiled_steps >= config.profile_steps:
            jax.profiler.stop_trace()
            logging.info('Wrote a profile of %d steps to %s', profiled_steps, profile_dir)
            profiled_steps = -1
        elapsed = time.monotonic() - epoch_clock - (compile_step.seconds - compile_seconds_before)
        rate = steps_this_session * config.batch_size / elapsed
        console.progress(f'  epoch {epoch + 1}/{num_epochs}  step {step - epoch_start}/'
                         f'{epoch_end - epoch_start}  loss {sums["loss"] / sums["steps"]:.4f}  '
                         f'{metrics.format_rate(rate)} ex/s')
        if step // config.log_every_steps > (step - k) // config.log_every_steps:
          writer.write_scalars(step, {
              'train/loss': log_sums['loss'] / log_sums['steps'],
              'train/accuracy': log_sums['accuracy'] / log_sums['steps'],
              'train/learning_rate': float(learning_rate(step)),
              'perf/examples_per_s': rate,
              'perf/step_time_ms': 1e3 * elapsed / steps_this_session,
          })
          log_sums = {'loss': 0.0, 'accuracy': 0.0, 'steps': 0}
        every = config.checkpoint_every_steps
        if every and step < epoch_end and step // every > (step - k) // every:
          meta.update(step=step, epoch_sums=sums,
                      train_time_s=meta['train_time_s'] + elapsed - counted_seconds)
          counted_seconds = elapsed
          save(state)
      train_seconds = (time.monotonic() - epoch_clock
                       - (compile_step.seconds - compile_seconds_before))
      evaluation = evaluate(eval_call, par, state, datasets.eval, par.eval_batch_size)
      epoch_times.append(time.monotonic() - epoch_clock)
      record = {
          'epoch': epoch + 1, 'step': step, 'steps': sums['steps'],
          'train_loss': sums['loss'] / sums['steps'],
          'train_accuracy': sums['accuracy'] / sums['steps'],
          'eval_loss': evaluation['loss'], 'eval_accuracy': evaluation['accuracy'],
          'examples_per_s': steps_this_session * config.batch_size / train_seconds,
          'learning_rate': float(learning_rate(step)),
      }
      improved = (meta['best_eval_loss'] is None or
                  record['eval_loss'] < meta['best_eval_loss'] - config.early_stopping_min_delta)
      meta['bad_evals'] = 0 if improved else meta['bad_evals'] + 1
      if improved:
        meta['best_eval_loss'] = record['eval_loss']
      if meta['best_eval_accuracy'] is None or record['eval_accuracy'] > meta['best_eval_accuracy']:
        meta['best_eval_accuracy'], meta['best_epoch'] = record['eval_accuracy'], epoch + 1
      patience = config.early_stopping_patience
      if patience and meta['bad_evals'] >= patience and step < total_steps:
        meta['stopped_early'] = True
      meta['history'].append(record)
      meta.update(step=step, epoch_sums={'loss': 0.0, 'accuracy': 0.0, 'steps': 0},
                  train_time_s=meta['train_time_s'] + train_seconds - counted_seconds)
      save(state)
      writer.write_scalars(step, {'eval/loss': record['eval_loss'],
                                  'eval/accuracy': record['eval_accuracy'],
                                  'train/epoch_loss': record['train_loss'],
                                  'train/epoch_accuracy': record['train_accuracy']})
      writer.flush()
      eta = np.mean(epoch_times) * (num_epochs - epoch - 1)
      console.line(f'epoch {epoch + 1}/{num_epochs}  train_loss {record["train_loss"]:.4f}  '
                   f'eval_loss {record["eval_loss"]:.4f}  '
                   f'eval_accuracy {record["eval_accuracy"]:.4f}  '
                   f'{metrics.format_rate(record["examples_per_s"])} ex/s  '
                   f'eta {metrics.format_duration(eta)}')
      if meta['stopped_early']:
        console.line(f'Early stop: eval loss has not improved for {patience} epochs.')
  finally:
    if profiled_steps is not None and profiled_steps >= 0:
      jax.profiler.stop_trace()
    ckpt.wait()
    writer.close()

  results = build_results()
  path = report.write_results(workdir, results)
  if config.write_plot:
    report.plot_curves(workdir, meta['history'], f'{config.name} ({config.data.name})')
  ckpt.close()
  console.line(f'Done: test_accuracy {results["test_accuracy"]:.4f}, best eval_accuracy '
               f'{results["best_eval_accuracy"]:.4f} (epoch {results["best_epoch"]}), '
               f'{metrics.format_rate(results["train_examples_per_s"] or 0)} train ex/s; '
               f'wrote {path}')
  return results
