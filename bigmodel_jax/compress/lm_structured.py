"""Structured variants of the pretrained-LM workflow (compress/pretrained_lm.py): whole key/value
groups (each with its query heads) and SwiGLU units removed, physically, into a smaller Llama.

    prune.variants = ('mlp/0.25', 'heads/0.33', 'mlp+heads/0.25', ...)

`mlp/f` removes the lowest-scored fraction f of every block's MLP units, `heads/f` of its
key/value groups (round((1 - f) x kv heads) kept, at least one), `mlp+heads/f` both, scored on
the calibration windows by `pruning.llama_structured` (`structured.scope`: per block or over all
blocks). The kept indices are WORKDIR/<variant>/structure.json (the scores take a calibration
pass; the shrink itself is instant), so a re-run rebuilds the same model. Each row adds the
parameter count and, with `structured.latency_rounds` > 0, the forward latency of the small
model beside the dense one (`compress.latency`: prompt and KV-cache decode, batch 1 and 8).
"""

import hashlib
import json
import os
import time
from typing import Any

import numpy as np

from bigmodel_jax import report
from bigmodel_jax.compress import latency
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import Llama
from bigmodel_jax.pretrained import convert
from bigmodel_jax.pruning import llama_structured, sequential

STRUCTURE = 'structure.json'


def fingerprint(base: str, config) -> str:
  """A structured row's fingerprint: the workflow's, plus what chooses the removed parts."""
  keys = {'base': base, 'scope': config.structured.scope}
  return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _keep(job, variant) -> tuple[dict | None, dict | None, float]:
  """(keep_groups, keep_units, seconds) chosen on the calibration windows."""
  start = time.perf_counter()
  c = job.config.calibration
  windows = sequential.calibration_windows(job.train_tokens, c.num, c.length, c.seed)
  batches = [windows[i:i + c.batch_size] for i in range(0, len(windows), c.batch_size)]
  groups, units = llama_structured.calibration_scores(job.pre.model, job.pre.params, batches)
  scope = job.config.structured.scope
  keep_groups = keep_units = None
  if variant.method in ('heads', 'mlp+heads'):
    keep_groups = llama_structured.keep_by_fraction(groups, variant.sparsity, scope=scope)
  if variant.method in ('mlp', 'mlp+heads'):
    keep_units = llama_structured.keep_by_fraction(units, variant.sparsity, scope=scope)
  return keep_groups, keep_units, time.perf_counter() - start


def prune(job, variant, directory: str, fingerprint: str) -> tuple[Llama, Any, dict[str, Any]]:
  """(smaller model, its params, row fields) of a structured variant; the kept parts are read
  back from `directory`/structure.json when an earlier run chose them under the same settings
  (`fingerprint`)."""
  if not isinstance(job.pre.model, Llama):
    raise ConfigError(f'prune.variants entry {variant.label!r}: structured variants need a '
                      f'Llama-family model; {job.pre.source} is {type(job.pre.model).__name__}.')
  path = os.path.join(directory, STRUCTURE)
  saved = report.read_json(path)  # None when missing or damaged: chosen again.
  if not isinstance(saved, dict) or saved.get('fingerprint') != fingerprint:
    keep_groups, keep_units, seconds = _keep(job, variant)
    as_lists = lambda keep: None if keep is None else {k: v.tolist() for k, v in keep.items()}
    saved = {'keep_groups': as_lists(keep_groups), 'keep_units': as_lists(keep_units),
             'prune_seconds': seconds, 'fingerprint': fingerprint}
    report.write_json(path, saved)
  as_arrays = lambda keep: None if keep is None else {k: np.asarray(v, bool)
                                                      for k, v in keep.items()}
  small, params = llama_structured.shrink(job.pre.model, job.pre.params,
                                          as_arrays(saved['keep_groups']),
                                          as_arrays(saved['keep_units']))
  dense_blocks = convert.count_params(
      {k: v for k, v in job.pre.params.items() if k.startswith('block_')})
  small_blocks = convert.count_params({k: v for k, v in params.items() if k.startswith('block_')})
  sizes = [small.layer_sizes(i) for i in range(small.num_layers)]
  meta = {'prune_seconds': saved['prune_seconds'], 'params': convert.count_params(params),
          'sparsity': 1 - small_blocks / dense_blocks,
          'kv_heads_per_layer': [s[1] for s in sizes], 'mlp_dims_per_layer': [s[2] for s in sizes]}
  return small, params, meta


def latency_fields(job, variant, small, params, log) -> dict[str, Any]:
  """{'latency': the small model's figures, 'dense_latency': the dense model's in the same
  rounds} (see `compress.latency.compare`), or {} with `structured.latency_rounds` = 0."""
  s = job.config.structured
  if not s.latency_rounds:
    return {}
  batch = max(s.latency_batches)
  tokens = job.eval_tokens[:batch * s.latency_length]
  if len(tokens) < batch * s.latency_length:
    raise ConfigError(f'config.eval.num_tokens gives {len(job.eval_tokens)} tokens; latency needs '
                      f'{batch} x structured.latency_length={s.latency_length}.')
  figures = latency.compare({'dense': (job.pre.model, job.pre.params),
                             variant.label: (small, params)},
                            tokens.reshape(batch, s.latency_length), reference='dense',
                            batches=tuple(s.latency_batches), rounds=s.latency_rounds,
                            decode_steps=s.decode_steps, log=log)
  return {'latency': figures[variant.label], 'dense_latency': figures['dense']}


def markdown(rows: list[dict[str, Any]], dense: float) -> list[str]:
  """Lines of the structured rows' table ([] when there are none)."""
  rows = [r for r in rows if 'kv_heads_per_layer' in r]
  if not rows:
    return []
  keys = [k for r in rows for k in r.get('latency', {})]
  keys = list(dict.fromkeys(keys))
  recover = any('recovered_perplexity' in r for r in rows)
  head = ('| variant | removed | kv heads / MLP units per block | params | perplexity | x dense |'
          + (' recovered |' if recover else '')
          + ''.join(f' {k.replace("_", " ")} ms (speed-up) |' for k in keys))
  lines = ['', 'Structured (removed physically; ms per call, or per token when decoding; speed-up '
           '= dense / variant, paired rounds):', '', head, '|' + '---|' * (head.count('|') - 1)]
  for r in rows:
    shape = f'{sorted(set(r["kv_heads_per_layer"]))} / {sorted(set(r["mlp_dims_per_layer"]))}'
    cells = [r['variant'], f'{r["sparsity"]:.1%} of block params', shape, f'{r["params"]:,}',
             f'{r["perplexity"]:.2f}', f'{r["perplexity"] / dense:.2f}']
    if recover:
      cells.append(f'{r["recovered_perplexity"]:.2f}' if 'recovered_perplexity' in r else '-')
    for k in keys:
      f = r.get('latency', {}).get(k)
      cells.append(f'{f["ms"]:.0f} ({f["speedup"]:.2f}x)' if f else '-')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines
