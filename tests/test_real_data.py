"""A few hundred steps on the real Fashion-MNIST files (Debian's dataset-fashion-mnist)."""

import os

import pytest

from bigmodel_jax import training
from configs import fashion_mnist_mlp

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason='apt-get install dataset-fashion-mnist to run this test')
def test_a_few_hundred_steps_on_fashion_mnist(tmp_path):
  config = fashion_mnist_mlp.get_config()
  config.data.tfds_data_dir = str(tmp_path / 'tfds')
  config.num_train_steps = 400
  config.checkpoint_async = False
  config.parallelism.num_devices = 1  # The default layout as on a 1-device machine: faster.
  results = training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['steps'] == 400
  # 400 steps x 64 = 0.43 epochs of the seed MLP: ~83% here; chance is 10%.
  assert results['final_eval_accuracy'] > 0.78
