"""The GPT-style LM, the ViT encoder and generation with and without the key/value cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import generate
from bigmodel_jax.models import transformer


def _gpt(**kwargs):
  settings = dict(vocab_size=17, num_layers=2, num_heads=2, embed_dim=16, max_len=24)
  settings.update(kwargs)
  return transformer.GPT(**settings)


def _params(model, length=8):
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, length), jnp.int32))
  return nn.meta.unbox(variables['params'])


def _count(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_gpt_parameter_count_matches_the_formula():
  # nanoGPT's small Shakespeare model: 4 layers, 4 heads, 128 wide, context 64, 65 characters,
  # no biases, tied output embedding.
  model = transformer.GPT(vocab_size=65, num_layers=4, num_heads=4, embed_dim=128, max_len=64)
  e, layers = 128, 4
  expected = 65 * e + 64 * e + layers * (4 * e * e + 8 * e * e + 2 * e) + e
  assert _count(_params(model)) == expected == 804_096
  untied = _params(_gpt(tie_embeddings=False, use_bias=True))
  assert untied['lm_head']['kernel'].shape == (16, 17)
  assert untied['block_0']['attn']['query']['bias'].shape == (16,)


def test_kernels_are_two_dimensional_and_carry_logical_axes():
  model = _gpt()
  boxed = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']
  spec = nn.get_partition_spec(boxed)
  assert tuple(spec['block_0']['attn']['query']['kernel']) == ('embed', 'heads')
  assert tuple(spec['block_1']['fc']['kernel']) == ('embed', 'mlp')
  assert tuple(spec['wte']['embedding']) == ('vocab', 'embed')
  params = nn.meta.unbox(boxed)
  assert params['block_0']['attn']['out']['kernel'].shape == (16, 16)
  assert params['block_0']['proj']['kernel'].shape == (64, 16)


@pytest.mark.parametrize('position', ['learned', 'rope'])
def test_output_at_t_does_not_depend_on_later_tokens(position):
  model = _gpt(position=position)
  params = _params(model)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 17)
  changed = tokens.at[:, 7:].set((tokens[:, 7:] + 5) % 17)
  a, b = model.apply({'params': params}, tokens), model.apply({'params': params}, changed)
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
  assert np.max(np.abs(a[:, 7:] - b[:, 7:])) > 1e-3  # Later positions do see the change.


@pytest.mark.parametrize('position', ['learned', 'rope'])
def test_decoding_with_the_cache_gives_the_full_forward_logits(position):
  model = _gpt(position=position)
  params = _params(model)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 10), 0, 17)
  full = model.apply({'params': params}, tokens)
  cache = model.init(jax.random.PRNGKey(0), tokens[:, :1], decode=True)['cache']
  cache = jax.tree.map(jnp.zeros_like, cache)
  logits, state = model.apply({'params': params, 'cache': cache}, tokens[:, :6], decode=True,
                              mutable=['cache'])
  pieces = [logits]
  for t in range(6, 10):  # Then one token at a time.
    logits, state = model.apply({'params': params, 'cache': state['cache']}, tokens[:, t:t + 1],
                                decode=True, mutable=['cache'])
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)


@pytest.mark.parametrize('temperature,top_k', [(0.0, 0), (1.0, 5)])
def test_cached_generation_equals_full_re_encoding(temperature, top_k):
  model = _gpt()
  params = _params(model)
  prompt = jax.random.randint(jax.random.PRNGKey(3), (3, 5), 0, 17)
  key = jax.random.PRNGKey(4)
  cached = generate.sample(model, params, prompt, 12, rng=key, temperature=temperature,
                           top_k=top_k)
  uncached = generate.sample(model, params, prompt, 12, rng=key, temperature=temperature,
                             top_k=top_k, use_cache=False)
  assert cached.shape == (3, 17)
  np.testing.assert_array_equal(cached, uncached)
  np.testing.assert_array_equal(cached[:, :5], prompt)


def test_top_k_restricts_the_choice():
  logits = jnp.array([[0.0, 1.0, 2.0, 3.0]] * 200)
  keys = jax.random.split(jax.random.PRNGKey(0), 200)
  draws = jax.vmap(lambda row, k: generate.next_token(row[None], k, temperature=1.0, top_k=2))(
      logits, keys)
  assert set(np.asarray(draws).ravel().tolist()) == {2, 3}


def test_generation_refuses_bad_requests():
  model = _gpt()
  params = _params(model)
  with pytest.raises(ValueError, match='exceeds'):
    generate.sample(model, params, jnp.zeros((1, 20), jnp.int32), 10, rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='top_k'):
    generate.sample(model, params, jnp.zeros((1, 2), jnp.int32), 3, rng=jax.random.PRNGKey(0),
                    top_k=99)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = _gpt(dtype=jnp.bfloat16)
  params = _params(model)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = model.apply({'params': params}, jnp.zeros((2, 8), jnp.int32))
  assert logits.dtype == jnp.float32
  reference = _gpt().apply({'params': params}, jnp.zeros((2, 8), jnp.int32))
  assert float(jnp.max(jnp.abs(logits - reference))) < 0.1


def test_vit_classifies_fashion_mnist_sized_images():
  model = transformer.ViT(num_classes=10, patch_size=7, num_layers=2, num_heads=2, embed_dim=32)
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1))
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), images)['params'])
  assert model.apply({'params': params}, images).shape == (3, 10)
  e, tokens = 32, 16 + 1
  per_block = 4 * (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e) + 4 * e
  expected = (49 * e + e) + e + tokens * e + 2 * per_block + 2 * e + (e * 10 + 10)
  assert _count(params) == expected
  with pytest.raises(ValueError, match='patches'):
    transformer.ViT(patch_size=5).init(jax.random.PRNGKey(0), images)


def test_head_removal_equals_head_masking():
  from bigmodel_jax.pruning import heads
  model = _gpt(num_heads=4, embed_dim=32, use_bias=True)
  params = _params(model)
  tokens = jax.random.randint(jax.random.PRNGKey(5), (3, 10), 0, 17)
  scores = heads.head_scores(model.apply, params, [tokens], head_dim=8)
  assert set(scores) == {'block_0', 'block_1'} and scores['block_0'].shape == (4,)
  keep = heads.keep_heads(scores, 0.5)
  assert all(k.sum() == 2 for k in keep.values())
  masks = heads.head_masks(params, keep, head_dim=8)
  read_back = heads.kept_heads(masks, head_dim=8)
  assert set(read_back) == set(keep)
  assert all(np.array_equal(read_back[k], keep[k]) for k in keep)
  masked = jax.tree.map(lambda p, m: jnp.where(m, p, 0), params, masks)
  small_model, small_params = heads.shrink_heads(model, params, keep)
  assert small_model.heads_per_layer == (2, 2)
  assert small_params['block_0']['attn']['query']['kernel'].shape == (32, 16)
  assert small_params['block_0']['attn']['out']['kernel'].shape == (16, 32)
  np.testing.assert_allclose(small_model.apply({'params': small_params}, tokens),
                             model.apply({'params': masked}, tokens), atol=1e-5)
  # Removing the lowest-scored heads costs less than removing the highest-scored ones.
  full = model.apply({'params': params}, tokens)
  worst = {k: ~v for k, v in keep.items()}
  low = jnp.mean((model.apply({'params': jax.tree.map(
      lambda p, m: jnp.where(m, p, 0), params, heads.head_masks(params, keep, 8))}, tokens)
      - full) ** 2)
  high = jnp.mean((model.apply({'params': jax.tree.map(
      lambda p, m: jnp.where(m, p, 0), params, heads.head_masks(params, worst, 8))}, tokens)
      - full) ** 2)
  assert low < high


def test_vit_head_removal_equals_head_masking():
  from bigmodel_jax.pruning import heads
  model = transformer.ViT(num_classes=10, patch_size=7, num_layers=2, num_heads=4, embed_dim=32)
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 28, 28, 1))
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), images)['params'])
  keep = heads.keep_heads(heads.head_scores(model.apply, params, [images], head_dim=8), 0.75)
  masked = jax.tree.map(lambda p, m: jnp.where(m, p, 0), params,
                        heads.head_masks(params, keep, head_dim=8))
  small_model, small_params = heads.shrink_heads(model, params, keep)
  assert small_model.heads_per_layer == (1, 1)
  np.testing.assert_allclose(small_model.apply({'params': small_params}, images),
                             model.apply({'params': masked}, images), atol=1e-5)


def test_token_dense_is_dense_on_every_leading_shape():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 8))
  dense, token_dense = nn.Dense(6), transformer.TokenDense(6)
  params = dense.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(token_dense.init(
      jax.random.PRNGKey(1), x))
  for inputs in (x, x[0], x[None]):
    np.testing.assert_allclose(token_dense.apply(params, inputs), dense.apply(params, inputs),
                               rtol=1e-6, atol=1e-6)
  grads = [jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x))))(params)
           for m in (dense, token_dense)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads)
