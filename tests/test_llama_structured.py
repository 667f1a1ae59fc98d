"""Structured compression of a Llama (pruning.llama_structured) on a tiny random model built here:
shrunk logits equal masked ones, GQA groups go whole, scores mean what they say, KV-cache
decoding works on the shrunk model, exports reload in transformers, bad inputs are refused."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import generate, pretrained
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import Llama
from bigmodel_jax.pretrained import convert
from bigmodel_jax.pruning import llama_structured as ls
from bigmodel_jax.pruning import masks as masks_lib

VOCAB = 128
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 12))


def _model(**kw):
  """A 3-block Llama, 4 query heads in 2 groups, with random params (norms perturbed too)."""
  config = dict(vocab_size=VOCAB, num_layers=3, embed_dim=32, num_heads=4, num_kv_heads=2,
                mlp_dim=24, max_len=32, rope_base=500.0)
  model = Llama(**{**config, **kw})
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params'])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  return model, jax.tree.unflatten(tree, leaves)


def _logits(model, params, tokens=TOKENS):
  return np.asarray(model.apply({'params': params}, jnp.asarray(tokens)))


def _keeps(groups, units):
  """{block: bool} dicts from lists of per-block keep lists."""
  as_dict = lambda keeps: {f'block_{i}': np.asarray(k, bool) for i, k in enumerate(keeps)}
  return as_dict(groups), as_dict(units)


NON_UNIFORM = _keeps([[True, False], [True, True], [False, True]],
                     [[True] * 18 + [False] * 6, [False, True] * 12, [True] * 24])
UNIFORM = _keeps([[False, True]] * 3, [[True, False, True, True] * 6] * 3)


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('keeps', [NON_UNIFORM, UNIFORM], ids=['non-uniform', 'uniform'])
def test_shrunk_logits_equal_masked_logits(keeps, bias):
  model, params = _model(qkv_bias=bias, out_bias=bias, mlp_bias=bias, tie_embeddings=not bias)
  masks = ls.structured_masks(model, params, *keeps)
  masked = _logits(model, masks_lib.apply_masks(params, masks))
  small, small_params = ls.shrink(model, params, *keeps)
  assert small.kv_heads_per_layer == tuple(int(k.sum()) for k in keeps[0].values())
  assert small.mlp_dims_per_layer == tuple(int(k.sum()) for k in keeps[1].values())
  assert [small.layer_sizes(i)[0] for i in range(3)] == [2 * kv for kv in small.kv_heads_per_layer]
  np.testing.assert_allclose(_logits(small, small_params), masked, atol=1e-5, rtol=1e-5)
  assert np.abs(masked - _logits(model, params)).max() > 1e-2  # Something was removed.
  back = ls.kept_from_masks(model, masks)
  for got, want in zip(back, keeps, strict=True):
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_removing_kv_head_g_removes_its_query_group():
  model, params = _model(num_heads=6, num_kv_heads=3, embed_dim=48)  # group 2, head_dim 8
  d, group = 8, 2
  for g in range(3):
    keep = np.ones(3, bool)
    keep[g] = False
    masks = ls.structured_masks(model, params, {'block_1': keep}, None)
    query = np.asarray(masks['block_1']['attn']['query']['kernel'][0]).reshape(6, d)
    removed_heads = np.flatnonzero(~query.all(axis=1))
    np.testing.assert_array_equal(removed_heads, np.arange(g * group, (g + 1) * group))
    key = np.asarray(masks['block_1']['attn']['key']['kernel'][0]).reshape(3, d)
    np.testing.assert_array_equal(key.all(axis=1), keep)
    out = np.asarray(masks['block_1']['attn']['out']['kernel'][:, 0]).reshape(6, d)
    np.testing.assert_array_equal(np.flatnonzero(~out.all(axis=1)), removed_heads)
    assert all(np.asarray(m).all() for m in jax.tree.leaves(masks['block_0']))
    small, small_params = ls.shrink(model, params, {'block_1': keep}, None)
    kept_heads = [h for h in range(6) if h // group != g]
    cols = np.concatenate([np.arange(h * d, (h + 1) * d) for h in kept_heads])
    np.testing.assert_array_equal(small_params['block_1']['attn']['query']['kernel'],
                                  params['block_1']['attn']['query']['kernel'][:, cols])
    assert small.layer_sizes(1) == (4, 2, 24) and small.layer_sizes(0) == (6, 3, 24)


def _outputs(model, params, tokens):
  """Block 0's attention and MLP outputs [tokens, embed]."""
  found = {}

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.path in (('block_0', 'attn'), ('block_0', 'mlp')):
      found[context.module.path[1]] = out.reshape(-1, out.shape[-1])
    return out
  with nn.intercept_methods(capture):
    model.apply({'params': params}, tokens)
  return found


