"""Pruning from research code (issue 16): Flax NNX trees, checked inputs, no hidden batch or
model conventions, and the public names the docs use."""

import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bigmodel_jax import conventions, losses, pruning, train, train_state
from bigmodel_jax.errors import ConfigError


class _Linen(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name='l2')(jax.nn.relu(nn.Dense(16, name='l1')(x)))


class _Nnx(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(8, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 3, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(3, 3, rngs=rngs)])

  def __call__(self, x):
    return self.layers[0](self.l2(jax.nn.relu(self.l1(x))))


def _linen_params():
  return _Linen().init(jax.random.PRNGKey(0), jnp.zeros((1, 8)))['params']


def _nnx_model():
  return _Nnx(nnx.Rngs(0))


def _params():
  return {'a': {'kernel': jnp.arange(16.0).reshape(4, 4) - 7.5, 'bias': jnp.ones(4)}}


# --- Flax NNX ---------------------------------------------------------------------------------

def test_default_patterns_match_nnx_paths():
  """nnx.state paths ended in '.../kernel/value', so '*kernel' matched nothing."""
  state = nnx.state(_nnx_model(), nnx.Param)
  assert pruning.leaf_paths(state)[:2] == ['l1/bias', 'l1/kernel']
  flags = pruning.prunable_tree(state)
  assert sorted(p for p, f in zip(pruning.leaf_paths(flags), jax.tree.leaves(flags),
                                  strict=True) if f) == ['l1/kernel', 'l2/kernel',
                                                         'layers/0/kernel']


@pytest.mark.parametrize('scope', ['global', 'layerwise'])
def test_nnx_and_linen_give_identical_masks(scope):
  linen = _linen_params()
  model = _nnx_model()
  state = nnx.state(model, nnx.Param)
  for layer in ('l1', 'l2'):  # The same weights in both.
    for name in ('kernel', 'bias'):
      state[layer][name].value = linen[layer][name]
  for tree, out in ((linen, 'linen'), (state, 'nnx')):
    flags = pruning.prunable_tree(tree, include=('l1/kernel', 'l2/kernel'))
    masks = pruning.masks_from_scores(pruning.magnitude(tree), 0.6, scope=scope, prunable=flags)
    if out == 'linen':
      expected = masks
    else:
      got = dict(zip(pruning.leaf_paths(masks), jax.tree.leaves(masks), strict=True))
      for path, m in zip(pruning.leaf_paths(expected), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(m), err_msg=path)
  # Masks of one form apply to params of the other (matched by path).
  pure = nnx.to_pure_dict(masks)
  assert jax.tree.structure(pruning.apply_masks(state, pure)) == jax.tree.structure(state)


def test_save_compact_round_trips_an_nnx_model(tmp_path):
  """replace_by_pure_dict failed on the saved '.../value' keys."""
  model = _nnx_model()
  state = nnx.state(model, nnx.Param)
  masks = pruning.masks_from_scores(pruning.magnitude(state), 0.5,
                                    prunable=pruning.prunable_tree(state))
  nnx.update(model, pruning.apply_masks(state, masks))
  pruning.save_compact(str(tmp_path / 'm.npz'), nnx.state(model, nnx.Param), masks)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8))
  params, _ = pruning.load_compact(str(tmp_path / 'm.npz'))
  fresh = _Nnx(nnx.Rngs(7))
  target = nnx.state(fresh, nnx.Param)
  nnx.replace_by_pure_dict(target, params)
  nnx.update(fresh, target)
  np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(model(x)))
  like, like_masks = pruning.load_compact(str(tmp_path / 'm.npz'),
                                          like=nnx.state(_Nnx(nnx.Rngs(8)), nnx.Param))
  other = _Nnx(nnx.Rngs(9))
  nnx.update(other, like)
  np.testing.assert_array_equal(np.asarray(other(x)), np.asarray(model(x)))
  assert jax.tree.structure(like_masks) == jax.tree.structure(like)


def test_load_compact_keeps_list_layers_as_lists(tmp_path):
  """Lists came back as {'0': ..., '1': ...} dicts."""
  params = {'layers': [{'kernel': np.arange(4.0).reshape(2, 2)} for _ in range(2)]}
  masks = jax.tree.map(lambda x: x > 1, params)
  pruning.save_compact(str(tmp_path / 'l.npz'), params, masks)
  loaded, loaded_masks = pruning.load_compact(str(tmp_path / 'l.npz'))
  assert isinstance(loaded['layers'], list) and isinstance(loaded_masks['layers'], list)
  np.testing.assert_array_equal(loaded['layers'][1]['kernel'], [[0, 0], [2, 3]])


