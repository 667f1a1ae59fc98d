"""GGUF files (llama.cpp's format) read into, and written from, Hugging Face transformers' terms.

    hf_config, state_dict = gguf_file.read('SmolLM2-135M-Instruct.Q4_1.gguf')
    # hf_config: a transformers config.json dict; state_dict: transformers' names, float32
    tok = gguf_file.tokenizer('SmolLM2-135M-Instruct.Q4_1.gguf')
    ids = tok.tokenizer.encode('The capital of France is').ids

`read` gives what `transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`
would hold, as numpy: llama.cpp's tensor names mapped back, its q/k row order for rotary
embeddings undone (llama), GPT-2's projections transposed back to `Conv1D` [in, out], every
tensor dequantized to float32 with `gguf.quants.dequantize`. Architectures: llama (Llama 2/3,
SmolLM and the other models llama.cpp files as llama), qwen2, gpt2.

`tokenizer` rebuilds a byte-level BPE `tokenizers.Tokenizer` from the metadata (tokens, merges,
token types, the pre-tokenizer named by `tokenizer.ggml.pre`), without transformers.

`gguf_writer.write` does what llama.cpp's `convert_hf_to_gguf.py` does for these architectures
(names, the q/k permutation, metadata, quantization by `gguf.quants.quantize`); tests build
files with it.

The header is parsed here rather than by `gguf.GGUFReader`, which builds a Python object per
vocabulary entry (~5 s for a 49k-token file); tensor data is memory-mapped, not copied, until it
is dequantized.
"""

import functools
import math
import mmap
import os
import re
import struct
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import gguf
import numpy as np
from absl import logging
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, TokenType

from bigmodel_jax.errors import ConfigError

SUPPORTED_ARCHITECTURES = ('llama', 'qwen2', 'gpt2')

# GGUF metadata value types: struct formats of the scalars; 8 is a string, 9 an array.
_SCALARS = {0: '<B', 1: '<b', 2: '<H', 3: '<h', 4: '<I', 5: '<i', 6: '<f', 7: '<?', 10: '<Q',
            11: '<q', 12: '<d'}
_STRING, _ARRAY = 8, 9
# Plain ints: comparing numpy token types with the IntEnum members is slow over 100k tokens.
_NORMAL, _CONTROL, _USER_DEFINED = (int(TokenType.NORMAL), int(TokenType.CONTROL),
                                    int(TokenType.USER_DEFINED))

# transformers' names of llama.cpp's tensors: whole-model ones, then those of block i.
_LLAMA_NAMES = {'token_embd': 'model.embed_tokens', 'output_norm': 'model.norm',
                'output': 'lm_head'}
_LLAMA_BLOCK = {'attn_norm': 'input_layernorm', 'attn_q': 'self_attn.q_proj',
                'attn_k': 'self_attn.k_proj', 'attn_v': 'self_attn.v_proj',
                'attn_output': 'self_attn.o_proj', 'ffn_norm': 'post_attention_layernorm',
                'ffn_gate': 'mlp.gate_proj', 'ffn_up': 'mlp.up_proj', 'ffn_down': 'mlp.down_proj'}
_GPT2_NAMES = {'token_embd': 'transformer.wte', 'position_embd': 'transformer.wpe',
               'output_norm': 'transformer.ln_f', 'output': 'lm_head'}
_GPT2_BLOCK = {'attn_norm': 'ln_1', 'attn_qkv': 'attn.c_attn', 'attn_output': 'attn.c_proj',
               'ffn_norm': 'ln_2', 'ffn_up': 'mlp.c_fc', 'ffn_down': 'mlp.c_proj'}
_BLOCK_PREFIX = {'llama': 'model.layers', 'qwen2': 'model.layers', 'gpt2': 'transformer.h'}
# GPT-2's Conv1D weights are [in, out]; llama.cpp stores every matrix [out, in].
_CONV1D = ('attn_qkv', 'attn_output', 'ffn_up', 'ffn_down')

# The text splits of llama.cpp's pre-tokenizer types (llama-vocab.cpp) that GPT-2's regex lacks.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {'gpt2': None, 'default': None, 'smollm': 'digits', 'qwen2': _QWEN2_SPLIT,
               'deepseek-r1-qwen': _QWEN2_SPLIT, 'llama-bpe': _LLAMA3_SPLIT,
               'llama3': _LLAMA3_SPLIT, 'llama-v3': _LLAMA3_SPLIT, 'smaug-bpe': _LLAMA3_SPLIT}
