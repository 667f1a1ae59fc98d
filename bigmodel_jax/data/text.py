"""Character-level text (Tiny Shakespeare) through a TFDS builder that needs no TensorFlow.

TFDS's own `tiny_shakespeare` builder stores a `Text` feature, and preparing it needs TensorFlow
(checked: without it, preparation fails) - 1.4 GB for reading one 1 MB file. `CharText` keeps
TFDS's download manager (checksum-verified, `manual_dir` for offline copies: the file in
`../shared/data/tiny_shakespeare` is byte-identical to TFDS's download) and its split rule
(first 90% of the characters train, next 5% validation, last 5% test, as TFDS's builder), and
stores each split's bytes as a uint8 tensor in array_record. The vocabulary is the sorted set of
characters of the whole file (65), as in nanoGPT's character recipe.

Examples for the training loop are windows of `seq_len + 1` characters: inputs are the first
`seq_len`, targets the last `seq_len` (next-character prediction). The train split holds every
overlapping window (a strided view, no copy), so an epoch is a permutation of all start
positions; evaluation uses the non-overlapping windows of its split.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from bigmodel_jax import logs
from bigmodel_jax.errors import DataError

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
FILE_NAME = 'input.txt'
SPLITS = ('train', 'validation', 'test')


def split_text(text: bytes) -> dict[str, bytes]:
  """TFDS's tiny_shakespeare rule: 90% train, then half of the rest validation, half test."""
  i = int(len(text) * 0.9)
  train, rest = text[:i], text[i:]
  j = int(len(rest) * 0.5)
  return {'train': train, 'validation': rest[:j], 'test': rest[j:]}


class CharText(tfds.core.GeneratorBasedBuilder):
  """Tiny Shakespeare as raw bytes, one example per split."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Raw bytes in array_record, no TensorFlow needed.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='tiny_shakespeare')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Put {FILE_NAME} (Tiny Shakespeare) in the manual folder.'

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Tiny Shakespeare split 90/5/5 by characters, stored as uint8 bytes.',
        features=tfds.features.FeaturesDict({
            'bytes': tfds.features.Tensor(shape=(None,), dtype=np.uint8)}),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = manual_dir(dl_manager)
    if manual is not None and (manual / FILE_NAME).exists():
      path = str(manual / FILE_NAME)
    else:
      path = str(dl_manager.download(URL))
    with open(path, 'rb') as f:
      parts = split_text(f.read())
    return {name: self._generate_examples(name, part) for name, part in parts.items()}

  def _generate_examples(self, name: str, part: bytes):
    yield name, {'bytes': np.frombuffer(part, np.uint8)}


def manual_dir(dl_manager: tfds.download.DownloadManager):
  """The manual folder, or None: TFDS raises AssertionError for one that is missing or empty,
  which here only means 'download instead'."""
  try:
    return dl_manager.manual_dir
  except AssertionError:
    return None


def reachable(url: str, timeout_s: float = 10) -> str | None:
  """None if `url` answers, else why not: a quick probe, since TFDS's downloader retries an
  unreachable host for minutes before it gives up."""
  import urllib.request
  try:
    with urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout_s):
      return None
  except Exception as e:  # noqa: BLE001  (URLError, timeouts, HTTP errors, bad proxies...)
    return f'{type(e).__name__}: {" ".join(str(e).split())[:200]}'


def _offline(why: str) -> DataError:
  return DataError(f"Could not download Tiny Shakespeare's {FILE_NAME} from {URL} ({why}; "
                   'offline?): put that file in a folder and set --config.data.text_dir=FOLDER.')


def _prepare(builder: CharText, text_dir: str) -> None:
  """Prepares the dataset from `text_dir`'s input.txt, or downloads it ('')."""
  if text_dir and not os.path.isfile(os.path.join(text_dir, FILE_NAME)):
    raise DataError(f'config.data.text_dir={text_dir!r} holds no {FILE_NAME}: point it at the '
                    "folder of Tiny Shakespeare's input.txt, or set it to '' to download it.")
  why = None if text_dir else reachable(URL)
  if why is not None:
    raise _offline(why)
  logs.say(f'Preparing tiny_shakespeare from {text_dir or "its download URL"} into '
           f'{builder.data_dir} (once)')
  try:
    with logs.without_prints():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=text_dir or None),
          file_format='array_record')
  except DataError:
    raise
  except Exception as e:  # noqa: BLE001  (TFDS's download errors have many types)
    if not text_dir:
      raise _offline(type(e).__name__) from e
    raise DataError(f'Preparing tiny_shakespeare from {text_dir} failed '
                    f'({type(e).__name__}: {" ".join(str(e).split())[:300]}).') from e


def read_text_splits(text_dir: str, data_dir: str | None) -> dict[str, bytes]:
  """The three splits' bytes, preparing the TFDS dataset first if needed.

  Args:
    text_dir: folder holding input.txt, or '' to download it.
    data_dir: TFDS data dir (None = TFDS's default).
  """
  builder = CharText(data_dir=data_dir)
  if not builder.is_prepared():
    _prepare(builder, text_dir)
  out = {}
  for name in SPLITS:
    source = builder.as_data_source(name)
    out[name] = bytes(np.asarray(source[0]['bytes'], np.uint8))
  return out


def windows(ids: np.ndarray, seq_len: int, *, overlapping: bool) -> tuple[np.ndarray, np.ndarray]:
  """(inputs [n, seq_len], targets [n, seq_len]) int32 from a token sequence."""
  if len(ids) < seq_len + 1:
    raise DataError(f'A split of {len(ids)} tokens is shorter than one window of '
                    f'{seq_len + 1}; lower config.data.seq_len.')
  view = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)
  if not overlapping:  # Windows starting every seq_len tokens (each shares one with the next).
    view = view[::seq_len]
  return view[:, :-1], view[:, 1:]


class Vocabulary:
  """Characters <-> ids (sorted characters of the corpus)."""

  def __init__(self, chars: str):
    self.chars = chars
    self._ids = np.full(256, -1, np.int32)
    for i, c in enumerate(chars.encode('latin-1')):
      self._ids[c] = i

  def __len__(self) -> int:
    return len(self.chars)

  def encode(self, data: bytes | str) -> np.ndarray:
    raw = np.frombuffer(data.encode('latin-1') if isinstance(data, str) else data, np.uint8)
    ids = self._ids[raw]
    if (ids < 0).any():
      raise ValueError(f'Characters outside the vocabulary: {set(bytes(raw[ids < 0]))!r}')
    return ids

  def decode(self, ids) -> str:
    return ''.join(self.chars[int(i)] for i in np.ravel(ids))
