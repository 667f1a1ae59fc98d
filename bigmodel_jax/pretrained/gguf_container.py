"""The GGUF container (llama.cpp's file format): its header parsed, its tensors memory-mapped and
dequantized. `gguf_file` reads models from it and `gguf_tokenizer` tokenizers.

The header is parsed here rather than by `gguf.GGUFReader`, which builds a Python object per
vocabulary entry (~5 s for a 49k-token file); tensor data is memory-mapped, not copied, until it
is dequantized.
"""

import math
import mmap
import os
import struct
from typing import Any, NamedTuple

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from bigmodel_jax.errors import ConfigError

# GGUF metadata value types: struct formats of the scalars; 8 is a string, 9 an array.
_SCALARS = {0: '<B', 1: '<b', 2: '<H', 3: '<h', 4: '<I', 5: '<i', 6: '<f', 7: '<?', 10: '<Q',
            11: '<q', 12: '<d'}
_STRING, _ARRAY = 8, 9


class Tensor(NamedTuple):
  """One tensor of a GGUF file: its type, shape and stored bytes."""
  ggml_type: GGMLQuantizationType
  shape: tuple[int, ...]  # numpy order: rows first ([out, in] for a matrix)
  data: np.ndarray  # uint8, the stored bytes, a view of the memory-mapped file


class File(NamedTuple):
  """A parsed GGUF file: its path, metadata and tensors."""
  path: str
  metadata: dict[str, Any]
  tensors: dict[str, Tensor]


_U64 = struct.Struct('<Q')
# String arrays that `read` has no use for: passed over, their lengths kept instead.
_VOCABULARY_KEYS = ('tokenizer.ggml.tokens', 'tokenizer.ggml.merges')


class _Cursor:
  """Reads little-endian GGUF header values from a buffer, advancing `pos`."""

  def __init__(self, buffer, pos: int, vocabulary: bool):
    self.buffer, self.pos, self.vocabulary = buffer, pos, vocabulary

  def unpack(self, fmt: str) -> tuple:
    values = struct.unpack_from(fmt, self.buffer, self.pos)
    self.pos += struct.calcsize(fmt)
    return values

  def strings(self, count: int, keep: bool = True) -> list[str] | int:
    """`count` strings; unless `keep`, only passed over and `count` returned."""
    buffer, pos, texts = self.buffer, self.pos, []
    length_at = _U64.unpack_from
    for _ in range(count):  # The hot loop of a header: ~100k vocabulary entries.
      (length,) = length_at(buffer, pos)
      if keep:
        texts.append(str(buffer[pos + 8:pos + 8 + length], 'utf-8', 'replace'))
      pos += 8 + length
    if pos > len(buffer):
      raise ValueError('A string runs past the end of the file.')
    self.pos = pos
    return texts if keep else count

  def value(self, value_type: int, key: str = ''):
    if value_type == _STRING:
      return self.strings(1)[0]
    if value_type != _ARRAY:
      return self.unpack(_SCALARS[value_type])[0]
    item_type, count = self.unpack('<IQ')
    if item_type == _STRING:
      return self.strings(count, self.vocabulary or key not in _VOCABULARY_KEYS)
    if item_type == _ARRAY:
      return [self.value(_ARRAY) for _ in range(count)]
    dtype = np.dtype(_SCALARS[item_type].replace('?', 'u1'))
    items = np.frombuffer(self.buffer, dtype, count, self.pos)
    self.pos += count * dtype.itemsize
    return items.astype(bool) if item_type == 7 else items


