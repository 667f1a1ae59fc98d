"""The training loop: a run set-up + workdir -> a trained, checkpointed, logged and reported model.

`train_and_evaluate(config, workdir)` is what `launch.py` runs. Re-running it on the same workdir
resumes from the newest checkpoint (params, optimizer state, step, data position, history) and
reproduces the uninterrupted run exactly: shuffling is a function of (seed, epoch), dropout keys
of (seed, step), and compiled chunks of steps start at the same boundaries. Compression phases
call `train(run, workdir, phase)` with their own `Phase`.
"""

import dataclasses
import datetime
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from bigmodel_jax import data, metrics, parallel, pruning, report, timing, train_state
from bigmodel_jax.train import StateHook
from bigmodel_jax.training import evals, hooks
from bigmodel_jax.training import workdir as workdir_lib
from bigmodel_jax.training.setup import Run, create_run


@dataclasses.dataclass(frozen=True)
class Phase:
  """How a compression phase uses the loop (the defaults train a dense model).

  Attributes:
    initial_state: maps the freshly initialised state to the starting one (e.g. pruned params,
      masks and zeroed moments); used only when the workdir has no checkpoint yet.
    before_step: hook run inside the compiled step (gradual pruning).
    prunable: tree of bools; with masks, results report the sparsity over these leaves.
    keep_steps: checkpoint steps never deleted (e.g. an epoch to rewind to).
    log_prefix: put before every console line (which phase of a sweep is talking).
  """
  initial_state: Callable[[train_state.TrainState], train_state.TrainState] | None = None
  before_step: StateHook | None = None
  prunable: Any = None
  keep_steps: Sequence[int] = ()
  log_prefix: str = ''


