"""How a batch splits into inputs and targets, and how a model is called.

`train.train_step`, `train.eval_step`, `pruning.batch_loss_fn` (and so saliency / sensitivity)
take these two as keyword arguments, so a caller's own batches and models fit:

    split_batch(batch) -> (inputs, targets)
    apply_model(apply_fn, params, inputs, *, train, rngs) -> logits

The defaults are the library's own conventions: batches {'inputs', 'targets'} and Linen models
called as `apply_fn({'params': params}, inputs, train=train, rngs=rngs)`. For a model with no
`train` argument pass `apply_model=conventions.apply_without_train`; for tuple batches
`split_batch=conventions.split_pair`; anything else is a two-line function.
"""

from collections.abc import Callable
from typing import Any

SplitBatch = Callable[[Any], tuple[Any, Any]]
ApplyModel = Callable[..., Any]


def split_batch(batch: Any) -> tuple[Any, Any]:
  """The library's batches: {'inputs': [b, ...], 'targets': [b, ...]}."""
  return batch['inputs'], batch['targets']


def split_pair(batch: Any) -> tuple[Any, Any]:
  """Batches as (inputs, targets) pairs."""
  inputs, targets = batch
  return inputs, targets


def apply_model(apply_fn: Callable[..., Any], params: Any, inputs: Any, *, train: bool,
                rngs: dict[str, Any] | None = None) -> Any:
  """The library's models: `apply_fn({'params': params}, inputs, train=train, rngs=rngs)`."""
  return apply_fn({'params': params}, inputs, train=train, **({'rngs': rngs} if rngs else {}))


def apply_without_train(apply_fn: Callable[..., Any], params: Any, inputs: Any, *, train: bool,
                        rngs: dict[str, Any] | None = None) -> Any:
  """Models whose `__call__` takes no `train` argument (no dropout to switch)."""
  del train
  return apply_fn({'params': params}, inputs, **({'rngs': rngs} if rngs else {}))
