"""The launchable workflow for a pretrained language model: load -> dense perplexity -> for each
variant: prune one-shot, evaluate, optionally recover, export -> one results table and a plot.

    python launch.py --config=configs/smollm2_prune.py --workdir=runs/smollm2

Resumable like the MLP sweep: the dense evaluation is WORKDIR/dense.json, each variant has its
folder WORKDIR/<label>/ with an Orbax checkpoint of the pruned {params, masks} ('pruned'), of the
recovered ones ('recovered', saved every `recover.checkpoint_every` steps), and its finished
row.json; a killed run continues from the last of them. Each of them records the settings it
depends on (`*_SECTIONS` below): one saved under other settings is computed again. Every JSON,
markdown and plot is written to a temporary name and renamed.

Variants (`prune.variants`): '<method>/<target>' with method magnitude | wanda | sparsegpt |
owl-wanda | owl-sparsegpt and target a sparsity (0.5) or an N:M pattern (2:4); or structured,
mlp | heads | mlp+heads and the fraction removed (compress/lm_structured.py: a smaller model).
"""

import dataclasses
import hashlib
import json
import os
import resource
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bigmodel_jax import checkpoint, logs, perplexity, pretrained, pruning, report
from bigmodel_jax import config as config_lib
from bigmodel_jax.compress import lm_structured
from bigmodel_jax.config import LmVariant
from bigmodel_jax.data import text as text_data
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import sequential
from bigmodel_jax.training import workdir as workdir_lib

RESULTS_MD = 'results.md'
PLOT = 'perplexity.png'


# What each saved result depends on (never the variants list, the export or the sample text):
# the dense perplexity, a variant's pruned weights (also its recovery's start), its recovery,
# and its row (all of them).
DENSE_SECTIONS = ('model', 'data', 'eval')
PRUNE_SECTIONS = ('model', 'data', 'calibration', 'prune')
RECOVER_SECTIONS = PRUNE_SECTIONS + ('recover',)
ROW_SECTIONS = PRUNE_SECTIONS + ('eval', 'recover')


def _fingerprint(config, sections=ROW_SECTIONS) -> str:
  keys = {k: config[k].to_dict() for k in sections}
  keys.get('prune', {}).pop('variants', None)
  return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _restorable_step(ckpt: checkpoint.Checkpointer, fingerprint: str, say) -> int | None:
  """The newest intact step saved under the same settings; None (every step removed) when the
  settings changed since, so the phase is computed again."""
  latest = ckpt.latest_intact_step(discard_all=True)  # Damaged: computed again (warning).
  if latest is not None and ckpt.restore_meta(latest).get('fingerprint') != fingerprint:
    say(f'{ckpt.directory} was saved under other settings: computing it again')
    ckpt.delete_all()
    return None
  return latest


@dataclasses.dataclass
class _Job:
  config: ml_collections.ConfigDict
  workdir: str
  pre: pretrained.Pretrained
  train_tokens: np.ndarray
  eval_tokens: np.ndarray
  fingerprint: str

  def perplexity(self, params, what: str, model=None) -> dict[str, float]:
    e, model = self.config.eval, model or self.pre.model
    start = last = time.perf_counter()

    def progress(line):  # One line every ~30 s: an evaluation takes minutes on a CPU.
      nonlocal last
      if time.perf_counter() - last > 30:
        last = time.perf_counter()
        logs.say(f'{what} {line} ({last - start:.0f} s)')
    return perplexity.evaluate(model.apply, params, self.eval_tokens, context=e.context,
                               stride=e.stride, batch_size=e.batch_size, log=progress)


def _sample(job: _Job, params, model=None) -> str:
  """The greedy continuation (KV cache) of `sample.prompt`: what the model now says."""
  if not job.config.sample.num_tokens:
    return ''
  from bigmodel_jax import generate
  ids = job.pre.tokenizer.encode(job.config.sample.prompt)
  out = generate.sample(model or job.pre.model, params, jnp.asarray([ids]),
                        job.config.sample.num_tokens, rng=jax.random.PRNGKey(0), temperature=0.0)
  return job.pre.tokenizer.decode(np.asarray(out)[0, len(ids):])