def test_scores_are_the_mean_norm_of_what_removing_the_part_takes_away():
  model, params = _model()
  batches = [TOKENS, TOKENS[:1, :7]]
  groups, units = ls.calibration_scores(model, params, batches)
  assert {k: v.shape for k, v in groups.items()} == {f'block_{i}': (2,) for i in range(3)}
  assert {k: v.shape for k, v in units.items()} == {f'block_{i}': (24,) for i in range(3)}
  tokens = np.concatenate([b.reshape(-1) for b in batches])
  for kind, index, n, scores in (('attn', 0, 2, groups), ('mlp', 1, 24, units)):
    for j in (0, n - 1):
      keep = np.ones(n, bool)
      keep[j] = False
      keeps = [{'block_0': keep} if i == index else None for i in range(2)]
      masked = masks_lib.apply_masks(params, ls.structured_masks(model, params, *keeps))
      # Each batch separately (positions restart), tokens pooled.
      diff = np.concatenate([
          np.asarray(_outputs(model, params, b)[kind] - _outputs(model, masked, b)[kind])
          for b in map(jnp.asarray, batches)])
      assert len(diff) == len(tokens)
      np.testing.assert_allclose(scores['block_0'][j], np.linalg.norm(diff, axis=1).mean(),
                                 rtol=1e-4)


def test_keep_by_fraction_per_block_and_global():
  scores = {'block_0': np.array([3.0, 1.0, 2.0, 0.5]), 'block_1': np.array([0.1, 0.2, 0.3, 0.05])}
  keep = ls.keep_by_fraction(scores, 0.25)
  np.testing.assert_array_equal(keep['block_0'], [True, True, True, False])
  np.testing.assert_array_equal(keep['block_1'], [True, True, True, False])
  keep = ls.keep_by_fraction(scores, 0.5, scope='global')
  np.testing.assert_array_equal(keep['block_0'], [True, True, True, True])
  np.testing.assert_array_equal(keep['block_1'], [False, False, True, False])  # >= 1 kept.
  assert ls.keep_by_fraction(scores, 0.99)['block_0'].sum() == 1
  ties = ls.keep_by_fraction({'block_0': np.ones(4), 'block_1': np.ones(2)}, 0.5, scope='global')
  np.testing.assert_array_equal(np.concatenate(list(ties.values())), [1, 1, 1, 0, 1, 0])
  assert all(k.all() for k in ls.keep_by_fraction(scores, 0.0).values())


def test_kv_cache_generation_on_the_shrunk_model():
  model, params = _model()
  small, small_params = ls.shrink(model, params, *NON_UNIFORM)
  prompt = jnp.asarray(TOKENS[:, :5])
  cached = generate.sample(small, small_params, prompt, 6, rng=jax.random.PRNGKey(0),
                           temperature=0.0)
  uncached = generate.sample(small, small_params, prompt, 6, rng=jax.random.PRNGKey(0),
                             temperature=0.0, use_cache=False)
  np.testing.assert_array_equal(cached, uncached)
  cache = small.init(jax.random.PRNGKey(0), prompt, decode=True)['cache']
  assert cache['block_0']['attn']['cached_key'].shape == (2, 32, 1, 8)  # Only the kept kv head.


@pytest.mark.parametrize('keeps', [UNIFORM, NON_UNIFORM], ids=['uniform', 'non-uniform'])
def test_export_of_a_shrunk_model_reloads_in_transformers(keeps, tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  model, params = _model(qkv_bias=True)  # Saved as Qwen2 (q/k/v biases).
  small, small_params = ls.shrink(model, params, *keeps)
  pretrained.save(str(tmp_path), small, small_params)
  config = json.load(open(os.path.join(tmp_path, 'config.json')))
  uniform = keeps is UNIFORM
  assert convert.padded_blocks(small) == ([] if uniform else [0, 1, 2])
  assert (config['num_key_value_heads'], config['num_attention_heads'],
          config['intermediate_size']) == ((1, 2, 18) if uniform else (2, 4, 24))
  again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                            dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = again(torch.tensor(TOKENS)).logits.numpy()
  np.testing.assert_allclose(theirs, _logits(small, small_params), atol=1e-4, rtol=1e-4)
  reloaded = pretrained.load(str(tmp_path))
  np.testing.assert_allclose(_logits(reloaded.model, reloaded.params),
                             _logits(small, small_params), atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_refused_with_one_sentence():
  model, params = _model()
  scores = {'block_0': np.ones(4)}
  for fraction in (-0.1, 1.0, '0.5'):
    with pytest.raises(ConfigError, match='fraction'):
      ls.keep_by_fraction(scores, fraction)
  with pytest.raises(ConfigError, match='non-empty score vectors'):
    ls.keep_by_fraction({}, 0.5, scope='global')
  with pytest.raises(ConfigError, match='scope'):
    ls.keep_by_fraction(scores, 0.5, scope='blockwise')
  cases = {
      r"keep_groups\['block_0'\] must be a bool vector of shape \(2,\)":
          ({'block_0': np.ones(3, bool)}, None),
      r"keep_units\['block_2'\] must be a bool vector of shape \(24,\)":
          (None, {'block_2': np.ones((2, 12), bool)}),
      'keeping at least one; got bool': ({'block_1': np.zeros(2, bool)}, None),
      'got int64': (None, {'block_0': np.ones(24, np.int64)}),
      "names 'block_7', which is not a block": ({'block_7': np.ones(2, bool)}, None),
  }
  for message, keeps in cases.items():
    for fn in (ls.shrink, ls.structured_masks):
      with pytest.raises(ConfigError, match=message):
        fn(model, params, *keeps)
  with pytest.raises(ConfigError, match='No calibration batches'):
    ls.calibration_scores(model, params, [])
  with pytest.raises(ConfigError, match=r'int tokens \[batch, length\]'):
    ls.calibration_scores(model, params, [np.zeros(5, np.int32)])