# --- Checked inputs ---------------------------------------------------------------------------

@pytest.mark.parametrize('sparsity', [1.5, -0.5, float('nan')])
def test_traced_sparsity_out_of_range_raises(sparsity):
  """A traced 1.5 pruned everything, -0.5 or NaN nothing, silently."""
  fn = jax.jit(lambda s, x: pruning.masks_from_scores(pruning.magnitude(x), s))
  fn(0.5, _params())  # In range: fine.
  with pytest.raises(Exception, match=r'masks_from_scores: sparsity=.*must be a number in'):
    jax.block_until_ready(fn(sparsity, _params()))


@pytest.mark.parametrize('sparsity', [1.5, -0.5, float('nan'), 1.0, True])
def test_python_sparsity_out_of_range_raises(sparsity):
  with pytest.raises(ConfigError, match='masks_from_scores: sparsity'):
    pruning.masks_from_scores(pruning.magnitude(_params()), sparsity)


def test_schedules_check_their_ranges():
  """iterative_sparsities(1.5, 3) returned complex numbers; polynomial_sparsity 1.5."""
  with pytest.raises(ConfigError, match='iterative_sparsities: target=1.5'):
    pruning.iterative_sparsities(1.5, 3)
  with pytest.raises(ConfigError, match='iterative_sparsities: rounds=0'):
    pruning.iterative_sparsities(0.5, 0)
  with pytest.raises(ConfigError, match='polynomial_sparsity: final_sparsity=1.5'):
    pruning.polynomial_sparsity(10, final_sparsity=1.5, begin_step=0, end_step=10)
  with pytest.raises(ConfigError, match='polynomial_sparsity: initial_sparsity=-0.1'):
    pruning.polynomial_sparsity(10, final_sparsity=0.5, initial_sparsity=-0.1, begin_step=0,
                                end_step=10)
  with pytest.raises(ConfigError, match='polynomial_sparsity: frequency=0'):
    pruning.polynomial_sparsity(10, final_sparsity=0.5, begin_step=0, end_step=10, frequency=0)
  fn = jax.jit(lambda f: pruning.polynomial_sparsity(10, final_sparsity=f, begin_step=0,
                                                     end_step=10))
  assert float(fn(0.5)) == pytest.approx(0.5)
  with pytest.raises(Exception, match='polynomial_sparsity: final_sparsity'):
    jax.block_until_ready(fn(1.5))


def _float_masks():
  return jax.tree.map(lambda x: jnp.full(x.shape, 0.5), _params())


def test_non_bool_masks_are_rejected(tmp_path):
  """Float masks (0.5) were treated as keep; sparsity_stats reported 0.0."""
  params, masks = _params(), _float_masks()
  with pytest.raises(ValueError, match='apply_masks: masks at a/bias has dtype float32'):
    pruning.apply_masks(params, masks)
  with pytest.raises(ValueError, match='sparsity_stats: masks'):
    pruning.sparsity_stats(params, masks)
  with pytest.raises(ValueError, match='save_compact: masks'):
    pruning.save_compact(str(tmp_path / 'x.npz'), params, masks)
  tx = pruning.masked(optax.sgd(0.1))
  with pytest.raises(ValueError, match=r'masked\(...\).update: masks'):
    tx.update(params, tx.init(params), params, masks=masks)
  with pytest.raises(ValueError, match='masked: masks'):
    pruning.masked(optax.sgd(0.1), masks=masks).init(params)


def test_mask_shape_and_structure_mismatches_are_rejected():
  """A (4, 1) mask broadcast over a (4, 4) leaf; other names with the same count matched."""
  params = _params()
  narrow = {'a': {'kernel': jnp.ones((4, 1), bool), 'bias': jnp.ones(4, bool)}}
  with pytest.raises(ValueError, match=r'apply_masks: masks at a/kernel has shape \(4, 1\)'):
    pruning.apply_masks(params, narrow)
  renamed = {'b': {'kernel': jnp.ones((4, 4), bool), 'bias': jnp.ones(4, bool)}}
  with pytest.raises(ValueError, match='missing: a/bias, a/kernel'):
    pruning.apply_masks(params, renamed)
  flags = {'b': {'kernel': True, 'bias': False}}
  with pytest.raises(ValueError, match='masks_from_scores: prunable must have the leaves'):
    pruning.masks_from_scores(pruning.magnitude(params), 0.5, prunable=flags)
  with pytest.raises(ValueError, match='sparsity_stats: prunable'):
    pruning.sparsity_stats(params, pruning.ones_like(params), flags)