def _tokens(config, tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """(train tokens, held-out tokens): the text's train split, and its test split's first
  `eval.num_tokens` tokens."""
  d = config.data
  splits = text_data.read_text_splits(d.text_dir, d.tfds_data_dir or None)
  encode = lambda b: np.asarray(tokenizer.encode(b.decode('utf-8')), np.int32)
  return encode(splits['train']), encode(splits[d.eval_split])[:config.eval.num_tokens]


def _read_row(path: str, fingerprint: str) -> dict | None:
  row = report.read_json(path)  # None when missing or torn: recomputed.
  return row if isinstance(row, dict) and row.get('fingerprint') == fingerprint else None


def _prune(job: _Job, variant: LmVariant, directory: str):
  """(params, masks, meta) of a variant's one-shot prune, restored when saved earlier."""
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  fingerprint = _fingerprint(job.config, PRUNE_SECTIONS)
  try:
    params = job.pre.params
    target = {'params': params, 'masks': pruning.ones_like(params)}
    latest = _restorable_step(ckpt, fingerprint,
                              lambda line: logs.say(f'[{variant.label}] {line}'))
    if latest is not None:
      arrays, meta = ckpt.restore(latest, jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target))
      return arrays['params'], arrays['masks'], {k: v for k, v in meta.items()
                                                 if k != 'fingerprint'}
    c = job.config.calibration
    windows = sequential.calibration_windows(job.train_tokens, c.num, c.length, c.seed)
    owl = sequential.Owl(job.config.prune.owl_m, job.config.prune.owl_lam) \
        if variant.method.startswith('owl-') else None
    method = variant.method.removeprefix('owl-')
    new, masks, info = sequential.prune(
        job.pre.model, params, windows, method=method, sparsity=variant.sparsity, n=variant.n,
        m=variant.m, owl=owl, batch_size=c.batch_size, block_size=job.config.prune.block_size,
        damp=job.config.prune.damp, log=lambda line: logs.say(f'[{variant.label}] {line}'))
    meta = {'prune_seconds': info['seconds'], 'block_sparsity': info.get('block_sparsity'),
            'outlier_ratio': info.get('outlier_ratio')}
    ckpt.save(0, {'params': new, 'masks': masks}, {**meta, 'fingerprint': fingerprint})
    ckpt.wait()
    return new, masks, meta
  finally:
    ckpt.close()


