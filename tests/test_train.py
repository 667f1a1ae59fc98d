import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bigmodel_jax import losses, models, train, train_state


def _state(dropout=0.0, tx=None):
  model = models.MLP(hidden_sizes=(32,), num_outputs=10, dropout_rate=dropout)
  return train_state.create_train_state(0, model=model, tx=tx or optax.adam(1e-2),
                                        input_shape=(28, 28, 1))


def _batches(k, n=16, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, (k, n)).astype(np.int32)
  images = rng.normal(size=(k, n, 28, 28, 1)).astype(np.float32)
  images[..., :10, :1, 0] += labels[..., None, None]  # Learnable signal.
  return {'inputs': images, 'targets': labels}


def test_train_step_learns_and_counts_steps():
  state = _state()
  batch = jax.tree.map(lambda x: x[0], _batches(1))
  step = jax.jit(train.train_step)
  first = None
  for _ in range(30):
    state, metrics = step(state, batch)
    first = first if first is not None else float(metrics['loss'])
  assert int(state.step) == 30
  assert float(metrics['loss']) < 0.2 * first
  assert float(metrics['accuracy']) == 1.0


def test_scanned_steps_equal_single_steps():
  batches = _batches(5)
  state_a, metrics_a = jax.jit(train.train_steps)(_state(dropout=0.2), batches)
  state_b, step = _state(dropout=0.2), jax.jit(train.train_step)
  losses_b = []
  for i in range(5):
    state_b, m = step(state_b, jax.tree.map(lambda x, i=i: x[i], batches))
    losses_b.append(float(m['loss']))
  np.testing.assert_allclose(metrics_a['loss'], losses_b, rtol=1e-5)
  chex.assert_trees_all_close(state_a.params, state_b.params, atol=1e-6)


def test_dropout_keys_differ_per_step():
  batch = jax.tree.map(lambda x: x[0], _batches(1))
  state = _state(dropout=0.5, tx=optax.sgd(0.0))
  _, m0 = train.train_step(state, batch)
  _, m1 = train.train_step(state.replace(step=state.step + 1), batch)
  assert float(m0['loss']) != float(m1['loss'])


def test_mse_loss_plugs_in():
  batches = _batches(20)
  state, metrics = jax.jit(lambda s, b: train.train_steps(s, b, loss_fn=losses.mse))(
      _state(), batches)
  assert metrics['loss'][-1] < metrics['loss'][0]


def test_eval_step_ignores_padding():
  state = _state()
  batch = jax.tree.map(lambda x: x[0], _batches(1, n=8))
  full = train.eval_step(state, batch)
  padded = {'inputs': jnp.concatenate([batch['inputs'], jnp.ones_like(batch['inputs'])]),
            'targets': jnp.concatenate([batch['targets'], batch['targets']]),
            'mask': jnp.concatenate([jnp.ones(8), jnp.zeros(8)])}
  masked = train.eval_step(state, padded)
  assert float(masked['count']) == 8
  np.testing.assert_allclose(masked['loss_sum'], full['loss_sum'], rtol=1e-6)
  np.testing.assert_allclose(masked['correct_sum'], full['correct_sum'])
