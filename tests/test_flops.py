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
