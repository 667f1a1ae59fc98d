import jax
import jax.numpy as jnp

from bigmodel_jax import flops, models


def test_seed_mlp_train_step_is_0_205_gflop_at_batch_64():
  model = models.MLP(hidden_sizes=(512, 256), num_outputs=10)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 784)))['params']
  assert flops.dense_kernel_sizes(params) == [(784, 512), (512, 256), (256, 10)]
  weights = 784 * 512 + 512 * 256 + 256 * 10
  assert flops.dense_forward_flops(params, 64) == 2 * 64 * weights
  assert flops.dense_train_step_flops(params, 64) == 6 * 64 * weights == 205_455_360


def test_forward_count_matches_xla_cost_analysis():
  model = models.MLP(hidden_sizes=(128,), num_outputs=10)
  x = jnp.zeros((32, 784))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  cost = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, x).compile()
  cost = cost.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  analytic = flops.dense_forward_flops(params, 32)
  # XLA also counts bias adds and the activation: a little above the matmul-only count.
  assert analytic <= cost['flops'] <= 1.02 * analytic


def test_transformer_flops_per_token_of_the_nanogpt_recipe():
  kwargs = dict(num_layers=4, embed_dim=128, seq_len=64, vocab_size=65)
  per_layer = 4 * 2 * 128 * 128 + 2 * 2 * 128 * 512 + 2 * 2 * 64 * 128
  assert flops.transformer_forward_flops_per_token(**kwargs) == 4 * per_layer + 2 * 128 * 65
  train = flops.transformer_train_flops_per_token(**kwargs)
  assert train == 5_161_728
  # nanoGPT's estimate 6N + 12 L H Q T with N = non-position params (incl. the tied head) differs
  # only by what it counts as N (LayerNorm scales in, the head's E x V once): within 0.2%.
  n = 804_096 - 64 * 128
  assert abs(6 * n + 12 * 4 * 4 * 32 * 64 - train) / train < 2e-3


def test_transformer_forward_count_matches_xla_cost_analysis():
  from bigmodel_jax.models import transformer
  model = transformer.GPT(vocab_size=65, num_layers=2, num_heads=4, embed_dim=64, max_len=32)
  tokens = jnp.zeros((4, 32), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)['params']
  compiled = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, tokens).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  analytic = 4 * 32 * flops.transformer_forward_flops_per_token(
      num_layers=2, embed_dim=64, seq_len=32, vocab_size=65)
  # XLA adds softmax, LayerNorm and GELU work on top of the matmuls.
  assert analytic <= cost['flops'] <= 1.15 * analytic