# llama.cpp's BPE takes a word whole when the vocabulary has it, before any merge, for these.
_IGNORE_MERGES = ('llama-bpe', 'llama3', 'llama-v3', 'smaug-bpe')


class _Tensor(NamedTuple):
  ggml_type: GGMLQuantizationType
  shape: tuple[int, ...]  # numpy order: rows first ([out, in] for a matrix)
  data: np.ndarray  # uint8, the stored bytes, a view of the memory-mapped file


class _File(NamedTuple):
  path: str
  metadata: dict[str, Any]
  tensors: dict[str, _Tensor]


class GGUFTokenizer(NamedTuple):
  """A GGUF file's tokenizer.

  Attributes:
    tokenizer: the `tokenizers.Tokenizer`; `encode` adds BOS / EOS as the file says to.
    bos_token_id: the file's `tokenizer.ggml.bos_token_id`, or None.
    eos_token_id: the file's `tokenizer.ggml.eos_token_id`, or None.
    add_bos: whether llama.cpp prepends BOS to a prompt (`tokenizer.ggml.add_bos_token`).
    add_eos: whether it appends EOS (`tokenizer.ggml.add_eos_token`).
  """
  tokenizer: Any
  bos_token_id: int | None
  eos_token_id: int | None
  add_bos: bool
  add_eos: bool


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


def _open(path, vocabulary: bool = False) -> _File:
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
    tensors[name] = _Tensor(ggml_type, shape, data)
  return _File(path, metadata, tensors)


def _dequantize(tensor: _Tensor, name: str) -> np.ndarray:
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


def _key(file: _File, key: str, default: Any = KeyError) -> Any:
  if key in file.metadata:
    value = file.metadata[key]
    return value.item() if isinstance(value, np.generic) else value
  if default is KeyError:
    raise ConfigError(f'{file.path!r} lacks the metadata key {key!r}, which its model needs.')
  return default


def _hf_name(arch: str, name: str) -> str | None:
  """transformers' name of llama.cpp's tensor `name` (None for those it has no tensor for)."""
  names, block = (_GPT2_NAMES, _GPT2_BLOCK) if arch == 'gpt2' else (_LLAMA_NAMES, _LLAMA_BLOCK)
  base, _, suffix = name.rpartition('.')
  if match := re.fullmatch(r'blk\.(\d+)\.(\w+)', base):
    layer, part = match.groups()
    return (f'{_BLOCK_PREFIX[arch]}.{layer}.{block[part]}.{suffix}' if part in block else None)
  return f'{names[base]}.{suffix}' if base in names else None


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
  """The inverse of `gguf_writer._permute`: llama.cpp's q/k rows back in transformers' order."""
  return (weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:])
          .swapaxes(1, 2).reshape(weight.shape))


def _check_architecture(arch: Any, where: str) -> None:
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ConfigError(f'{where} is architecture {arch!r}, which is not supported; supported '
                      f'architectures: {", ".join(SUPPORTED_ARCHITECTURES)}.')


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
  """The model in a GGUF file, in transformers' terms.

  Args:
    path: a .gguf file of a llama, qwen2 or gpt2 model.

  Returns:
    (hf_config, state_dict): `hf_config` as the model's transformers config.json would have it;
    `state_dict` maps transformers' parameter names to float32 numpy arrays in transformers'
    layouts (Linear weights [out, in], GPT-2's Conv1D [in, out]). `lm_head.weight` is absent
    when the output projection is the embedding (`tie_word_embeddings`).

  Raises:
    ConfigError: the file is missing, not a GGUF file, truncated, or holds an unsupported
      architecture or tensor type.
  """
  file = _open(path)
  arch = _key(file, 'general.architecture')
  _check_architecture(arch, f'The model in {file.path!r}')
  hf_config = _gpt2_config(file) if arch == 'gpt2' else _llama_config(file, arch)
  tensors = dict(file.tensors)
  tensors.pop('rope_freqs.weight', None)  # Consumed by the config as llama3 rope scaling.
  if hf_config['tie_word_embeddings']:
    tensors.pop('output.weight', None)  # GPT-2 files carry a copy of the embedding.
  names = {name: _hf_name(arch, name) for name in tensors}
  for name in tensors:
    if names[name] is None:
      raise ConfigError(f'{file.path!r} holds the tensor {name!r}, which a transformers {arch} '
                        'model has no parameter for.')
  heads = {'attn_q': hf_config.get('num_attention_heads'),
           'attn_k': hf_config.get('num_key_value_heads')}

  def convert(name):
    values = _dequantize(tensors[name], name)
    part = name.split('.')[-2]
    if arch == 'llama' and part in heads:
      values = _unpermute(values, heads[part])
    elif arch == 'gpt2' and part in _CONV1D and values.ndim == 2:
      values = np.ascontiguousarray(values.T)
    return names[name], values

  # numpy releases the GIL in the dequantizing arithmetic, so tensors decode in parallel.
  with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    state_dict = dict(pool.map(convert, sorted(tensors, key=lambda n: -tensors[n].data.size)))
  return hf_config, {names[name]: state_dict[names[name]] for name in tensors}  # File order.