def evaluate(eval_call, par: parallel.Layout, state: train_state.TrainState,
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates the configured model in `workdir`, resuming if it holds a checkpoint.

  Returns:
    The results written to WORKDIR/results.json.
  """
  started_at = time.monotonic()
  return train(create_run(config), workdir, started_at=started_at)


class _WallClock:
  """Seconds of this session, handed out once each (`lap`) to the checkpoints' wall time, and
  the start-up marks of results.json (`mark`: seconds since the process started)."""

  def __init__(self, started_at: float | None):
    self._last = time.monotonic() if started_at is None else started_at
    age = timing.process_age_s()
    self._offset = None if age is None else age - time.monotonic()
    self.startup = {}
    if started_at is not None:
      self.mark('imports_s', started_at)  # When train_and_evaluate was called.
    self.mark('run_set_up_s')

  def mark(self, name: str, at: float | None = None) -> None:
    """Records `at` (default: now; time.monotonic) as seconds since the process started."""
    if self._offset is not None and name not in self.startup:
      self.startup[name] = self._offset + (time.monotonic() if at is None else at)

  def lap(self) -> float:
    now = time.monotonic()
    seconds, self._last = now - self._last, now
    return seconds


def train(run: Run, workdir: str, phase: Phase = Phase(), *,
          started_at: float | None = None) -> dict[str, Any]:
  """Trains `run` in `workdir` (resuming), evaluates, writes results.json; returns the results."""
  wall = _WallClock(started_at)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.locked(workdir):
    return _train(run, workdir, phase, wall)


def _train(run: Run, workdir: str, phase: Phase, wall: '_WallClock') -> dict[str, Any]:
  console = metrics.Console(prefix=phase.log_prefix)
  units = evals.Units(run.tokens_per_example)
  ckpt = run.checkpointer(workdir, phase.keep_steps)
  latest, saved = workdir_lib.saved_progress(run, ckpt)  # Refuses a wrong checkpoint first.
  if _finished(run, saved):
    previous = report.read_results(workdir)
    if previous is not None:
      ckpt.close()
      final = (f'eval_loss {previous["final_eval_loss"]:.4f}' if units.tokens else
               f'eval_accuracy {previous["final_eval_accuracy"]:.4f}')
      console.line(f'Run in {workdir} already finished at step {latest} ({final}); '
                   'nothing to do.')
      return previous
  compiled = _train_call(run, phase, int(saved['step']))  # Compiles while the state is built.
  state, meta = workdir_lib.restore_or_init(run, ckpt, latest, phase.initial_state)
  wall.mark('state_ready_s')
  eval_call = run.par.eval_call(loss_fn=run.eval_loss_fn)
  config, steps = run.config, run.steps
  console.line(f'{config.name}: {train_state.param_count(state.params):,} params, '
               f'{len(run.datasets.train):,} train / {len(run.datasets.eval):,} eval examples, '
               f'{steps.per_epoch} steps/epoch, {steps.epochs} epochs; {run.par.summary()}'
               + (f'; resuming at step {meta["step"]}' if meta['step'] else ''))
  state = _train_epochs(run, workdir, state, meta, ckpt, console, wall, compiled, eval_call,
                        units)
  results = _results(run, state, meta, eval_call, phase.prunable, units)
  results['startup'] = wall.startup
  path = report.write_results(workdir, results)
  if config.write_plot:
    report.plot_curves(workdir, meta['history'], f'{config.name} ({config.data.name})',
                       meta['eval_history'])
  ckpt.close()
  console.line(_done_line(results, units, path))
  return results


def _done_line(results: dict[str, Any], units: evals.Units, path: str) -> str:
  rate = units.rate(results['train_examples_per_s'] or 0, 'train ')
  if units.tokens:
    return (f'Done: test_loss {results["test_loss"]:.4f}, test_perplexity '
            f'{results["test_perplexity"]:.2f}, best eval_loss {results["best_eval_loss"]:.4f} '
            f'(step {results["best_eval_loss_step"]}), {rate}; wrote {path}')
  return (f'Done: test_accuracy {results["test_accuracy"]:.4f}, best eval_accuracy '
          f'{results["best_eval_accuracy"]:.4f} (epoch {results["best_epoch"]}), {rate}; '
          f'wrote {path}')


def _finished(run: Run, meta: dict[str, Any]) -> bool:
  return meta['step'] >= run.steps.total or meta['stopped_early']


def _chunk_sizes(step: int, steps, steps_per_call: int) -> set[int]:
  """The sizes of the chunks `data.train_chunks` yields for the rest of the epoch of `step`."""
  epoch_start = step // steps.per_epoch * steps.per_epoch
  end = min(epoch_start + steps.per_epoch, steps.total)
  sizes = set()
  while step < end:
    k = min(steps_per_call - (step - epoch_start) % steps_per_call, end - step)
    sizes.add(k)
    step += k
  return sizes


def _train_call(run: Run, phase: Phase, start_step: int) -> parallel.CompiledCall:
  """The compiled train call, already compiling (in a thread, while the state is built) for the
  chunk shapes of the epoch that `start_step` is in."""
  config = run.config
  abstract = run.abstract_state.replace_arrays(run.par.abstract(run.abstract_state.arrays()))
  compiled = run.par.train_call(abstract, loss_fn=run.train_loss_fn,
                                before_step=phase.before_step)
  split, rows = run.datasets.train, run.par.local_rows(config.batch_size)
  for k in sorted(_chunk_sizes(start_step, run.steps, config.steps_per_call), reverse=True):
    zeros = {name: np.zeros((k, rows.stop - rows.start, *x.shape[1:]), x.dtype)
             for name, x in (('inputs', split.inputs), ('targets', split.targets))}
    chunk = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
        run.par.put_batch(zeros, stacked=True))
    compiled.compile_in_background(abstract, chunk)
  return compiled


def _train_epochs(run, workdir, state, meta, ckpt, console, wall, compiled, eval_call, units):
  """Runs the remaining epochs; each ends with an evaluation and a checkpoint."""
  config, steps = run.config, run.steps
  learning_rate = hooks.learning_rate_fn(run.schedule)
  compile_base = meta['compile_time_s']

  def save(state, train_seconds):
    meta['train_time_s'] += train_seconds
    meta['wall_time_s'] += wall.lap()
    meta['compile_time_s'] = compile_base + compiled.seconds
    meta['data_position'] = workdir_lib.data_position(meta['step'], steps.per_epoch)
    ckpt.save(meta['step'], run.par.for_checkpoint(state.arrays()), meta)

  writer = metrics.MetricWriter(os.path.join(workdir, 'tensorboard'))
  progress = hooks.Progress(console, writer, num_epochs=steps.epochs,
                            batch_size=config.batch_size, log_every=config.log_every_steps,
                            schedule=learning_rate, units=units)
  evaluations = evals.Evaluations(
      every=config.eval_every_steps, meta=meta, units=units, console=console, writer=writer,
      evaluate=lambda state: evaluate(eval_call, run.par, state, run.datasets.eval,
                                      run.par.eval_batch_size),
      batch_size=config.batch_size, total_steps=steps.total,
      patience=config.early_stopping_patience, min_delta=config.early_stopping_min_delta)
  profiler = hooks.Profiler(config.profile_steps, os.path.join(workdir, 'profile'), console)
  # An evaluation before the checkpoint of the same chunk, so that the checkpoint records it.
  chunk_hooks = (hooks.CompileReport(console, compiled), progress, evaluations,
                 hooks.MidEpochCheckpoint(config.checkpoint_every_steps, save,
                                          stopped=lambda: meta['stopped_early']), profiler)
  epoch_times = []
  profiler.start()
  try:
    for epoch in range(meta['step'] // steps.per_epoch, steps.epochs):
      if meta['step'] >= steps.total or meta['stopped_early']:
        break
      progress.start_epoch()
      state, timer = _train_epoch(run, compiled, state, meta, epoch, ckpt, chunk_hooks, wall)
      elapsed = timer.elapsed()
      sums, step = meta['epoch_sums'], meta['step']
      done = evaluations.at(step)  # Made already when early stopping ended the epoch there.
      evaluation = done or evaluate(eval_call, run.par, state, run.datasets.eval,
                                    run.par.eval_batch_size)
      epoch_times.append(timer.wall())
      record = units.extend({
          'epoch': epoch + 1, 'step': step, 'steps': sums['steps'],
          'train_loss': sums['loss'] / sums['steps'],
          'train_accuracy': sums['accuracy'] / sums['steps'],
          'eval_loss': evaluation['loss'], 'eval_accuracy': evaluation['accuracy'],
          'examples_per_s': timer.steps * config.batch_size / elapsed,
          'learning_rate': float(learning_rate(step)),
      })
      if done is None:
        evaluations.add(evals.entry(units, epoch=epoch, step=step, train_sums=meta['eval_sums'],
                                    evaluation=evaluation,
                                    examples_per_s=record['examples_per_s']),
                        finished=step >= steps.total)
      meta['history'].append(record)
      meta['epoch_sums'] = workdir_lib.zero_sums()
      save(state, timer.take(elapsed))
      writer.write_scalars(step, units.scalars({'train/epoch_loss': record['train_loss'],
                                                'train/epoch_accuracy': record['train_accuracy']}))
      writer.flush()
      eta = np.mean(epoch_times) * (steps.epochs - epoch - 1)
      console.line(f'epoch {epoch + 1}/{steps.epochs}  train_loss {record["train_loss"]:.4f}  '
                   f'{units.evaluation(record)}  {units.rate(record["examples_per_s"])}  '
                   f'eta {metrics.format_duration(eta)}')
      if meta['stopped_early']:
        patience = config.early_stopping_patience
        console.line(f'Early stop: eval loss has not improved for {patience} '
                     f'evaluation{"s" if patience > 1 else ""}.')
  finally:
    profiler.close()
    ckpt.wait()
    writer.close()
  return state


def _train_epoch(run, compiled, state, meta, epoch, ckpt, chunk_hooks, wall):
  """One epoch's steps from where `meta['step']` stands; returns (state, its timer)."""
  config, steps = run.config, run.steps
  epoch_start = epoch * steps.per_epoch
  epoch_end = min(epoch_start + steps.per_epoch, steps.total)
  timer = hooks.EpochTimer(compiled)
  chunks = data.train_chunks(run.datasets.train, batch_size=config.batch_size,
                             steps_per_call=config.steps_per_call, seed=config.seed, epoch=epoch,
                             shuffle=config.data.shuffle, start_step=meta['step'] - epoch_start,
                             rows=run.par.local_rows(config.batch_size))
  upcoming = next(chunks, None)
  while upcoming is not None and meta['step'] < epoch_end and not meta['stopped_early']:
    chunk = {k: v[:epoch_end - meta['step']] for k, v in upcoming[1].items()}
    k = len(chunk['targets'])
    state, step_metrics = compiled(state, run.par.put_batch(chunk, stacked=True))
    upcoming = next(chunks, None)  # Gather the next chunk while this one computes.
    step_metrics = jax.device_get(step_metrics)
    wall.mark('first_call_done_s')
    hooks.check_finite(step_metrics, meta['step'], ckpt)
    meta['step'] += k
    timer.steps += k
    hooks.add_chunk(meta['epoch_sums'], step_metrics, k)
    hooks.add_chunk(meta['eval_sums'], step_metrics, k)
    done = hooks.Chunk(epoch=epoch, step=meta['step'], k=k, epoch_start=epoch_start,
                       epoch_end=epoch_end, epoch_sums=meta['epoch_sums'], timer=timer,
                       state=state)
    for hook in chunk_hooks:
      hook(done, step_metrics)
  return state, timer


def _results(run: Run, state, meta, eval_call, prunable, units) -> dict[str, Any]:
  """What results.json holds: the run's config, history, timings, layout and test metrics."""
  config, history, par = run.config, meta['history'], run.par
  last = history[-1] if history else {}
  train_steps_done = sum(h['steps'] for h in history)
  results = {
      'config_name': config.name, 'dataset': config.data.name, 'model': config.model.name,
      'num_params': train_state.param_count(state.params), 'epochs_run': len(history),
      'steps': meta['step'],
      'eval_split': 'validation' if run.datasets.test is not None else 'test',
      'final_eval_loss': last.get('eval_loss'), 'final_eval_accuracy': last.get('eval_accuracy'),
      'best_eval_loss': meta['best_eval_loss'],
      'best_eval_accuracy': meta['best_eval_accuracy'], 'best_epoch': meta['best_epoch'],
      'best_eval_loss_step': meta['best_eval_loss_step'],
      'stopped_early': meta['stopped_early'], 'train_time_s': meta['train_time_s'],
      'wall_time_s': meta['wall_time_s'], 'compile_time_s': meta['compile_time_s'],
      'train_examples_per_s': (train_steps_done * config.batch_size / meta['train_time_s']
                               if meta['train_time_s'] else None),
      'batch_size': config.batch_size, 'jax_version': jax.__version__,
      'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
      'num_devices': len(par.devices), 'parallelism': par.describe(),
      'finished_at': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
      'history': history, 'eval_history': meta['eval_history'],
  }
  if state.masks is not None:
    stats = pruning.sparsity_stats(state.params, state.masks, prunable)
    results['sparsity'] = stats['sparsity']
    results['sparsity_stats'] = stats
  if run.datasets.test is not None:
    test = evaluate(eval_call, par, state, run.datasets.test, par.eval_batch_size)
    results.update(test_loss=test['loss'], test_accuracy=test['accuracy'])
  else:
    results.update(test_loss=results['final_eval_loss'],
                   test_accuracy=results['final_eval_accuracy'])
  if units.tokens:
    rate = results['train_examples_per_s']
    results.update({
        'tokens_per_example': units.tokens_per_example,
        'train_tokens_per_s': None if rate is None else rate * units.tokens_per_example,
        **{f'{key}_perplexity': evals.perplexity(results[f'{key}_loss'])
           for key in ('final_eval', 'best_eval', 'test')}})
  return results
