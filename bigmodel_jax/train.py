"""Pure train and eval steps. The epoch loop that drives them lives in `loop.py`.

Research code uses them under its own `jax.jit`:

    step = jax.jit(train.train_step, donate_argnums=0)
    state, metrics = step(state, batch)  # batch: {'inputs': [b, ...], 'targets': [b]}

Other batches and models: `split_batch` and `apply_model` (see `bigmodel_jax.conventions`).
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from bigmodel_jax import conventions, losses
from bigmodel_jax.train_state import TrainState

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
# state -> state, run at the start of every step (e.g. gradual pruning recomputing the masks).
StateHook = Callable[[TrainState], TrainState]


def train_step(state: TrainState, batch: Any, *,
               loss_fn: LossFn = losses.cross_entropy,
               before_step: StateHook | None = None,
               axis_name: str | None = None,
               split_batch: conventions.SplitBatch = conventions.split_batch,
               apply_model: conventions.ApplyModel = conventions.apply_model,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch`.

  Args:
    state: the training state. With `state.masks` set, the masks go to the optimizer
      (`tx.update(..., masks=...)`), which keeps pruned weights at zero.
    batch: {'inputs': [batch, ...], 'targets': [batch] int}, or anything `split_batch` takes.
    loss_fn: per-example loss (logits, labels) -> [batch].
    before_step: optional pure function applied to the state first (gradual pruning uses it to
      update masks on schedule inside the compiled step).
    axis_name: under `jax.pmap`, the mapped axis: `batch` is this device's share of the global
      batch; gradients and metrics are averaged over the axis (`lax.pmean`) and dropout keys
      differ per device. None under `jax.jit`, sharded or not (XLA does the reductions).
    split_batch: batch -> (inputs, targets); default {'inputs', 'targets'}.
    apply_model: how the model is called (`conventions.apply_model`, with `train=True` and
      the dropout key here); `conventions.apply_without_train` for a model without `train`.

  Returns:
    (new state, {'loss': scalar, 'accuracy': scalar}) for this batch, before the update.
  """
  if before_step is not None:
    state = before_step(state)
  dropout_key = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))

  inputs, targets = split_batch(batch)

  def loss_of(params):
    logits = apply_model(state.apply_fn, params, inputs, train=True,
                         rngs={'dropout': dropout_key})
    return jnp.mean(loss_fn(logits, targets)), logits

  (loss, logits), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  accuracy = jnp.mean(losses.correct(logits, targets))
  if axis_name is not None:
    # pmap hands each device the unmapped params and returns its local gradient: average them.
    # (Inside jax.shard_map the rule differs: there gradients of replicated params arrive summed.)
    grads, loss, accuracy = jax.lax.pmean((grads, loss, accuracy), axis_name)
  extra = {} if state.masks is None else {'masks': state.masks}
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **extra)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  return new_state, {'loss': loss, 'accuracy': accuracy}


def train_steps(state: TrainState, batches: Any, *,
                loss_fn: LossFn = losses.cross_entropy,
                before_step: StateHook | None = None,
                axis_name: str | None = None,
                split_batch: conventions.SplitBatch = conventions.split_batch,
                apply_model: conventions.ApplyModel = conventions.apply_model,
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """`train_step` over a stack of batches ({'inputs': [k, batch, ...], 'targets': [k, batch]}).

  One compiled call runs k steps with `lax.scan`, which removes k-1 dispatches from the Python
  loop. Returns the final state and per-step metrics [k].
  """
  def body(carry, batch):
    return train_step(carry, batch, loss_fn=loss_fn, before_step=before_step, axis_name=axis_name,
                      split_batch=split_batch, apply_model=apply_model)
  return jax.lax.scan(body, state, batches)


def eval_step(state: TrainState, batch: Any, *,
              loss_fn: LossFn = losses.cross_entropy,
              axis_name: str | None = None,
              split_batch: conventions.SplitBatch = conventions.split_batch,
              apply_model: conventions.ApplyModel = conventions.apply_model,
              ) -> dict[str, jax.Array]:
  """Sums over a batch; padded examples carry batch['mask'] == 0 and count for nothing.

  Under `jax.pmap` pass the mapped `axis_name`: the sums then cover every device's share.
  `split_batch` and `apply_model` as in `train_step` (the model is called with `train=False`).

  Returns:
    {'loss_sum', 'correct_sum', 'count'}: divide the first two by 'count' after summing batches.
  """
  inputs, targets = split_batch(batch)
  logits = apply_model(state.apply_fn, state.params, inputs, train=False)
  mask = batch.get('mask') if isinstance(batch, Mapping) else None
  mask = jnp.ones(jnp.shape(targets), jnp.float32) if mask is None else mask
  # Per example: sequence models score every position, averaged within the example.
  per_example = lambda x: jnp.mean(x.reshape(x.shape[0], -1), axis=1)
  sums = {
      'loss_sum': jnp.sum(per_example(loss_fn(logits, targets)) * mask),
      'correct_sum': jnp.sum(per_example(losses.correct(logits, targets)) * mask),
      'count': jnp.sum(mask),
  }
  return sums if axis_name is None else jax.lax.psum(sums, axis_name)
