"""The training state: everything a step reads and writes, as one pytree."""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Params, optimizer state, step and base RNG key; `apply_fn` and `tx` are static.

  Attributes:
    step: number of optimizer updates done so far (int32 scalar).
    params: the model's parameters.
    opt_state: the optimizer's state for `params`.
    rng: base PRNG key (uint32 [2]); step s uses `jax.random.fold_in(rng, s)`, so a resumed
      run draws exactly the keys an uninterrupted one would.
    masks: None for a dense model; for a pruned one a bool tree like `params` (True = keep),
      passed to the optimizer, which must then be `pruning.masked(...)`.
    apply_fn: the model's `apply`.
    tx: the optax transformation.
  """
  step: jax.Array
  params: Any
  opt_state: optax.OptState
  rng: jax.Array
  masks: Any
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def arrays(self) -> dict[str, Any]:
    """The pytree that checkpoints hold (no functions)."""
    arrays = {'step': self.step, 'params': self.params, 'opt_state': self.opt_state,
              'rng': self.rng}
    if self.masks is not None:
      arrays['masks'] = self.masks
    return arrays

  def replace_arrays(self, arrays: dict[str, Any]) -> 'TrainState':
    """This state with the arrays of `arrays()`'s layout put back."""
    return self.replace(**arrays)


def create_train_state(seed: int, *, model: nn.Module, tx: optax.GradientTransformation,
                       input_shape: tuple[int, ...], masked: bool = False,
                       input_dtype: jnp.dtype = jnp.float32) -> TrainState:
  """Initialises params from `seed` (a pure function: wrap it in `jax.eval_shape` or `jax.jit`).

  Args:
    seed: integer seed; params use one fold of it, dropout keys another.
    model: a Flax module taking inputs [batch, *input_shape].
    tx: the optimizer.
    input_shape: shape of one example, e.g. (28, 28, 1).
    masked: give the state all-True masks (a pruned model to be; `tx` must accept masks).
    input_dtype: dtype of the example input (int32 for token models).
  """
  root = jax.random.PRNGKey(seed)
  params_key, dropout_key = jax.random.split(root)
  # Logical-axis boxes (sharding metadata of the Transformers) are stripped: params are arrays.
  example = jnp.zeros((1, *input_shape), input_dtype)
  params = nn.meta.unbox(model.init(params_key, example)['params'])
  masks = jax.tree.map(lambda x: jnp.ones(x.shape, jnp.bool_), params) if masked else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=dropout_key, masks=masks, apply_fn=model.apply, tx=tx)


def param_count(params: Any) -> int:
  """Total number of parameters in a pytree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