def test_integer_leaves_are_not_ranked():
  """An int32 leaf named '*kernel' joined the global ranking."""
  params = {**_params(), 'q': {'kernel': jnp.arange(16, dtype=jnp.int32).reshape(4, 4)}}
  flags = pruning.prunable_tree(params)
  assert flags['a']['kernel'] and not flags['q']['kernel']
  masks = pruning.masks_from_scores(pruning.magnitude(params), 0.5)  # Default: floats only.
  assert bool(jnp.all(masks['q']['kernel']))
  pruned = sum(int(jnp.sum(~m)) for m in jax.tree.leaves(masks['a']))
  assert pruned == 10  # round(0.5 * 20): the 20 floats ranked, the int leaf not.
  with pytest.raises(ValueError, match='scores at q/kernel have dtype int32'):
    pruning.masks_from_scores(pruning.magnitude(params), 0.5,
                              prunable={'a': {'kernel': True, 'bias': False},
                                        'q': {'kernel': True}})
  with pytest.raises(ConfigError, match='only floating-point'):
    pruning.prunable_tree(params, include='q/kernel')


def test_nan_scores_rank_lowest():
  """NaN scores were always kept."""
  scores = jnp.array([3.0, jnp.nan, 1.0, 2.0, jnp.nan, -jnp.inf])
  masks = pruning.masks_from_scores({'w': scores}, 0.5)['w']
  np.testing.assert_array_equal(np.asarray(masks), [True, False, True, True, False, False])
  assert bool(jnp.all(pruning.masks_from_scores({'w': scores}, 0.0)['w']))


def test_string_include_is_one_pattern():
  """include='*kernel' was iterated letter by letter."""
  params = _linen_params()
  assert pruning.prunable_tree(params, include='l1/kernel') == pruning.prunable_tree(
      params, include=('l1/kernel',))
  assert pruning.prunable_tree(params, exclude='l2/kernel')['l2']['kernel'] is False


# --- No hidden conventions --------------------------------------------------------------------

class _NoTrain(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(x)


def _tuple_batch():
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 8))
  return x, jnp.arange(16) % 3


def test_train_step_takes_any_batch_and_model_call():
  """A model without `train` raised TypeError; batches had to be {'inputs', 'targets'}."""
  model = _NoTrain()
  tx = optax.sgd(0.1)
  state = train_state.create_train_state(0, model=model, tx=tx, input_shape=(8,))
  kwargs = dict(split_batch=conventions.split_pair, apply_model=conventions.apply_without_train)
  step = jax.jit(lambda s, b: train.train_step(s, b, **kwargs))
  with pytest.raises(TypeError):
    train.train_step(state, {'inputs': _tuple_batch()[0], 'targets': _tuple_batch()[1]})
  losses_seen = []
  for _ in range(5):
    state, metrics = step(state, _tuple_batch())
    losses_seen.append(float(metrics['loss']))
  assert losses_seen[-1] < losses_seen[0]
  sums = train.eval_step(state, _tuple_batch(), **kwargs)
  assert float(sums['count']) == 16


def test_batch_loss_and_sensitivity_take_any_batch():
  """sensitivity read batch['targets']; batch_loss_fn called the model with `train=`."""
  model = _NoTrain()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8)))['params']
  loss_fn = pruning.batch_loss_fn(model.apply, losses.cross_entropy,
                                  split_batch=conventions.split_pair,
                                  apply_model=conventions.apply_without_train)
  x, y = _tuple_batch()
  expected = jnp.mean(losses.cross_entropy(model.apply({'params': params}, x), y))
  assert float(loss_fn(params, (x, y))) == pytest.approx(float(expected))
  scores = pruning.sensitivity(params, loss_fn, [(x, y)], micro_batch=4)
  assert jax.tree.structure(scores) == jax.tree.structure(params)
  assert float(jnp.sum(scores['Dense_0']['kernel'])) > 0


def _has(module, dotted):
  for part in dotted.split('.'):
    if not hasattr(module, part):
      return False
    module = getattr(module, part)
  return True


def test_documented_pruning_functions_are_exported():
  """The gradual hook was neither exported nor documented."""
  assert pruning.mask_updater is pruning.gradual.mask_updater
  docs = [p for p in pathlib.Path('docs').rglob('*.md') if p.name != 'changes.md']  # History.
  text = '\n'.join(p.read_text() for p in [pathlib.Path('README.md'), *docs])
  named = set(re.findall(r'\bpruning\.([a-z_]\w*(?:\.[a-z_]\w*)?)', text)) - {'md'}
  assert 'mask_updater' in named
  missing = sorted(n for n in named if not _has(pruning, n))
  assert not missing, missing
