"""Input pipeline: a TFDS dataset materialised once into host numpy arrays, then batches.

(Fashion-)MNIST fits in memory many times over, so each split is read once from its TFDS data
source (array_record, random access), preprocessed once, and every epoch only draws a permutation
and gathers batches by fancy indexing. Measured on 2 CPU cores this serves far more examples per
second than the train step consumes (bench/input_pipeline.py). The pipeline never touches
devices: it yields numpy arrays and the training loop decides where they go.

Splits of our IDX datasets are cached beside the prepared TFDS files (`split_cache`), so a run
whose dataset is prepared reads two arrays and never imports TFDS; TFDS (imported only when a
dataset must be read through it) stays the source of truth.
"""

import dataclasses
import os
from collections.abc import Iterator

import ml_collections
import numpy as np

from bigmodel_jax import logs
from bigmodel_jax.data import idx, split_cache
from bigmodel_jax.errors import DataError

IMAGE_DATASETS = ('mnist', 'fashion_mnist')
IMAGE_SHAPE = idx.IMAGE_SHAPE  # Every image dataset's (height, width).
TEXT_DATASETS = ('tiny_shakespeare',)
DATASETS = IMAGE_DATASETS + TEXT_DATASETS
SOURCES = ('idx', 'tfds')


@dataclasses.dataclass(frozen=True)
class Split:
  """One split, preprocessed: inputs and targets, indexed by example.

  For images: `inputs` [n, height, width, channels] float32 and `targets` [n] int32 class labels.
  For text: `inputs` are token windows [n, seq_len] int32 and `targets` the next tokens
  [n, seq_len].
  """
  inputs: np.ndarray
  targets: np.ndarray

  def __len__(self) -> int:
    return len(self.targets)


@dataclasses.dataclass(frozen=True)
class Datasets:
  """Everything training needs from the data.

  Attributes:
    train: the examples trained on.
    eval: the examples evaluated each epoch (the test split, or a validation hold-out).
    test: the test split when `eval` is a validation hold-out, else None.
    num_classes: number of label classes.
    mean, std: the normalisation applied (0 and 1 when off), measured on `train`.
    vocab: text only: the `text.Vocabulary` (num_classes is its size).
  """
  train: Split
  eval: Split
  test: Split | None
  num_classes: int
  mean: float
  std: float
  vocab: object = None


def _data_dir(data_config: ml_collections.ConfigDict) -> str | None:
  return os.path.expanduser(data_config.tfds_data_dir) if data_config.tfds_data_dir else None


def _idx_source(data_config: ml_collections.ConfigDict, split: str):
  import tensorflow_datasets as tfds  # Late, as everywhere here: ~0.3 s to import.

  from bigmodel_jax.data import idx_builder, text
  builder = idx_builder.IdxImages(config=data_config.name, data_dir=_data_dir(data_config))
  if not builder.is_prepared():
    if data_config.idx_dir:
      if not os.path.isdir(data_config.idx_dir):
        raise DataError(
            f'config.data.idx_dir={data_config.idx_dir!r} is not a folder: point it at the four '
            f'{data_config.name} IDX files (for Fashion-MNIST on Debian/Ubuntu: apt-get install '
            "dataset-fashion-mnist), or set it to '' to download them.")
      for name in idx.SPLIT_PREFIXES:  # All four there (TFDS would try to download instead).
        idx.split_paths(data_config.idx_dir, name)
      logs.say(f'Preparing {data_config.name} from {data_config.idx_dir} into '
               f'{builder.data_dir} (once)')
      download_config = tfds.download.DownloadConfig(manual_dir=data_config.idx_dir)
    else:
      logs.say(f"Downloading {data_config.name}'s IDX files (config.data.idx_dir is ''); "
               'offline? point config.data.idx_dir at a folder holding them.')
      download_config = tfds.download.DownloadConfig()
      url = idx_builder.url(data_config.name, 'train', 'labels')
      why = text.reachable(url)
      if why is not None:
        raise DataError(f"Could not download {data_config.name}'s IDX files from {url} ({why}; "
                        'offline?): put the four files in a folder and set '
                        '--config.data.idx_dir=FOLDER.')
    try:
      with logs.without_prints():
        builder.download_and_prepare(download_config=download_config, file_format='array_record')
    except DataError:
      raise
    except Exception as e:  # noqa: BLE001  (TFDS's download errors have many types)
      if data_config.idx_dir:
        raise DataError(f'Preparing {data_config.name} from {data_config.idx_dir} failed '
                        f'({type(e).__name__}: {" ".join(str(e).split())[:300]}).') from e
      raise DataError(f"Could not download {data_config.name}'s IDX files "
                      f'({type(e).__name__}; offline?): put the four files in a folder and set '
                      '--config.data.idx_dir=FOLDER.') from e
  try:
    return builder.as_data_source(split)
  except Exception as e:  # noqa: BLE001  (a damaged dataset_info.json or missing files)
    raise DataError(f'The prepared {data_config.name} dataset in {builder.data_dir} does not '
                    f'open ({type(e).__name__}): delete that folder and run again to rebuild '
                    'it.') from e