def _token_ids(file: _File) -> dict[str, int]:
  ids = {}
  for hf_key, gguf_key in (('bos_token_id', 'bos_token_id'), ('eos_token_id', 'eos_token_id'),
                           ('pad_token_id', 'padding_token_id')):
    if (value := _key(file, f'tokenizer.ggml.{gguf_key}', None)) is not None:
      ids[hf_key] = int(value)
  return ids


def _llama_config(file: _File, arch: str) -> dict:
  """transformers' LlamaConfig / Qwen2Config dict from llama.cpp's `{arch}.*` metadata."""
  tensors = file.tensors
  for name in ('token_embd.weight', 'blk.0.attn_q.weight'):
    if name not in tensors:
      raise ConfigError(f'{file.path!r} lacks the tensor {name!r} that every {arch} model has.')
  heads = _key(file, f'{arch}.attention.head_count')
  head_dim = _key(file, f'{arch}.attention.key_length', tensors['blk.0.attn_q.weight'].shape[0]
                  // heads)
  theta = float(_key(file, f'{arch}.rope.freq_base', 10000.0))
  rope_freqs = tensors.get('rope_freqs.weight')
  if rope_freqs is not None:
    rope_freqs = _dequantize(rope_freqs, 'rope_freqs.weight')
  config = {
      'architectures': ['LlamaForCausalLM' if arch == 'llama' else 'Qwen2ForCausalLM'],
      'model_type': arch,
      'vocab_size': tensors['token_embd.weight'].shape[0],
      'hidden_size': _key(file, f'{arch}.embedding_length'),
      'intermediate_size': _key(file, f'{arch}.feed_forward_length'),
      'num_hidden_layers': _key(file, f'{arch}.block_count'),
      'num_attention_heads': heads,
      'num_key_value_heads': _key(file, f'{arch}.attention.head_count_kv', heads),
      'head_dim': head_dim,
      'hidden_act': 'silu',
      'max_position_embeddings': _key(file, f'{arch}.context_length'),
      'rms_norm_eps': float(_key(file, f'{arch}.attention.layer_norm_rms_epsilon')),
      'rope_theta': theta,
      'rope_scaling': _rope_scaling(file, arch, rope_freqs, head_dim, theta),
      'tie_word_embeddings': 'output.weight' not in tensors,
      **_token_ids(file),
  }
  if arch == 'llama':
    config['attention_bias'] = 'blk.0.attn_q.bias' in tensors
    config['mlp_bias'] = 'blk.0.ffn_up.bias' in tensors
  return config


def _rope_scaling(file: _File, arch: str, rope_freqs, head_dim: int, theta: float) -> dict | None:
  """transformers' rope_scaling from llama.cpp's `rope.scaling.*` keys or `rope_freqs` tensor."""
  if rope_freqs is not None:
    return _llama3_scaling(file, rope_freqs, head_dim, theta)
  kind = _key(file, f'{arch}.rope.scaling.type', None)
  if kind in (None, 'none'):
    factor = _key(file, f'{arch}.rope.scale_linear', None)  # Files from before rope.scaling.*.
    return {'rope_type': 'linear', 'factor': float(factor)} if factor else None
  factor = float(_key(file, f'{arch}.rope.scaling.factor'))
  if kind == 'linear':
    return {'rope_type': 'linear', 'factor': factor}
  if kind == 'yarn':
    return {'rope_type': 'yarn', 'factor': factor, 'original_max_position_embeddings':
            _key(file, f'{arch}.rope.scaling.original_context_length')}
  raise ConfigError(f'{file.path!r} uses rope scaling {kind!r}; only linear, yarn and llama3 '
                    '(a rope_freqs tensor) are supported.')


def _llama3_factors(head_dim: int, theta: float, scaling: Mapping) -> np.ndarray:
  """The per-frequency divisors of Llama 3.x rope scaling, as convert_hf_to_gguf stores them."""
  freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
  wavelen = 2 * math.pi / freqs.astype(np.float64)
  factor, low, high = scaling['factor'], scaling['low_freq_factor'], scaling['high_freq_factor']
  old = scaling['original_max_position_embeddings']
  smooth = (old / wavelen - low) / (high - low)
  mixed = 1 / ((1 - smooth) / factor + smooth)
  return np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, mixed))


