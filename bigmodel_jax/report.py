"""End-of-run report: WORKDIR/results.json and a loss/accuracy curve PNG."""

import json
import os
from typing import Any

import jax
from absl import logging

RESULTS_FILE = 'results.json'
CURVES_FILE = 'curves.png'


def write_results(workdir: str, results: dict[str, Any]) -> str:
  """Writes `results` as JSON atomically (a temp file then rename); returns the path.

  On several hosts only process 0 writes.
  """
  path = os.path.join(workdir, RESULTS_FILE)
  if jax.process_index() != 0:
    return path
  return write_json(path, results)


def write_json(path: str, value: Any) -> str:
  """Writes `value` as JSON to a temporary name, then renames it (never a torn file)."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)
  return path


def read_results(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def plot_curves(workdir: str, history: list[dict[str, Any]], title: str,
                evals: list[dict[str, Any]] = ()) -> str | None:
  """Plots train/eval loss and accuracy to WORKDIR/curves.png (process 0): per epoch, or per
  step when `evals` (results.json's eval_history) has evaluations inside epochs."""
  if not history or jax.process_index() != 0:
    return None
  import matplotlib  # Late import: the library works without a display or plots.
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  by_step = len(evals) > len(history)
  points = evals if by_step else history
  x = [h['step' if by_step else 'epoch'] for h in points]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  ax_loss.plot(x, [h['train_loss'] for h in points], 'o-',
               label='train (since the previous eval)' if by_step else 'train')
  ax_loss.plot(x, [h['eval_loss'] for h in points], 's-', label='eval')
  ax_loss.set(xlabel='step' if by_step else 'epoch', ylabel='loss', title='loss')
  ax_loss.legend()
  if not by_step:
    ax_acc.plot(x, [h['train_accuracy'] for h in points], 'o-', label='train')
  ax_acc.plot(x, [h['eval_accuracy'] for h in points], 's-', label='eval')
  ax_acc.set(xlabel='step' if by_step else 'epoch', ylabel='accuracy', title='accuracy')
  ax_acc.legend()
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  path = os.path.join(workdir, CURVES_FILE)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  logging.info('Wrote %s', path)
  return path
