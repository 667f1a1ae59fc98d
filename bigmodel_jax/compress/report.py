"""The sweep's report: a markdown table and a plot of test accuracy (or loss) per variant."""

from typing import Any

import numpy as np

from bigmodel_jax import report


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
  report.save_figure(fig, path, dpi=120)
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
  report.save_figure(fig, path, dpi=120)
  plt.close(fig)