def _llama3_scaling(file: _File, rope_freqs: np.ndarray, head_dim: int, theta: float) -> dict:
  """Llama 3.x rope_scaling whose factors are `rope_freqs` (llama.cpp stores only these).

  The factors fix low / original and high / original, not the context length itself; Llama 3.x
  has low_freq_factor 1, which pins the rest (fitted from the smoothly scaled frequencies).
  """
  factors = rope_freqs.astype(np.float64).ravel()
  factor = float(factors.max())
  scaling = {'rope_type': 'llama3', 'factor': factor, 'low_freq_factor': 1.0,
             'high_freq_factor': 4.0, 'original_max_position_embeddings': 8192}
  wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
  mid = (factors > 1 + 1e-6) & (factors < factor * (1 - 1e-6))
  if factors.size == head_dim // 2 and mid.sum() >= 2:
    # smooth = old / (high - low) / wavelen - low / (high - low), linear in 1 / wavelen.
    smooth = (1 / factors[mid] - 1 / factor) / (1 - 1 / factor)
    slope, intercept = np.polyfit(1 / wavelen[mid], smooth, 1)
    scaling['original_max_position_embeddings'] = int(round(slope / -intercept))
    scaling['high_freq_factor'] = round(1 - 1 / intercept, 4)
  if (factors.size != head_dim // 2 or
      not np.allclose(_llama3_factors(head_dim, theta, scaling), factors, rtol=1e-4)):
    raise ConfigError(f'{file.path!r} holds rope_freqs factors that are not Llama 3 rope scaling '
                      f'with head_dim {head_dim}; other per-frequency scalings are not supported.')
  return scaling


def _gpt2_config(file: _File) -> dict:
  """transformers' GPT2Config dict from llama.cpp's `gpt2.*` metadata."""
  tensors = file.tensors
  if 'token_embd.weight' not in tensors:
    raise ConfigError(f'{file.path!r} lacks the tensor token_embd.weight that every gpt2 model '
                      'has.')
  width = _key(file, 'gpt2.embedding_length')
  inner = _key(file, 'gpt2.feed_forward_length', 4 * width)
  embedding, output = tensors['token_embd.weight'], tensors.get('output.weight')
  # convert_hf_to_gguf always writes GPT-2's output projection, as a copy of the embedding.
  tied = output is None or (output.ggml_type == embedding.ggml_type and
                            np.array_equal(output.data, embedding.data))
  return {
      'architectures': ['GPT2LMHeadModel'],
      'model_type': 'gpt2',
      'vocab_size': embedding.shape[0],
      'n_positions': _key(file, 'gpt2.context_length'),
      'n_embd': width,
      'n_layer': _key(file, 'gpt2.block_count'),
      'n_head': _key(file, 'gpt2.attention.head_count'),
      'n_inner': None if inner == 4 * width else inner,
      'activation_function': 'gelu_new',
      'layer_norm_epsilon': float(_key(file, 'gpt2.attention.layer_norm_epsilon')),
      'tie_word_embeddings': bool(tied),
      **_token_ids(file),
  }


