import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigmodel_jax import checkpoint, models, train, train_state
from bigmodel_jax.errors import CheckpointMismatchError


def _state(hidden=(16,), tx=None):
  model = models.MLP(hidden_sizes=hidden, num_outputs=10)
  return train_state.create_train_state(0, model=model, tx=tx or optax.adam(1e-2),
                                        input_shape=(28, 28, 1))


def _batch(seed=0, n=8):
  rng = np.random.default_rng(seed)
  return {'inputs': rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
          'targets': rng.integers(0, 10, n).astype(np.int32)}


@pytest.mark.parametrize('async_save', [False, True])
def test_round_trip_restores_equal_trees_and_meta(tmp_path, async_save):
  state = _state()
  state, _ = jax.jit(train.train_step)(state, _batch())
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'), async_save=async_save)
  meta = {'step': 1, 'history': [{'epoch': 1, 'eval_loss': 0.5}], 'best_epoch': None}
  ckpt.save(1, state.arrays(), meta)
  # Donating the saved state right away must not corrupt what an async save writes.
  expected = jax.device_get(state.arrays())
  step = jax.jit(train.train_step, donate_argnums=0)
  for i in range(3):
    state, _ = step(state, _batch(i + 1))
  ckpt.wait()
  assert ckpt.latest_step() == 1
  restored, restored_meta = ckpt.restore(1, jax.eval_shape(lambda: _state().arrays()))
  chex.assert_trees_all_equal(jax.device_get(restored), expected)
  assert restored_meta == meta
  assert type(restored['opt_state']) is type(expected['opt_state'])
  ckpt.close()


def test_keeps_the_newest_n(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'), max_to_keep=2, async_save=False)
  arrays = _state().arrays()
  for s in (1, 2, 3):
    ckpt.save(s, arrays, {'step': s})
  assert ckpt.latest_step() == 3
  assert sorted(int(p.name) for p in (tmp_path / 'ck').iterdir() if p.name.isdigit()) == [2, 3]


def test_a_different_model_or_optimizer_is_refused_clearly(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'), async_save=False)
  ckpt.save(5, _state().arrays(), {})
  with pytest.raises(CheckpointMismatchError,
                     match=r'params/Dense_0/bias with shape \(16,\) but this config needs '
                           r'\(32,\)'):
    ckpt.restore(5, jax.eval_shape(lambda: _state(hidden=(32,)).arrays()))
  with pytest.raises(CheckpointMismatchError, match='different model or optimizer'):
    ckpt.restore(5, jax.eval_shape(lambda: _state(tx=optax.sgd(0.1, momentum=0.9)).arrays()))
  with pytest.raises(CheckpointMismatchError, match='different model or optimizer'):
    ckpt.restore(5, jax.eval_shape(lambda: _state(tx=optax.sgd(0.1)).arrays()))


def test_restore_gives_exact_dtypes(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'), async_save=False)
  ckpt.save(0, _state().arrays(), {})
  restored, _ = ckpt.restore(0, jax.eval_shape(lambda: _state().arrays()))
  assert restored['step'].dtype == jnp.int32 and restored['rng'].dtype == jnp.uint32


def test_restore_numpy_reads_the_saved_state_without_a_target(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ck'), async_save=False)
  arrays = _state().arrays()
  ckpt.save(2, arrays, {})
  ckpt.save(3, jax.tree.map(lambda x: x + 1, arrays), {})
  latest, second = ckpt.restore_numpy(), ckpt.restore_numpy(2)
  ckpt.close()
  assert isinstance(latest['params']['Dense_0']['kernel'], np.ndarray)
  chex.assert_trees_all_equal(second['params'], jax.device_get(arrays['params']))
  chex.assert_trees_all_equal(latest['params'],
                              jax.device_get(jax.tree.map(lambda x: x + 1, arrays['params'])))
