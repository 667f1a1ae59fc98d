"""Leaf path strings of pytrees (bigmodel_jax/tree.py)."""

import jax
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from bigmodel_jax import tree


def _params():
  return {'Dense_0': {'bias': np.zeros(3), 'kernel': np.zeros((2, 3))},
          'Dense_1': {'kernel': np.zeros((3, 1))}}


def test_paths_name_dict_keys_sequence_indices_and_namedtuple_fields():
  state = {'params': _params(), 'opt_state': optax.adam(1e-3).init(_params()), 'step': 0}
  paths = tree.leaf_paths(state)
  assert 'params/Dense_0/kernel' in paths
  assert 'opt_state/0/mu/Dense_1/kernel' in paths  # A tuple index, then a namedtuple field.
  assert 'opt_state/0/count' in paths and 'step' in paths
  assert len(paths) == len(jax.tree.leaves(state))


def test_leaf_paths_follow_leaves_order():
  params = _params()
  assert tree.leaf_paths(params) == ['Dense_0/bias', 'Dense_0/kernel', 'Dense_1/kernel']
  names, leaves = zip(*tree.named_leaves(params), strict=True)
  assert list(names) == tree.leaf_paths(params)
  assert all(a is b for a, b in zip(leaves, jax.tree.leaves(params), strict=True))


def test_path_str_of_one_key_path():
  ((path, _),) = jax.tree_util.tree_leaves_with_path({'a': [0, {'b': 1}]})[1:]
  assert tree.path_str(path) == 'a/1/b'
  assert tree.path_str(()) == ''


def test_named_leaves_can_stop_at_partition_specs():
  specs = {'dense': {'kernel': P('embed', 'mlp'), 'bias': P('mlp')}}
  named = dict(tree.named_leaves(specs, is_leaf=lambda x: isinstance(x, P)))
  assert named == {'dense/bias': P('mlp'), 'dense/kernel': P('embed', 'mlp')}


def test_map_with_path_gives_each_leaf_its_path():
  params = _params()
  shapes = tree.map_with_path(lambda path, x, y: (path, x.shape, y.shape), params, params)
  assert shapes['Dense_0']['kernel'] == ('Dense_0/kernel', (2, 3), (2, 3))
  assert jax.tree.structure(shapes, is_leaf=lambda x: isinstance(x, tuple)) == \
      jax.tree.structure(params)


def test_match_paths_globs_across_slashes():
  paths = tree.leaf_paths(_params())
  assert tree.match_paths(paths, '*kernel') == ['Dense_0/kernel', 'Dense_1/kernel']
  assert tree.match_paths(paths, 'Dense_[01]/bias') == ['Dense_0/bias']
  assert tree.match_paths(paths, 'kernel') == []  # Whole paths only.


def test_pruning_masks_reexport_the_same_helpers():
  from bigmodel_jax.pruning import masks
  assert masks.path_str is tree.path_str and masks.leaf_paths is tree.leaf_paths
