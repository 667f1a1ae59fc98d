"""The launchable workflow: dense training -> for each (variant, sparsity): prune, retrain,
check, export -> one results table. Every step is resumable (see the package docstring)."""

import hashlib
import json
import os
import time
from typing import Any

import jax
import ml_collections

from bigmodel_jax import config as config_lib
from bigmodel_jax import metrics, pruning, report, training
from bigmodel_jax.compress import checks, schedules, sparse_training
from bigmodel_jax.compress import report as sweep_report
from bigmodel_jax.compress.context import Context
from bigmodel_jax.config import Variant
from bigmodel_jax.errors import ConfigError


def _fingerprint(config: ml_collections.ConfigDict) -> str:
  return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True,
                                   default=str).encode()).hexdigest()[:16]


def run_variant(ctx: Context, dense_dir: str, dense_state, variant: Variant, sparsity: float,
                prunable) -> dict[str, Any]:
  """One row of the sweep: the schedule's driver, then sparsity, test metrics, exports, speed.

  A finished row (WORKDIR/<variant>_s<sparsity>/row.json written with the same config) is read
  back instead of recomputed.
  """
  p = ctx.config.prune
  label = f'{variant.slug}_s{sparsity:.4g}' if variant.kind != 'nm' else variant.slug
  run_dir = os.path.join(ctx.workdir, label)
  row_path = os.path.join(run_dir, 'row.json')
  fingerprint = _fingerprint(ctx.config)
  if os.path.exists(row_path):  # Finished earlier with this config: phases, export, timings.
    with open(row_path) as f:
      cached = json.load(f)
    if cached.get('config_fingerprint') == fingerprint:
      return cached
  row = {'config_fingerprint': fingerprint, 'variant': variant.name, 'schedule': p.schedule,
         'target_sparsity': sparsity, 'dir': label}
  driver = sparse_training.DRIVERS.get(p.training, schedules.DRIVERS[p.schedule])
  params, masks, keep, driver_row = driver(
      ctx, run_dir, dense_dir, dense_state, variant, sparsity, prunable, f'[{label}] ')
  row.update(driver_row)
  stats = pruning.sparsity_stats(params, masks, prunable)
  row.update(sparsity=stats['sparsity'], total_sparsity=stats['total_sparsity'],
             nonzero=stats['total_nonzero'], dense_bytes=stats['dense_bytes'],
             total_epochs=ctx.config.num_epochs + row['retrain_epochs'],
             **{f'test_{k}': v for k, v in ctx.test_metrics(params).items()},
             layers={k: v['sparsity'] for k, v in stats['layers'].items()})
  if p.export_formats:
    row['export'] = checks.export(ctx, os.path.join(run_dir, 'export'), params, masks, prunable)
  if variant.kind in ('neuron', 'heads') and p.measure_latency:
    row['structured'] = checks.latency(ctx, variant, dense_state.params, keep, params)
  if jax.process_index() == 0:
    with open(row_path, 'w') as f:
      json.dump(row, f, indent=1)
  return row


def _dense_phase(ctx: Context, workdir: str) -> tuple[str, dict[str, Any]]:
  """(dense workdir, its results): `prune.dense_dir`, or a dense run trained in WORKDIR/dense."""
  p = ctx.config.prune
  if p.dense_dir:
    dense_dir = os.path.abspath(p.dense_dir)
    dense_results = report.read_results(dense_dir)
    if dense_results is None:
      raise ConfigError(f'prune.dense_dir={p.dense_dir} holds no finished dense run '
                        '(results.json): finish it first, or leave prune.dense_dir empty.')
    return dense_dir, dense_results
  dense_dir = os.path.join(workdir, 'dense')
  # Keep the rewind point although checkpoint_max_to_keep would delete it.
  keep = ((p.rewind_epoch * ctx.steps_per_epoch,)
          if p.schedule == 'iterative' and p.rewind_epoch > 0 else ())
  return dense_dir, training.train(ctx.run, dense_dir,
                                   training.Phase(keep_steps=keep, log_prefix='[dense] '))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the whole workflow of `config.prune` in `workdir` (resuming); returns results.json."""
  config_lib.validate(config, prune=True)
  variants = config_lib.variants(config)
  p = config.prune
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  lock = training.lock_workdir(workdir, '.prune-lock')  # noqa: F841  (held until the end)
  console = metrics.Console()
  start = time.monotonic()

  ctx = Context(config, workdir, console)
  for variant in variants:
    if variant.kind == 'heads' and not hasattr(ctx.model, 'heads_per_layer'):
      raise ConfigError(f'prune.variants: {variant.name!r} needs a Transformer (model.name gpt or '
                        f'vit); {type(ctx.model).__name__} has no attention heads.')
  dense_dir, dense_results = _dense_phase(ctx, workdir)
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
      row = run_variant(ctx, dense_dir, dense_state, variant, float(sparsity), prunable)
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
      f.write(sweep_report.markdown_table(results))
    if config.write_plot:
      sweep_report.plot_sweep(results, os.path.join(workdir, 'sparsity_sweep.png'))
  console.line(sweep_report.markdown_table(results))
  return results