def tokenizer(path) -> GGUFTokenizer:
  """The byte-level BPE tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.

  Control tokens (token type 3) become special added tokens and user-defined ones (4) plain
  added tokens, so that both are matched whole in text, as llama.cpp does. An unknown
  `tokenizer.ggml.pre` logs a warning and splits text as GPT-2 does.

  Raises:
    ConfigError: the file is not a GGUF file or its tokenizer is not byte-level BPE ('gpt2').
  """
  from tokenizers import AddedToken, Tokenizer, decoders, models

  file = _open(path, vocabulary=True)
  kind = _key(file, 'tokenizer.ggml.model', None)
  if kind != 'gpt2':
    raise ConfigError(f'{file.path!r} has tokenizer.ggml.model {kind!r}; only byte-level BPE '
                      "('gpt2') tokenizers are supported.")
  tokens = _key(file, 'tokenizer.ggml.tokens')
  types = np.asarray(_key(file, 'tokenizer.ggml.token_type', np.full(len(tokens), _NORMAL)))
  merges = [tuple(merge.split(' ', 1)) for merge in _key(file, 'tokenizer.ggml.merges')]
  pre = _key(file, 'tokenizer.ggml.pre', 'default')
  model = models.BPE(_byte_level_vocab(tokens, types), merges, ignore_merges=pre in _IGNORE_MERGES)
  tok = Tokenizer(model)
  tok.pre_tokenizer = _pre_tokenizer(pre, file.path)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                          for i in np.flatnonzero(types == _CONTROL)])
  tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                  for i in np.flatnonzero(types == _USER_DEFINED)])
  ids = _token_ids(file)
  bos, eos = ids.get('bos_token_id'), ids.get('eos_token_id')
  add_bos = bool(_key(file, 'tokenizer.ggml.add_bos_token', False)) and bos is not None
  add_eos = bool(_key(file, 'tokenizer.ggml.add_eos_token', False)) and eos is not None
  if add_bos or add_eos:
    tok.post_processor = _template(tokens, bos if add_bos else None, eos if add_eos else None)
  return GGUFTokenizer(tok, bos, eos, add_bos, add_eos)


def _byte_level_vocab(tokens: list[str], types) -> dict[str, int]:
  """{token: id}, normal tokens spelled in GPT-2's byte alphabet as BPE needs them.

  Files keep the byte alphabet (Ġ for a space), but some store a normal token with the raw
  characters; those are respelled. Added tokens keep their text: it is matched in raw input.
  """
  to_char = _byte_alphabet()
  alphabet = set(to_char.values())
  vocab = {token: index for index, token in enumerate(tokens)}  # Repeats keep the last id.
  for index in np.flatnonzero(np.asarray(types) == _NORMAL):
    if not alphabet.issuperset(token := tokens[index]):
      vocab.pop(token, None)
      vocab[''.join(to_char[b] for b in token.encode('utf-8'))] = int(index)
  return vocab


@functools.cache
def _byte_alphabet() -> dict[int, str]:
  """GPT-2's printable stand-in character for each byte: {byte: character}."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  others = [b for b in range(256) if b not in printable]
  return {b: chr(c) for b, c in [*zip(printable, printable, strict=True),
                                 *zip(others, range(256, 256 + len(others)), strict=True)]}


def _pre_tokenizer(pre: str, path: str):
  from tokenizers import Regex, pre_tokenizers

  if pre not in _PRE_SPLITS:
    logging.warning('%r has the unknown tokenizer.ggml.pre %r; splitting text as GPT-2 does.',
                    path, pre)
  split = _PRE_SPLITS.get(pre)
  if split is None:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if split == 'digits':  # SmolLM: each digit alone, then GPT-2's split.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])
  return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior='isolated'),
                                  pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                           use_regex=False)])


def _template(tokens: list[str], bos: int | None, eos: int | None):
  from tokenizers import processors

  first = [tokens[bos]] if bos is not None else []
  last = [tokens[eos]] if eos is not None else []
  specials = [(tokens[i], i) for i in {bos, eos} if i is not None]
  return processors.TemplateProcessing(
      single=[*first, '$A', *last],
      pair=[*first, '$A', *last, *[f'{t}:1' for t in first], '$B:1', *[f'{t}:1' for t in last]],
      special_tokens=specials)
