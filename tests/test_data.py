import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigmodel_jax import data
from bigmodel_jax.data import idx
from bigmodel_jax.errors import DataError
from configs import default
from tests.conftest import REPO_ROOT, make_images


def _data_config(idx_dir, tfds_dir, **overrides):
  config = default.get_config().data
  config.idx_dir, config.tfds_data_dir = idx_dir, tfds_dir
  for key, value in overrides.items():
    config[key] = value
  return config


def test_idx_round_trip_gzipped_and_plain(tmp_path):
  images, labels = make_images(7, seed=0)
  for suffix in ('.gz', ''):
    idx.write_idx(str(tmp_path / f'i{suffix}'), images)
    idx.write_idx(str(tmp_path / f'l{suffix}'), labels)
    got_images, got_labels = idx.read_pair(str(tmp_path / f'i{suffix}'),
                                           str(tmp_path / f'l{suffix}'))
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_idx_rejects_bad_magic_and_truncation(tmp_path):
  path = str(tmp_path / 'x.gz')
  with gzip.open(path, 'wb') as f:
    f.write(b'\x00\x00\x08\x01' + (5).to_bytes(4, 'big') + b'\x01\x02')
  with pytest.raises(DataError, match='magic number 2051'):
    idx.read_idx(path, idx.IMAGES_MAGIC)
  with pytest.raises(DataError, match='declares shape'):
    idx.read_idx(path, idx.LABELS_MAGIC)


def test_missing_files_say_what_to_do(tmp_path):
  with pytest.raises(DataError, match='dataset-fashion-mnist'):
    idx.split_paths(str(tmp_path), 'train')


def test_missing_idx_folder_is_a_clear_error(tmp_path):
  config = _data_config(str(tmp_path / 'nope'), str(tmp_path / 'tfds'))
  with pytest.raises(DataError, match='config.data.idx_dir'):
    data.load_datasets(config)


def test_builder_prepares_and_loads_the_generated_set(idx_dir, tfds_dir):
  datasets = data.load_datasets(_data_config(idx_dir, tfds_dir))
  assert datasets.train.inputs.shape == (600, 28, 28, 1)
  assert datasets.train.inputs.dtype == np.float32
  assert datasets.eval.targets.shape == (200,) and datasets.eval.targets.dtype == np.int32
  assert datasets.test is None and datasets.num_classes == 10
  # Normalised with the train set's statistics.
  assert abs(datasets.train.inputs.mean()) < 1e-4
  assert datasets.train.inputs.std() == pytest.approx(1.0, rel=1e-3)
  # Same examples as the files, in some order (TFDS orders by key hash).
  images, labels = make_images(600, seed=1)
  assert np.bincount(datasets.train.targets, minlength=10).tolist() == np.bincount(
      labels, minlength=10).tolist()
  raw = np.round((datasets.train.inputs * datasets.std + datasets.mean) * 255).astype(np.uint8)
  assert sorted(map(bytes, raw[..., 0])) == sorted(map(bytes, images))


def test_scaling_without_normalisation(idx_dir, tfds_dir):
  datasets = data.load_datasets(_data_config(idx_dir, tfds_dir, normalize=False))
  assert datasets.train.inputs.min() >= 0 and datasets.train.inputs.max() <= 1
  assert (datasets.mean, datasets.std) == (0.0, 1.0)


def test_validation_holdout_and_limits(idx_dir, tfds_dir):
  datasets = data.load_datasets(_data_config(idx_dir, tfds_dir, validation_size=100,
                                             max_eval_examples=50))
  assert len(datasets.train) == 500 and len(datasets.eval) == 50 and len(datasets.test) == 200
  with pytest.raises(DataError, match='validation_size'):
    data.load_datasets(_data_config(idx_dir, tfds_dir, validation_size=600))


def test_tfds_catalog_source_with_mock_data(tmp_path):
  config = _data_config('', str(tmp_path), source='tfds', name='mnist')
  with tfds.testing.mock_data(num_examples=40):
    datasets = data.load_datasets(config)
  assert datasets.train.inputs.shape == (40, 28, 28, 1)
  assert set(np.unique(datasets.train.targets)) <= set(range(10))


def test_epoch_permutation_is_a_function_of_seed_and_epoch():
  a = data.epoch_permutation(100, seed=0, epoch=3, shuffle=True)
  np.testing.assert_array_equal(a, data.epoch_permutation(100, seed=0, epoch=3, shuffle=True))
  assert not np.array_equal(a, data.epoch_permutation(100, seed=0, epoch=4, shuffle=True))
  assert not np.array_equal(a, data.epoch_permutation(100, seed=1, epoch=3, shuffle=True))
  assert sorted(a) == list(range(100))
  np.testing.assert_array_equal(data.epoch_permutation(5, seed=0, epoch=0, shuffle=False),
                                np.arange(5))


def _split(n):
  return data.Split(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1),
                    np.arange(n, dtype=np.int32))


def test_train_chunks_cover_an_epoch_and_resume_on_the_same_boundaries():
  split = _split(103)
  kwargs = dict(batch_size=10, steps_per_call=4, seed=0, epoch=1, shuffle=True)
  chunks = list(data.train_chunks(split, **kwargs))
  assert [s for s, _ in chunks] == [0, 4, 8]
  assert [c['targets'].shape for _, c in chunks] == [(4, 10), (4, 10), (2, 10)]
  seen = np.concatenate([c['targets'].ravel() for _, c in chunks])
  assert len(set(seen)) == 100  # 10 full batches, the last 3 examples dropped.
  np.testing.assert_array_equal(chunks[0][1]['inputs'][..., 0, 0, 0], chunks[0][1]['targets'])
  resumed = list(data.train_chunks(split, start_step=4, **kwargs))
  assert [s for s, _ in resumed] == [4, 8]
  np.testing.assert_array_equal(resumed[0][1]['targets'], chunks[1][1]['targets'])


