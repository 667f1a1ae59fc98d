"""Reading and writing the IDX format of (Fashion-)MNIST (http://yann.lecun.com/exdb/mnist/)."""

import gzip
import os
import zlib

import numpy as np

from bigmodel_jax.errors import DataError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
SPLIT_PREFIXES = {'train': 'train', 'test': 't10k'}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# Name and version of `idx_builder.IdxImages` (TFDS derives the name from the class): here so
# that the split cache finds a prepared dataset's folder without importing TFDS.
BUILDER_NAME = 'idx_images'
BUILDER_VERSION = '1.0.0'


def _open(path: str):
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def find_file(folder: str, prefix: str, kind: str) -> str:
  """Path of e.g. `train-images-idx3-ubyte[.gz]` in `folder`; DataError if absent."""
  stem = f'{prefix}-{kind}-idx{3 if kind == "images" else 1}-ubyte'
  for name in (stem + '.gz', stem):
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return path
  raise DataError(
      f'{stem}.gz not found in {folder!r}: point config.data.idx_dir at a folder holding the four '
      'IDX files (on Debian/Ubuntu `apt-get install dataset-fashion-mnist` puts Fashion-MNIST in '
      "/usr/share/datasets/fashion-mnist), or set it to '' to download them.")


def read_idx(path: str, magic: int) -> np.ndarray:
  """Reads an IDX file of unsigned bytes into an array of its declared shape."""
  try:
    with _open(path) as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise DataError(f'{path} cannot be read ({type(e).__name__}: {e}): it is truncated or '
                    'damaged; replace it with an intact copy.') from None
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(data) < header or int.from_bytes(data[:4], 'big') != magic:
    raise DataError(f'{path} is not an IDX file with magic number {magic}.')
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
  size = int(np.prod(shape))
  if len(data) - header != size:
    raise DataError(f'{path} declares shape {shape} but holds {len(data) - header} bytes of data.')
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def split_paths(folder: str, split: str) -> tuple[str, str]:
  """(images path, labels path) of 'train' or 'test' in `folder`; DataError if absent."""
  prefix = SPLIT_PREFIXES[split]
  return find_file(folder, prefix, 'images'), find_file(folder, prefix, 'labels')


def read_pair(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  """Images [n, rows, cols] uint8 and labels [n] uint8 from an IDX images/labels pair."""
  images = read_idx(images_path, IMAGES_MAGIC)
  labels = read_idx(labels_path, LABELS_MAGIC)
  if len(images) != len(labels):
    raise DataError(f'{images_path} holds {len(images)} images but {labels_path} '
                    f'{len(labels)} labels.')
  return images, labels


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes uint8 `array` as an IDX file (gzipped if `path` ends with .gz)."""
  array = np.asarray(array, np.uint8)
  header = (0x0800 + array.ndim).to_bytes(4, 'big') + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())


def write_split(folder: str, split: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes a split in the file layout `read_split` expects (used to make test data)."""
  os.makedirs(folder, exist_ok=True)
  prefix = SPLIT_PREFIXES[split]
  write_idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte.gz'), images)
  write_idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte.gz'), labels)
