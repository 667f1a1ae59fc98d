"""A tiny config for tests and smoke runs: a small MLP on a few hundred examples.

    python launch.py --config=configs/tiny.py --workdir=/tmp/tiny

Takes a few seconds on a CPU. Tests point `data.idx_dir` / `data.tfds_data_dir` at generated
IDX files; by default it reads the local Fashion-MNIST files (first 512 train examples).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = 'tiny'
  config.data.max_train_examples = 512
  config.data.max_eval_examples = 256
  config.model.hidden_sizes = (32,)
  config.batch_size = 16
  config.eval_batch_size = 100
  config.num_epochs = 2
  config.steps_per_call = 8
  config.log_every_steps = 8
  config.checkpoint_async = False
  return config