def test_eval_batches_pad_and_mask_every_example_once():
  batches = list(data.eval_batches(_split(25), batch_size=10))
  assert [b['targets'].shape for b in batches] == [(10,)] * 3
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['targets'] for b in batches])
  assert mask.sum() == 25
  np.testing.assert_array_equal(labels[mask == 1], np.arange(25))


@pytest.mark.skipif(not os.path.isdir('/usr/share/datasets/fashion-mnist'),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_real_fashion_mnist_files_parse():
  images, labels = idx.read_pair(*idx.split_paths('/usr/share/datasets/fashion-mnist', 'test'))
  assert images.shape == (10000, 28, 28)
  assert np.bincount(labels).tolist() == [1000] * 10


class _FakeDownloadManager:
  """Stands in for TFDS's download manager: 'downloads' from a local folder of IDX files."""

  def __init__(self, folder):
    self.manual_dir = None
    self.folder = folder
    self.urls = []

  def download(self, urls):
    self.urls.extend(urls.values())
    return {key: os.path.join(self.folder, url.rsplit('/', 1)[1]) for key, url in urls.items()}


def test_builder_download_path_fetches_the_registered_urls(idx_dir, tmp_path):
  from bigmodel_jax.data import idx_builder
  builder = idx_builder.IdxImages(config='mnist', data_dir=str(tmp_path))
  manager = _FakeDownloadManager(idx_dir)
  generators = builder._split_generators(manager)
  assert len(manager.urls) == 4
  assert set(manager.urls) <= set(builder.url_infos)  # Each URL has a registered checksum.
  assert all(url.startswith('https://storage.googleapis.com/cvdf-datasets/mnist/')
             for url in manager.urls)
  examples = list(generators['test'])
  assert len(examples) == 200 and examples[0][1]['image'].shape == (28, 28)


def _uncached_split(config, split):
  from bigmodel_jax.data import pipeline
  return pipeline._read_source(pipeline._idx_source(config, split), config, split)


def test_split_cache_lives_in_the_prepared_folder_and_matches_tfds(idx_dir, tmp_path):
  from bigmodel_jax.data import idx_builder, split_cache
  config = _data_config(idx_dir, str(tmp_path))
  first = data.load_datasets(config)  # Prepares, reads through TFDS, writes the cache.
  builder = idx_builder.IdxImages(config='fashion_mnist', data_dir=str(tmp_path))
  folder = split_cache.prepared_dir(str(tmp_path), 'fashion_mnist')
  assert os.path.samefile(folder, str(builder.data_dir))
  for split in ('train', 'test'):
    cached = split_cache.read(folder, split)
    assert cached is not None
    for got, want in zip(cached, _uncached_split(config, split), strict=True):
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(got, want)
  train_images, _ = _uncached_split(config, 'train')
  assert split_cache.read_stats(folder, 'train') == data.pipeline.normalisation(train_images)
  again = data.load_datasets(config)  # From the cache.
  for a, b in ((first.train, again.train), (first.eval, again.eval)):
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
  assert (first.mean, first.std) == (again.mean, again.std)


def test_split_cache_is_rebuilt_when_stale_or_corrupt(idx_dir, tmp_path):
  from bigmodel_jax.data import split_cache
  config = _data_config(idx_dir, str(tmp_path))
  reference = data.load_datasets(config)
  folder = split_cache.prepared_dir(str(tmp_path), 'fashion_mnist')
  file = split_cache.path(folder, 'train')

  info = os.path.join(folder, 'dataset_info.json')
  os.utime(info, ns=(os.stat(info).st_atime_ns, os.stat(info).st_mtime_ns + 10**9))
  assert split_cache.read(folder, 'train') is None  # The prepared dataset changed: stale.
  assert split_cache.read_stats(folder, 'train') is None

  def check_rebuilt():
    datasets = data.load_datasets(config)
    np.testing.assert_array_equal(datasets.train.inputs, reference.train.inputs)
    np.testing.assert_array_equal(datasets.train.targets, reference.train.targets)
    assert split_cache.read(folder, 'train') is not None

  check_rebuilt()
  with open(file, 'r+b') as f:  # Flip bytes inside the images.
    f.seek(os.path.getsize(file) // 2)
    f.write(b'\xff' * 64)
  assert split_cache.read(folder, 'train') is None
  check_rebuilt()
  with open(file, 'r+b') as f:
    f.truncate(os.path.getsize(file) // 3)
  assert split_cache.read(folder, 'train') is None
  check_rebuilt()


def test_preprocess_by_table_is_the_elementwise_arithmetic():
  images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
  want = (images.astype(np.float32) * np.float32(1 / 255) - np.float32(0.286)) / np.float32(0.353)
  got = data.preprocess(images, 0.286, 0.353)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)


def test_a_cached_dataset_is_read_without_importing_tfds(idx_dir, tfds_dir):
  data.load_datasets(_data_config(idx_dir, tfds_dir))  # Prepared and cached.
  code = ('import sys; from bigmodel_jax import data; from configs import default; '
          f'c = default.get_config().data; c.idx_dir, c.tfds_data_dir = {idx_dir!r}, {tfds_dir!r}; '
          'd = data.load_datasets(c); assert len(d.train) == 600; '
          "print('tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == 'False'
