"""Shared fixtures: fake CPU devices, generated IDX data, a prepared tiny TFDS dataset."""

import os
import tempfile

# Before jax is imported anywhere: 8 fake CPU devices, as on a small accelerator host.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Most tests compile the same tiny programs again (each run, each layout, each subprocess):
# a persistent XLA cache shared by the pytest workers and their subprocesses compiles each once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'bigmodel_jax-test-xla-cache-{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bigmodel_jax.data import idx  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_images(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Learnable fake digits: class c lights up a 7x7 block at a class-specific place, plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, num).astype(np.uint8)
  images = rng.integers(0, 60, (num, 28, 28)).astype(np.uint8)
  for i, c in enumerate(labels):
    r, k = divmod(int(c), 4)
    images[i, 7 * r:7 * r + 7, 7 * k:7 * k + 7] += 150
  return images, labels


@pytest.fixture(scope='session')
def idx_dir(tmp_path_factory) -> str:
  """A folder with the four IDX files of a 600/200-example fake dataset."""
  folder = str(tmp_path_factory.mktemp('idx'))
  idx.write_split(folder, 'train', *make_images(600, seed=1))
  idx.write_split(folder, 'test', *make_images(200, seed=2))
  return folder


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory) -> str:
  """A TFDS data dir shared by the session (the fake dataset is prepared into it once)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def tiny_config(idx_dir, tfds_dir):
  """configs/tiny.py pointed at the generated data."""
  from configs import tiny
  config = tiny.get_config()
  config.data.idx_dir = idx_dir
  config.data.tfds_data_dir = tfds_dir
  return config


@pytest.fixture(scope='session')
def dense_dir(idx_dir, tfds_dir, tmp_path_factory) -> str:
  """A finished dense run of configs/tiny.py (hidden 32, 16) on the generated data: where the
  pruning tests (test_compress*, with `prune.dense_dir`) start from."""
  from bigmodel_jax import training
  from configs import tiny
  config = tiny.get_config()
  config.data.idx_dir, config.data.tfds_data_dir = idx_dir, tfds_dir
  config.model.hidden_sizes = (32, 16)
  config.write_plot = False
  workdir = str(tmp_path_factory.mktemp('dense'))
  training.train_and_evaluate(config, workdir)
  return workdir