def _recover(job: _Job, model, params, masks, directory: str) -> tuple[Any, dict]:
  """A short masked fine-tune (Adam, pruned weights stay 0) on train windows; resumable."""
  r, length = job.config.recover, job.config.calibration.length
  tx = pruning.masked(optax.adamw(r.learning_rate, weight_decay=0.0))

  def loss_fn(p, batch):
    logits = model.apply({'params': p}, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  @jax.jit
  def step(p, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(p, batch)
    updates, opt_state = tx.update(grads, opt_state, p, masks=masks)
    return optax.apply_updates(p, updates), opt_state, loss

  state = {'params': params, 'opt_state': tx.init(params)}
  ckpt = checkpoint.Checkpointer(directory, async_save=False, max_to_keep=1)
  fingerprint = _fingerprint(job.config, RECOVER_SECTIONS)
  try:
    first, losses = 0, []
    latest = _restorable_step(ckpt, fingerprint, logs.say)
    if latest is not None:
      state, meta = ckpt.restore(latest, jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
      first, losses = latest, meta['losses']
    rng = np.random.default_rng(r.seed)
    starts = rng.integers(0, len(job.train_tokens) - length - 1, (r.steps, r.batch_size))
    p, opt_state = state['params'], state['opt_state']
    for s in range(first, r.steps):
      batch = np.stack([job.train_tokens[i:i + length + 1] for i in starts[s]])
      p, opt_state, loss = step(p, opt_state, jnp.asarray(batch))
      losses.append(float(loss))
      if (s + 1) % r.checkpoint_every == 0 or s + 1 == r.steps:
        ckpt.save(s + 1, {'params': p, 'opt_state': opt_state},
                  {'losses': losses, 'fingerprint': fingerprint})
        logs.say(f'recover: step {s + 1}/{r.steps}, loss {np.mean(losses[-50:]):.3f}')
    ckpt.wait()
    return p, {'recover_steps': r.steps, 'recover_final_loss': float(np.mean(losses[-50:]))}
  finally:
    ckpt.close()


def run_variant(job: _Job, variant: LmVariant) -> dict[str, Any]:
  """One row: prune, perplexity, recover (optional), perplexity, export."""
  directory = os.path.join(job.workdir, variant.slug)
  row_path = os.path.join(directory, 'row.json')
  fingerprint = (lm_structured.fingerprint(job.fingerprint, job.config) if variant.structured
                 else job.fingerprint)
  cached = _read_row(row_path, fingerprint)
  if cached is not None:
    return cached
  os.makedirs(directory, exist_ok=True)
  say = lambda line: logs.say(f'[{variant.label}] {line}')
  if variant.structured:  # A smaller model: nothing masked.
    model, params, meta = lm_structured.prune(
        job, variant, directory,
        lm_structured.fingerprint(_fingerprint(job.config, PRUNE_SECTIONS), job.config))
    masks = pruning.ones_like(params)
  else:
    model, (params, masks, meta) = job.pre.model, _prune(job, variant,
                                                         os.path.join(directory, 'pruned'))
    meta['sparsity'] = pruning.sparsity_stats(params, masks,
                                              sequential.prunable_tree(params))['sparsity']
  row = {'fingerprint': fingerprint, 'variant': variant.label, 'method': variant.method,
         'pattern': variant.pattern, **meta}
  row['perplexity'] = job.perplexity(params, f'[{variant.label}]', model)['perplexity']
  row['sample'] = _sample(job, params, model)
  say(f'perplexity {row["perplexity"]:.2f} (sparsity {row["sparsity"]:.1%}, pruned in '
      f'{meta["prune_seconds"]:.1f} s); says {row["sample"]!r}')
  if variant.structured:
    row.update(lm_structured.latency_fields(job, variant, model, params, say))
  if job.config.recover.steps:
    params, recovered = _recover(job, model, params, masks, os.path.join(directory, 'recovered'))
    row.update(recovered, recovered_perplexity=job.perplexity(
        params, f'[{variant.label} recovered]', model)['perplexity'])
    logs.say(f'[{variant.label}] after {job.config.recover.steps} recovery steps: perplexity '
             f'{row["recovered_perplexity"]:.2f}')
  if job.config.export:
    folder = os.path.join(directory, 'export')
    files = pretrained.save(folder, model, params, hf_config=job.pre.hf_config,
                            tokenizer=job.pre.tokenizer)
    row['export_bytes'] = int(sum(os.path.getsize(os.path.join(folder, f)) for f in files))
  report.write_json(row_path, row)
  return row


def markdown(results: dict[str, Any]) -> str:
  """The results table: one row per variant, beside the dense model."""
  dense = results['dense']['perplexity']
  recover = any('recovered_perplexity' in r for r in results['rows'])
  head = '| variant | pattern | sparsity | perplexity | x dense |' + (
      ' recovered |' if recover else '') + ' prune s |'
  lines = [f'Dense perplexity {dense:.2f} on {results["dense"]["tokens"]} tokens '
           f'(context {results["dense"]["context"]}, stride {results["dense"]["stride"]}).']
  one_shot = [r for r in results['rows'] if 'kv_heads_per_layer' not in r]  # Others: below.
  if one_shot:
    lines += ['', head, '|' + '---|' * (head.count('|') - 1)]
  for r in one_shot:
    cells = [r['variant'], r['pattern'], f'{r["sparsity"]:.1%}', f'{r["perplexity"]:.2f}',
             f'{r["perplexity"] / dense:.2f}']
    if recover:
      cells.append(f'{r["recovered_perplexity"]:.2f}' if 'recovered_perplexity' in r else '-')
    cells.append(f'{r["prune_seconds"]:.1f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += lm_structured.markdown(results['rows'], dense)
  return '\n'.join(lines) + '\n'


def plot(results: dict[str, Any], path: str) -> None:
  """Perplexity per variant (log scale), the dense model as a line."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = results['rows']
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.5))
  ax.bar(range(len(rows)), [r['perplexity'] for r in rows], color='tab:blue', label='one-shot')
  if any('recovered_perplexity' in r for r in rows):
    ax.scatter(range(len(rows)), [r.get('recovered_perplexity', np.nan) for r in rows],
               color='tab:orange', zorder=3, label='recovered')
  ax.axhline(results['dense']['perplexity'], color='k', linestyle='--', label='dense')
  ax.set_xticks(range(len(rows)), [r['variant'] for r in rows], rotation=45, ha='right')
  ax.set_yscale('log')
  ax.set_ylabel('perplexity (held-out text)')
  ax.set_title(results['model'])
  ax.legend()
  fig.tight_layout()
  report.save_figure(fig, path, dpi=120)
  plt.close(fig)


def _load(config) -> tuple[pretrained.Pretrained, Any]:
  """The model, its params placed by `config.parallelism` (fsdp / tensor > 1: sharded over a
  mesh as they are converted, block by block), and the mesh (None on one device)."""
  hf_config, state, tokenizer = pretrained.read(config.model.pretrained)
  model = pretrained.convert.model_from_config(hf_config, max_len=config.model.max_len)
  p, mesh, place = config.parallelism, None, None
  if p.fsdp != 1 or p.tensor != 1:
    from flax import linen as nn

    from bigmodel_jax import models, parallel
    from bigmodel_jax.parallel import mesh as mesh_lib
    from bigmodel_jax.parallel import sharding
    devices = parallel.devices_in_use(p)
    try:
      mesh = mesh_lib.build_mesh(parallel.mesh_shape(p, len(devices)), devices)
    except (ValueError, AssertionError):
      raise ConfigError(f'config.parallelism data={p.data} x fsdp={p.fsdp} x tensor={p.tensor} '
                        f'does not make a mesh of {len(devices)} devices.') from None
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
    logical = sharding.logical_axes_table(models.logical_axes(model, (2,), jnp.int32))
    shardings = sharding.infer_shardings(nn.meta.unbox(boxed['params']), mesh,
                                         fsdp_min_size=p.fsdp_min_size, logical=logical)
    place = lambda name, tree: jax.tree.map(jax.device_put, tree, shardings[name])
  params = pretrained.convert.params_from_state(hf_config, state, place)
  source = pretrained.resolve(config.model.pretrained)
  return pretrained.Pretrained(model, params, tokenizer, hf_config, source), mesh


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The whole workflow (see the module docstring); returns the results."""
  variants = config_lib.validate_pretrained_lm(config)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.locked(workdir, 'pretrained-LM pruning'):
    start = time.perf_counter()
    pre, mesh = _load(config)
    if pre.tokenizer is None:
      raise ConfigError(f'{pre.source} has no tokenizer (tokenizer.json); it is needed to read '
                        'the text.')
    train_tokens, eval_tokens = _tokens(config, pre.tokenizer)
    prompt = len(pre.tokenizer.encode(config.sample.prompt))
    if config.sample.num_tokens and prompt + config.sample.num_tokens > config.model.max_len:
      raise ConfigError(f'config.sample.prompt ({prompt} tokens) + sample.num_tokens='
                        f'{config.sample.num_tokens} exceed config.model.max_len='
                        f'{config.model.max_len}.')
    job = _Job(config, workdir, pre, train_tokens, eval_tokens, _fingerprint(config))
    params_count = pretrained.convert.count_params(pre.params)
    logs.say(f'Loaded {pre.source} ({params_count:,} params) in {time.perf_counter() - start:.1f}'
             f' s; {len(train_tokens):,} train tokens, {len(eval_tokens):,} held-out tokens')
    dense_path = os.path.join(workdir, 'dense.json')
    dense_fingerprint = _fingerprint(config, DENSE_SECTIONS)
    dense = _read_row(dense_path, dense_fingerprint)
    if dense is None:
      dense = {**job.perplexity(pre.params, '[dense]'), 'fingerprint': dense_fingerprint,
               'sample': _sample(job, pre.params)}
      report.write_json(dense_path, dense)
    logs.say(f'dense: perplexity {dense["perplexity"]:.2f} on {dense["tokens"]} tokens; says '
             f'{dense.get("sample", "")!r}')
    rows = [run_variant(job, v) for v in variants]
    results = {'model': os.path.basename(pre.source), 'params': params_count, 'dense': dense,
               'mesh': dict(mesh.shape) if mesh is not None else None,
               'rows': rows, 'calibration': config.calibration.to_dict(),
               'peak_host_memory_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               'wall_time_s': time.perf_counter() - start}
    report.write_results(workdir, results)
    table = markdown(results)
    report.write_text(os.path.join(workdir, RESULTS_MD), table)
    plot(results, os.path.join(workdir, PLOT))
    logs.say(table)
    return results
