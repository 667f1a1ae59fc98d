"""Exact selection on sharded scores: Explicit and Auto meshes, any PartitionSpec, ties by position.

The masks must not depend on the layout: they equal those from the same scores on one device and a
NumPy reference (a stable sort of the flattened tree: lowest first, ties in tree then row-major
order).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from bigmodel_jax import pruning
from bigmodel_jax.pruning import selection

SPECS = {
    'data_model': (P('data', 'model'), P('data', 'model', None)),
    'model_data': (P('model', 'data'), P(None, 'model', 'data')),
    'columns': (P(None, 'model'), P(None, None, 'model')),
    'both_axes_on_rows': (P(('data', 'model'), None), P(('data', 'model'), None, None)),
}


def _mesh(kind):
  types = (AxisType.Explicit if kind == 'explicit' else AxisType.Auto,) * 2
  return jax.make_mesh((2, 4), ('data', 'model'), axis_types=types)


def _scores(seed=0):
  """Scores with many ties (few distinct values), so the position tie-break decides."""
  rng = np.random.default_rng(seed)
  tie_heavy = lambda *shape: rng.integers(0, 5, shape).astype(np.float32)
  return {'Dense_0': {'kernel': tie_heavy(16, 8), 'bias': tie_heavy(8)},
          'attn': {'kernel': tie_heavy(8, 4, 8)},
          'Dense_1': {'kernel': rng.normal(size=(8, 16)).astype(np.float32)},
          'zeros': {'kernel': np.zeros((8, 8), np.float32)}}


def _prunable(scores):
  return jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == 'kernel', scores)


def _place(scores, mesh, spec_pair):
  spec_2d, spec_3d = spec_pair

  def put(path, x):
    spec = P() if path[-1].key == 'bias' else (spec_3d if x.ndim == 3 else spec_2d)
    return jax.device_put(x, NamedSharding(mesh, spec))
  return jax.tree_util.tree_map_with_path(put, scores)


def _reference_keep(leaves, k):
  flat = np.concatenate([x.ravel() for x in leaves])
  pruned = np.zeros(flat.size, bool)
  pruned[np.argsort(flat, kind='stable')[:k]] = True
  out, start = [], 0
  for x in leaves:
    out.append(~pruned[start:start + x.size].reshape(x.shape))
    start += x.size
  return out


@pytest.mark.parametrize('spec', list(SPECS), ids=list(SPECS))
@pytest.mark.parametrize('kind', ['explicit', 'auto'])
def test_sharded_selection_equals_replicated_and_reference(kind, spec):
  scores = _scores()
  prunable = _prunable(scores)
  sharded = _place(scores, _mesh(kind), SPECS[spec])
  overrides = {'attn/kernel': 0.3}
  for options in ({'scope': 'global'}, {'scope': 'layerwise'},
                  {'scope': 'global', 'overrides': overrides}):
    select = jax.jit(lambda s, options=options: pruning.masks_from_scores(
        s, 0.55, prunable=prunable, **options))
    on_mesh = select(sharded)
    on_one = jax.device_get(select(jax.device_put(scores, jax.devices()[0])))
    got = jax.device_get(on_mesh)
    jax.tree.map(np.testing.assert_array_equal, got, on_one)
    # Masks keep their scores' layout.
    for mask, score in zip(jax.tree.leaves(on_mesh), jax.tree.leaves(sharded), strict=True):
      assert mask.sharding.is_equivalent_to(score.sharding, score.ndim)
    assert bool(np.all(got['Dense_0']['bias']))
    paths = [p for p, f in zip(pruning.leaf_paths(scores), jax.tree.leaves(prunable),
                               strict=True) if f]
    kept = dict(zip(pruning.leaf_paths(scores), jax.tree.leaves(got), strict=True))
    values = dict(zip(pruning.leaf_paths(scores), jax.tree.leaves(scores), strict=True))
    own = options.get('overrides', {})
    groups = ([[p] for p in paths] if options['scope'] == 'layerwise'
              else [[p] for p in paths if p in own] + [[p for p in paths if p not in own]])
    for group in groups:
      rate = own.get(group[0], 0.55)
      k = round(rate * sum(values[p].size for p in group))
      for p, want in zip(group, _reference_keep([values[p] for p in group], k), strict=True):
        np.testing.assert_array_equal(kept[p], want, err_msg=f'{p} {options}')


@pytest.mark.parametrize('kind', ['explicit', 'auto'])
def test_sharded_selection_with_traced_sparsity(kind):
  scores = _scores(1)
  sharded = _place(scores, _mesh(kind), SPECS['data_model'])
  prunable = _prunable(scores)
  select = jax.jit(lambda s, rate: pruning.masks_from_scores(s, rate, prunable=prunable))
  size = sum(x.size for x, f in zip(jax.tree.leaves(scores), jax.tree.leaves(prunable),
                                    strict=True) if f)
  for rate in (0.0, 0.2, 0.9):
    got = jax.device_get(select(sharded, jnp.float32(rate)))
    want = jax.device_get(select(jax.device_put(scores, jax.devices()[0]), jnp.float32(rate)))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert sum(int(np.sum(~m)) for m in jax.tree.leaves(got)) == round(rate * size)


def test_lowest_k_masks_breaks_ties_across_leaves_on_an_explicit_mesh():
  mesh = _mesh('explicit')
  a = jax.device_put(jnp.ones((4, 8)), NamedSharding(mesh, P('data', 'model')))
  b = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P('model', 'data')))
  select = jax.jit(selection.lowest_k_masks)  # k traced: one compilation.
  for k in (0, 5, 32, 33, 64):
    keep = jax.device_get(select([a, b], k))
    want = _reference_keep([np.ones((4, 8)), np.ones((8, 4))], k)
    for got, ref in zip(keep, want, strict=True):
      np.testing.assert_array_equal(got, ref)