def _tfds_source(data_config: ml_collections.ConfigDict, split: str):
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(data_config.name, split=split, data_dir=_data_dir(data_config),
                            download=True)
  except ModuleNotFoundError as e:
    raise DataError(
        f"Preparing TFDS's own {data_config.name!r} needs TensorFlow ({e}): pip install "
        "tensorflow-cpu, or use config.data.source='idx', which needs none.") from e


def read_split(data_config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split: images [n, h, w, c] uint8 and labels [n] int32.

  Source 'idx' reads the split cache when it matches the prepared dataset, else TFDS (preparing
  the dataset first if needed), and then caches what TFDS gave.
  """
  if data_config.source == 'idx':
    folder = _cache_dir(data_config)
    cached = split_cache.read(folder, split)
    if cached is not None:
      return cached
    images, labels = _read_source(_idx_source(data_config, split), data_config, split)
    split_cache.write(folder, split, images, labels,
                      stats=normalisation(images) if split == 'train' else None)
    return images, labels
  return _read_source(_tfds_source(data_config, split), data_config, split)


def _cache_dir(data_config: ml_collections.ConfigDict) -> str:
  return split_cache.prepared_dir(_data_dir(data_config), data_config.name)


def _read_source(source, data_config: ml_collections.ConfigDict,
                 split: str) -> tuple[np.ndarray, np.ndarray]:
  n = len(source)
  if n == 0:
    raise DataError(f'{data_config.name} split {split!r} is empty at {_data_dir(data_config)}: '
                    'delete that prepared dataset folder and run again to rebuild it.')
  try:
    try:
      records = source.__getitems__(list(range(n)))  # One batched read: ~20x faster.
    except TypeError:  # tfds.testing.mock_data's sources break __getitems__ (tfds 4.9.10).
      records = [source[i] for i in range(n)]
    images = np.stack([r['image'] for r in records])
    labels = np.asarray([r['label'] for r in records], np.int32)
  except Exception as e:  # noqa: BLE001  (array_record / TFDS decoding errors of many kinds)
    raise DataError(f'The prepared {data_config.name} split {split!r} in '
                    f'{_cache_dir(data_config)} does not read ({type(e).__name__}): it is '
                    'damaged; delete that prepared dataset folder and run again to rebuild '
                    'it.') from e
  if images.ndim == 3:
    images = images[..., None]
  return images, labels


def normalisation(images: np.ndarray) -> tuple[float, float]:
  """(mean, std) of uint8 `images` scaled to [0, 1], in float32 as numpy computes them."""
  scaled = images.astype(np.float32) / 255
  return float(scaled.mean()), float(scaled.std())


def preprocess(images: np.ndarray, mean: float, std: float) -> np.ndarray:
  """uint8 images -> float32 scaled to [0, 1], then (x - mean) / std."""
  if images.dtype != np.uint8:
    x = images.astype(np.float32) * np.float32(1 / 255)
    return (x - np.float32(mean)) / np.float32(std)
  # The same float32 operations on the 256 possible values, then one gather: bit for bit the
  # elementwise result, ~3x faster on 47M pixels.
  table = (np.arange(256, dtype=np.float32) * np.float32(1 / 255) - np.float32(mean)) / np.float32(
      std)
  return table[images]


def load_text_datasets(data_config: ml_collections.ConfigDict) -> Datasets:
  """Character windows of the text dataset: train (every window), validation (eval) and test."""
  from bigmodel_jax.data import text  # Late: it imports TFDS.
  splits = text.read_text_splits(os.path.expanduser(data_config.text_dir),
                                 _data_dir(data_config))
  vocab = text.Vocabulary(''.join(sorted(set(b''.join(splits.values()).decode('latin-1')))))
  ids = {name: vocab.encode(part) for name, part in splits.items()}
  if data_config.max_train_examples > 0:  # Characters here, not windows.
    ids['train'] = ids['train'][:data_config.max_train_examples + data_config.seq_len]
  make = lambda name, overlapping: Split(*text.windows(ids[name], data_config.seq_len,
                                                       overlapping=overlapping))
  eval_split = make('validation', False)
  if data_config.max_eval_examples > 0:
    eval_split = Split(eval_split.inputs[:data_config.max_eval_examples],
                       eval_split.targets[:data_config.max_eval_examples])
  return Datasets(train=make('train', True), eval=eval_split, test=make('test', False),
                  num_classes=len(vocab), mean=0.0, std=1.0, vocab=vocab)


def load_datasets(data_config: ml_collections.ConfigDict) -> Datasets:
  """Reads, splits and preprocesses the configured dataset (see configs/default.py)."""
  if data_config.name in TEXT_DATASETS:
    return load_text_datasets(data_config)
  train_images, train_labels = read_split(data_config, 'train')
  test_images, test_labels = read_split(data_config, 'test')
  if data_config.max_train_examples > 0:
    train_images = train_images[:data_config.max_train_examples]
    train_labels = train_labels[:data_config.max_train_examples]
  test = None
  if data_config.validation_size > 0:
    if data_config.validation_size >= len(train_labels):
      raise DataError(f'config.data.validation_size={data_config.validation_size} leaves no '
                      f'training examples out of {len(train_labels)}.')
    cut = len(train_labels) - data_config.validation_size
    eval_images, eval_labels = train_images[cut:], train_labels[cut:]
    train_images, train_labels = train_images[:cut], train_labels[:cut]
  else:
    eval_images, eval_labels = test_images, test_labels
  if data_config.max_eval_examples > 0:
    eval_images = eval_images[:data_config.max_eval_examples]
    eval_labels = eval_labels[:data_config.max_eval_examples]

  mean, std = 0.0, 1.0
  if data_config.normalize:
    whole_train = (data_config.source == 'idx' and data_config.max_train_examples <= 0
                   and data_config.validation_size <= 0)
    stats = split_cache.read_stats(_cache_dir(data_config), 'train') if whole_train else None
    mean, std = stats if stats is not None else normalisation(train_images)
  make = lambda im, lb: Split(preprocess(im, mean, std), lb)
  if data_config.validation_size > 0:
    test = make(test_images, test_labels)
  return Datasets(train=make(train_images, train_labels), eval=make(eval_images, eval_labels),
                  test=test, num_classes=idx.NUM_CLASSES, mean=mean, std=std)


def epoch_permutation(num_examples: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  """The order of examples in `epoch`: a pure function of (seed, epoch), so resumes repeat it."""
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_chunks(split: Split, *, batch_size: int, steps_per_call: int, seed: int, epoch: int,
                 shuffle: bool, start_step: int = 0,
                 rows: slice | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """Yields (step in epoch, chunk) for one epoch from `start_step` on.

  `batch_size` is the global batch. With `rows` (on several hosts: `parallel.Layout.local_rows`)
  only those rows of every global batch are gathered, so each host reads just its share while
  all hosts agree on the global order.

  A chunk stacks up to `steps_per_call` consecutive batches: {'inputs': [k, batch, h, w, c],
  'targets': [k, batch]}. Chunks end at multiples of `steps_per_call` and at the epoch's end, so a
  run resumed at a chunk boundary sees exactly the chunks of an uninterrupted run. The last
  partial batch of an epoch is dropped.
  """
  steps = len(split) // batch_size
  order = epoch_permutation(len(split), seed=seed, epoch=epoch, shuffle=shuffle)
  rows = slice(0, batch_size) if rows is None else rows
  step = start_step
  while step < steps:
    k = min(steps_per_call - step % steps_per_call, steps - step)
    take = order[step * batch_size:(step + k) * batch_size].reshape(k, batch_size)[:, rows]
    yield step, {'inputs': split.inputs[take], 'targets': split.targets[take]}
    step += k


def eval_batches(split: Split, batch_size: int,
                 rows: slice | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields every example once in global batches of `batch_size`; the last is padded, with
  'mask' 0 on the padding. With `rows`, only those rows of each global batch (this host's)."""
  n = len(split)
  rows = slice(0, batch_size) if rows is None else rows
  for start in range(0, n, batch_size):
    index = np.arange(start, start + batch_size)[rows]
    valid = index < n
    index = np.where(valid, index, 0)
    yield {'inputs': split.inputs[index], 'targets': split.targets[index],
           'mask': valid.astype(np.float32)}
