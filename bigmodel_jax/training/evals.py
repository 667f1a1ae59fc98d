"""Evaluations during training, and the units a run speaks in (examples, or tokens).

Every evaluation of the eval split during training (each `eval_every_steps`, each epoch's end)
becomes an entry of `meta['eval_history']` with its step: saved beside every checkpoint, so that
a resumed run holds the same entries as an uninterrupted one, and written to results.json.
Language models (`models.TEXT_MODELS`) report tokens/s and perplexity (exp of the mean token
cross-entropy) where classifiers report examples/s and accuracy.
"""

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bigmodel_jax import metrics
from bigmodel_jax.training import hooks
from bigmodel_jax.training import workdir as workdir_lib


def perplexity(loss: float | None) -> float | None:
  """exp(mean token cross-entropy in nats); inf where that overflows, None for None."""
  if loss is None:
    return None
  return math.exp(loss) if loss < 700 else math.inf


@dataclasses.dataclass(frozen=True)
class Units:
  """How a run's lines and records count.

  Attributes:
    tokens_per_example: tokens a language model predicts per example (its window); 0 for other
      models, whose lines say ex/s and accuracy.
  """
  tokens_per_example: int = 0

  @property
  def tokens(self) -> bool:
    return self.tokens_per_example > 0

  def rate(self, examples_per_s: float, what: str = '') -> str:
    """'12.9k tokens/s' (language models) or '41.6k ex/s'; `what` goes before the unit."""
    if self.tokens:
      return f'{metrics.format_rate(examples_per_s * self.tokens_per_example)} {what}tokens/s'
    return f'{metrics.format_rate(examples_per_s)} {what}ex/s'

  def loss(self, loss: float) -> str:
    """A train loss for a progress line: 'loss 1.9876' (+ '  perplexity 7.30')."""
    text = f'loss {loss:.4f}'
    return text + f'  perplexity {perplexity(loss):.2f}' if self.tokens else text

  def evaluation(self, record: dict[str, Any]) -> str:
    """'eval_loss 1.8910  eval_perplexity 6.63' (language models) or '... eval_accuracy 0.8422'."""
    if self.tokens:
      return (f'eval_loss {record["eval_loss"]:.4f}  '
              f'eval_perplexity {perplexity(record["eval_loss"]):.2f}')
    return f'eval_loss {record["eval_loss"]:.4f}  eval_accuracy {record["eval_accuracy"]:.4f}'

  def extend(self, record: dict[str, Any]) -> dict[str, Any]:
    """`record` plus, for a language model, tokens_per_s beside examples_per_s and X_perplexity
    beside each X_loss of (train, eval)."""
    if self.tokens:
      if record.get('examples_per_s') is not None:
        record['tokens_per_s'] = record['examples_per_s'] * self.tokens_per_example
      for name in ('train', 'eval'):
        if f'{name}_loss' in record:
          record[f'{name}_perplexity'] = perplexity(record[f'{name}_loss'])
    return record

  def scalars(self, scalars: dict[str, float]) -> dict[str, float]:
    """TensorBoard scalars plus perf/tokens_per_s and X/perplexity beside X/loss (language
    models)."""
    if self.tokens:
      extra = {f'{name}/perplexity': perplexity(scalars[f'{name}/loss'])
               for name in ('train', 'eval') if f'{name}/loss' in scalars}
      if 'perf/examples_per_s' in scalars:
        extra['perf/tokens_per_s'] = scalars['perf/examples_per_s'] * self.tokens_per_example
      scalars = {**scalars, **extra}
    return scalars


def entry(units: Units, *, epoch: int, step: int, train_sums: dict[str, float],
          evaluation: dict[str, float], examples_per_s: float) -> dict[str, Any]:
  """One entry of `eval_history`: an evaluation at `step` (in 0-based `epoch`), the mean train
  loss since the previous evaluation, and the training rate of the epoch so far."""
  steps = train_sums['steps']
  return units.extend({'epoch': epoch + 1, 'step': step,
                       'train_loss': train_sums['loss'] / steps if steps else None,
                       'eval_loss': evaluation['loss'], 'eval_accuracy': evaluation['accuracy'],
                       'examples_per_s': examples_per_s})


class Evaluations:
  """The evaluations of a run: every `every` steps inside an epoch (a chunk hook), and the
  epoch's end (`add`, from the loop); each one recorded, logged, and counted by early stopping.

  An evaluation falls on the first compiled call's end at or after each multiple of `every`
  (exactly on the multiples when they are chunk boundaries); one that would fall on an epoch's
  end is left to the epoch's own evaluation.
  """

  def __init__(self, *, every: int, evaluate: Callable[[Any], dict[str, float]],
               meta: dict[str, Any], units: Units, console: metrics.Console,
               writer: metrics.MetricWriter, batch_size: int, total_steps: int, patience: int,
               min_delta: float):
    self._every, self._evaluate, self._meta, self._batch = every, evaluate, meta, batch_size
    self._units, self._console, self._writer = units, console, writer
    self._total, self._patience, self._min_delta = total_steps, patience, min_delta

  def __call__(self, chunk: hooks.Chunk, step_metrics: dict[str, np.ndarray]) -> None:
    del step_metrics
    every, step = self._every, chunk.step
    if not every or step >= chunk.epoch_end or step // every <= (step - chunk.k) // every:
      return
    started = time.monotonic()
    evaluation = self._evaluate(chunk.state)
    chunk.timer.exclude(time.monotonic() - started)  # Evaluating is not training time.
    elapsed = chunk.timer.elapsed()
    record = entry(self._units, epoch=chunk.epoch, step=step, train_sums=self._meta['eval_sums'],
                   evaluation=evaluation, examples_per_s=chunk.timer.steps * self._batch / elapsed)
    self.add(record, finished=False)
    eta = elapsed / chunk.timer.steps * (self._total - step)
    train_loss = record['train_loss']
    self._console.line(f'step {step}/{self._total}  train_loss {train_loss:.4f}  '
                       f'{self._units.evaluation(record)}  '
                       f'{self._units.rate(record["examples_per_s"])}  '
                       f'eta {metrics.format_duration(eta)}')

  def add(self, record: dict[str, Any], *, finished: bool) -> None:
    """Records an evaluation: early stopping's bookkeeping, `eval_history`, TensorBoard."""
    meta = self._meta
    hooks.update_best(meta, record, patience=self._patience, min_delta=self._min_delta,
                      finished=finished)
    meta['eval_history'].append(record)
    meta['eval_sums'] = workdir_lib.zero_sums()
    self._writer.write_scalars(record['step'], self._units.scalars(
        {'eval/loss': record['eval_loss'], 'eval/accuracy': record['eval_accuracy']}))
    self._writer.flush()

  def at(self, step: int) -> dict[str, float] | None:
    """The evaluation already made at `step` ({'loss', 'accuracy'}), if any: an early stop
    inside an epoch ends the epoch there, and its evaluation is not run twice."""
    history = self._meta['eval_history']
    if history and history[-1]['step'] == step:
      return {'loss': history[-1]['eval_loss'], 'accuracy': history[-1]['eval_accuracy']}
    return None