def _parse_header(buffer, vocabulary: bool) -> tuple[dict, list, int]:
  """(metadata, [(name, shape, ggml type, offset)], start of the tensor data) of a GGUF header."""
  cursor = _Cursor(buffer, 4, vocabulary)  # After the magic, which the caller checked.
  (version,) = cursor.unpack('<I')
  if version not in (2, 3):
    raise ConfigError(f'The file is GGUF version {version}; only versions 2 and 3 (little-endian) '
                      'are supported.')
  tensor_count, kv_count = cursor.unpack('<QQ')
  metadata = {}
  for _ in range(kv_count):
    key = cursor.strings(1)[0]
    metadata[key] = cursor.value(cursor.unpack('<I')[0], key)
  infos = []
  for _ in range(tensor_count):
    name = cursor.strings(1)[0]
    dims = cursor.unpack(f'<{cursor.unpack("<I")[0]}Q')
    ggml_type, offset = cursor.unpack('<IQ')
    infos.append((name, tuple(reversed(dims)), ggml_type, offset))  # ggml lists dims fastest first
  alignment = metadata.get('general.alignment', 32)
  return metadata, infos, -(-cursor.pos // alignment) * alignment


def open_file(path, vocabulary: bool = False) -> File:
  """The metadata and memory-mapped tensors of the GGUF file at `path`; ConfigError if it isn't.

  Unless `vocabulary`, the tokens and merges are not decoded: their counts stand for them.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConfigError(f'No GGUF file at {path!r}: it does not exist or is not a file.')
  try:
    with open(path, 'rb') as f:
      magic = f.read(4)
      buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if magic == b'GGUF' else None
  except OSError as e:
    raise ConfigError(f'{path!r} cannot be read: {e.strerror or e}.') from None
  if buffer is None:
    raise ConfigError(f'{path!r} is not a GGUF file: it does not start with the GGUF magic '
                      'bytes.')
  try:
    metadata, infos, data_start = _parse_header(buffer, vocabulary)
  except ConfigError as e:
    raise ConfigError(f'{path!r}: {e}') from None
  except (struct.error, ValueError, KeyError, TypeError, OverflowError, ZeroDivisionError,
          MemoryError):
    raise ConfigError(f'{path!r} is not a valid GGUF file: its header is truncated or corrupt.'
                      ) from None
  blob = np.frombuffer(buffer, np.uint8)
  tensors = {}
  for name, shape, type_id, offset in infos:
    if type_id not in GGMLQuantizationType._value2member_map_:
      raise ConfigError(f'{path!r}: tensor {name!r} has the unknown ggml type {type_id}.')
    ggml_type = GGMLQuantizationType(type_id)
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    rows, row_length = math.prod(shape[:-1]), shape[-1] if shape else 1
    if row_length % block:
      raise ConfigError(f'{path!r} is corrupt: tensor {name!r} {shape} has rows of '
                        f'{row_length}, not whole {ggml_type.name} blocks of {block}.')
    start, nbytes = data_start + offset, rows * (row_length // block) * type_size
    if start + nbytes > blob.size:
      raise ConfigError(f'{path!r} is truncated or corrupt: tensor {name!r} {shape} of type '
                        f'{ggml_type.name} does not fit in the file.')
    data = blob[start:start + nbytes].reshape(rows, -1) if nbytes else blob[:0]
    tensors[name] = Tensor(ggml_type, shape, data)
  return File(path, metadata, tensors)


def dequantize(tensor: Tensor, name: str) -> np.ndarray:
  """float32 values of a stored tensor, in its numpy shape, in memory of their own."""
  block, type_size = GGML_QUANT_SIZES[tensor.ggml_type]
  data = tensor.data
  if block > 1:
    # Blocks decode independently, and gguf decodes 16 rows per numpy call: rows of up to 256
    # blocks (8k values) keep that in cache with little per-call overhead (2-4x faster).
    blocks = data.size // type_size
    data = data.reshape(-1, math.gcd(blocks, 256) * type_size) if blocks else data
  try:
    values = gguf.quants.dequantize(data, tensor.ggml_type)
  except NotImplementedError:
    raise ConfigError(f'Tensor {name!r} is stored as {tensor.ggml_type.name}, which '
                      'gguf.quants.dequantize cannot decode.') from None
  if tensor.ggml_type == GGMLQuantizationType.F32:
    values = values.copy()  # A view of the memory-mapped file until now; the others are new.
  return values.reshape(tensor.shape)


def get_key(file: File, key: str, default: Any = KeyError) -> Any:
  if key in file.metadata:
    value = file.metadata[key]
    return value.item() if isinstance(value, np.generic) else value
  if default is KeyError:
    raise ConfigError(f'{file.path!r} lacks the metadata key {key!r}, which its model needs.')
  return default



def token_ids(file: File) -> dict[str, int]:
  ids = {}
  for hf_key, gguf_key in (('bos_token_id', 'bos_token_id'), ('eos_token_id', 'eos_token_id'),
                           ('pad_token_id', 'padding_token_id')):
    if (value := get_key(file, f'tokenizer.ggml.{gguf_key}', None)) is not None:
      ids[hf_key] = int(value)
  return ids


