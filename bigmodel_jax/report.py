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


def write_text(path: str, text: str) -> str:
  """Writes `text` to a temporary name, then renames it: readers (and a re-run after a crash)
  see the old file or the whole new one, never a torn one."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def write_json(path: str, value: Any) -> str:
  """Writes `value` as JSON atomically (`write_text`)."""
  return write_text(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


def save_figure(fig, path: str, **kwargs) -> str:
  """`fig.savefig(path)` atomically: to a temporary name, then renamed."""
  tmp = f'{path}.tmp{os.getpid()}'
  fig.savefig(tmp, format=os.path.splitext(path)[1][1:] or 'png', **kwargs)
  os.replace(tmp, path)
  return path


def read_json(path: str) -> Any | None:
  """The JSON in `path`, or None when it is missing or unreadable (torn by an older version or
  damaged: the caller recomputes it)."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    logging.warning('Ignoring the unreadable %s (%s); it is computed again.', path, str(e))
    return None


def read_results(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/results.json, or None (missing or unreadable)."""
  return read_json(os.path.join(workdir, RESULTS_FILE))


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
  save_figure(fig, path, dpi=100)
  plt.close(fig)
  logging.info('Wrote %s', path)
  return path
