"""A cache of whole image splits kept inside the prepared TFDS dataset's folder.

Reading a split through its TFDS data source decodes every record (60,000 for Fashion-MNIST's
train split: ~2 s on 2 CPU cores, plus importing TFDS); the same arrays from one uncompressed
`.npz` take a few hundredths of a second. TFDS stays the source of truth: the cache holds exactly
what `pipeline.read_split` returned from it (for a train split also the normalisation statistics
`pipeline.normalisation` computes from all of it), and is used only while the prepared folder is
unchanged. Its fingerprint (name, size and mtime of every file TFDS wrote there) is stored in the
cache file; a folder that TFDS prepares again gets new files and so a new fingerprint, and TFDS
replaces the whole folder anyway. A cache that is stale, truncated or corrupt (zip members carry a
CRC-32 that numpy checks on reading) reads as absent and is rewritten from TFDS.
"""

import json
import os
import zipfile

import numpy as np
from absl import logging

from bigmodel_jax.data import idx

CACHE_FORMAT = 1  # Bump when what a cache file holds changes.
PREFIX = 'bigmodel_jax-split-cache-'


def default_data_dir() -> str:
  """TFDS's default data dir ($TFDS_DATA_DIR, else ~/tensorflow_datasets), without TFDS."""
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')


def prepared_dir(data_dir: str | None, name: str) -> str:
  """Where TFDS keeps `idx_builder.IdxImages(config=name)` prepared under `data_dir`."""
  return os.path.join(data_dir or default_data_dir(), idx.BUILDER_NAME, name, idx.BUILDER_VERSION)


def path(folder: str, split: str) -> str:
  return os.path.join(folder, f'{PREFIX}{split}.npz')


def fingerprint(folder: str) -> str | None:
  """What identifies the prepared dataset in `folder`; None if it holds no prepared dataset."""
  try:
    names = sorted(n for n in os.listdir(folder) if not n.startswith(PREFIX))
  except OSError:
    return None
  if 'dataset_info.json' not in names:
    return None
  files = []
  for name in names:
    st = os.stat(os.path.join(folder, name))
    files.append([name, st.st_size, st.st_mtime_ns])
  return json.dumps({'format': CACHE_FORMAT, 'files': files}, separators=(',', ':'))


def _load(folder: str, split: str, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
  file = path(folder, split)
  if not os.path.exists(file):
    return None
  expected = fingerprint(folder)
  try:
    with np.load(file, allow_pickle=False) as arrays:
      if expected is None or str(arrays['fingerprint']) != expected:
        return None
      return {name: arrays[name] for name in names}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    logging.warning('Ignoring the unreadable split cache %s (%s); rebuilding it.', file, e)
    return None


def read(folder: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(images [n, h, w, c] uint8, labels [n] int32) of `split`, or None if not cached or stale."""
  arrays = _load(folder, split, ('images', 'labels'))
  if arrays is None:
    return None
  images, labels = arrays['images'], arrays['labels']
  if (images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int32
      or labels.shape != images.shape[:1]):
    return None
  return images, labels


def read_stats(folder: str, split: str) -> tuple[float, float] | None:
  """The (mean, std) stored with `split` by `write`, or None (not stored, stale or unreadable)."""
  arrays = _load(folder, split, ('mean_std',))
  if arrays is None or arrays['mean_std'].shape != (2,):
    return None
  mean, std = arrays['mean_std'].tolist()
  return float(mean), float(std)


def write(folder: str, split: str, images: np.ndarray, labels: np.ndarray,
          stats: tuple[float, float] | None = None) -> None:
  """Caches a split read from the prepared dataset in `folder`, with the (mean, std) `stats` of
  all of it if given (best effort: a folder we may not write to just stays uncached)."""
  stamp = fingerprint(folder)
  if stamp is None:
    return
  file = path(folder, split)
  tmp = f'{file}.tmp{os.getpid()}'
  extra = {} if stats is None else {'mean_std': np.array(stats, np.float64)}
  try:
    with open(tmp, 'wb') as f:
      np.savez(f, images=images, labels=labels, fingerprint=np.array(stamp), **extra)
    os.replace(tmp, file)  # Readers see the old file or the whole new one.
  except OSError as e:
    logging.info('Not caching split %r in %s: %s', split, folder, e)
    if os.path.exists(tmp):
      os.remove(tmp)
