"""GGUF files written from a transformers model, as llama.cpp's convert_hf_to_gguf.py does.

    gguf_writer.write('tiny.gguf', hf_config, state_dict, tokenizer, dtype='Q8_0')

For tests (tiny models written here and read back by `gguf_file.read` and by transformers) and
small exports. The reader and its name tables are `gguf_file`.
"""

import json
import os
from collections.abc import Mapping

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, TokenType

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pretrained.gguf_file import _CONV1D, _check_architecture, _llama3_factors


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
  """convert_hf_to_gguf's `permute` of q/k rows for llama.cpp's interleaved rope: per head,
  transformers' rotary pairs (rows i and i + d/2) become adjacent rows (2i and 2i + 1)."""
  return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
          .swapaxes(1, 2).reshape(weight.shape))



def write(path, hf_config: Mapping, state_dict: Mapping, tokenizer=None, dtype: str = 'F32', *,
          pre: str = 'gpt2', add_bos: bool = False) -> None:
  """Writes a transformers model as a GGUF file, as llama.cpp's convert_hf_to_gguf.py does.

  For tests and small exports: names from gguf's tensor name map, llama's q/k rows permuted for
  llama.cpp's rope, GPT-2's Conv1D weights transposed and its output written as a copy of the
  embedding, Llama 3 rope scaling as a `rope_freqs` tensor.

  Args:
    path: the .gguf file to write.
    hf_config: the model's transformers config dict (`model_type` llama, qwen2 or gpt2).
    state_dict: transformers' parameter names to float arrays (numpy or CPU torch tensors).
    tokenizer: optional byte-level BPE `tokenizers.Tokenizer`; its vocabulary is padded with
      unused `[PADi]` tokens to the model's vocab_size, as llama.cpp pads it.
    dtype: ggml type of the matrices: 'F32', 'F16', or one gguf.quants.quantize supports
      ('BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', ...). Vectors stay F32, and a matrix
      whose rows do not fill whole blocks falls back to F16, as in llama.cpp.
    pre: the tokenizer.ggml.pre name of `tokenizer`'s pre-tokenizer.
    add_bos: the file's tokenizer.ggml.add_bos_token.
  """
  arch = hf_config.get('model_type')
  _check_architecture(arch, 'The model to write')
  qtype = _writable_type(dtype)
  writer = gguf.GGUFWriter(os.fspath(path), arch)
  _write_hparams(writer, arch, hf_config)
  file_type = 'ALL_F32' if qtype == GGMLQuantizationType.F32 else f'MOSTLY_{qtype.name}'
  if file_type in gguf.LlamaFileType.__members__:
    writer.add_file_type(gguf.LlamaFileType[file_type])
  if tokenizer is not None:
    _write_tokenizer(writer, tokenizer, hf_config, pre, add_bos)
  for name, values in _gguf_tensors(arch, hf_config, state_dict):
    if values.ndim < 2 or qtype == GGMLQuantizationType.F32:
      writer.add_tensor(name, values)
    elif qtype == GGMLQuantizationType.F16 or values.shape[-1] % GGML_QUANT_SIZES[qtype][0]:
      writer.add_tensor(name, values.astype(np.float16))
    else:
      writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def _writable_type(dtype: str) -> GGMLQuantizationType:
  qtype = GGMLQuantizationType.__members__.get(str(dtype).upper())
  if qtype is not None:
    try:
      gguf.quants.quantize(np.zeros((1, GGML_QUANT_SIZES[qtype][0]), np.float32), qtype)
      return qtype
    except NotImplementedError:
      pass
  raise ConfigError(f'dtype={dtype!r} cannot be written: it must be F32, F16 or a ggml type that '
                    'gguf.quants.quantize supports, such as BF16, Q8_0, Q4_0 or Q4_1.')


def _write_hparams(writer, arch: str, config: Mapping) -> None:
  """llama.cpp's `{arch}.*` metadata for a transformers config."""
  if arch == 'gpt2':
    writer.add_context_length(config['n_positions'])
    writer.add_embedding_length(config['n_embd'])
    writer.add_feed_forward_length(config.get('n_inner') or 4 * config['n_embd'])
    writer.add_block_count(config['n_layer'])
    writer.add_head_count(config['n_head'])
    writer.add_layer_norm_eps(config['layer_norm_epsilon'])
    writer.add_vocab_size(config['vocab_size'])
  else:
    heads = config['num_attention_heads']
    head_dim = config.get('head_dim') or config['hidden_size'] // heads
    writer.add_context_length(config['max_position_embeddings'])
    writer.add_embedding_length(config['hidden_size'])
    writer.add_feed_forward_length(config['intermediate_size'])
    writer.add_block_count(config['num_hidden_layers'])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get('num_key_value_heads') or heads)
    writer.add_rope_freq_base(_rope(config)[0])
    writer.add_layer_norm_rms_eps(config['rms_norm_eps'])
    writer.add_vocab_size(config['vocab_size'])
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config['hidden_size'] // heads:
      writer.add_key_length(head_dim)
      writer.add_value_length(head_dim)
    scaling = _rope(config)[1] or {}
    kind = scaling.get('rope_type', scaling.get('type'))
    if kind in ('linear', 'yarn'):
      writer.add_rope_scaling_type(gguf.RopeScalingType(kind))
      writer.add_rope_scaling_factor(scaling['factor'])
    if kind == 'yarn':
      writer.add_rope_scaling_orig_ctx_len(scaling['original_max_position_embeddings'])
  for key, add in (('bos_token_id', writer.add_bos_token_id),
                   ('eos_token_id', writer.add_eos_token_id),
                   ('pad_token_id', writer.add_pad_token_id)):
    if isinstance(config.get(key), int):
      add(config[key])


def _rope(config: Mapping) -> tuple[float, dict | None]:
  """(rope_theta, rope_scaling) of a config in transformers 4's keys or 5's rope_parameters."""
  parameters = config.get('rope_parameters') or {}
  theta = config.get('rope_theta', parameters.get('rope_theta', 10000.0))
  scaling = config.get('rope_scaling')
  if scaling is None and parameters.get('rope_type', 'default') != 'default':
    scaling = parameters
  return float(theta), scaling


def _gguf_tensors(arch: str, config: Mapping, state_dict: Mapping):
  """Yields (llama.cpp name, float32 array in llama.cpp's layout) for the tensors to write."""
  layers = config['n_layer' if arch == 'gpt2' else 'num_hidden_layers']
  name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], layers)
  tied = config.get('tie_word_embeddings', arch == 'gpt2') or 'lm_head.weight' not in state_dict
  for hf_name, value in state_dict.items():
    if (hf_name.endswith(('.attn.bias', '.attn.masked_bias')) or
        (tied and hf_name == 'lm_head.weight')):
      continue  # GPT-2's causal-mask buffers; a tied output is the embedding.
    name = name_map.get_name(hf_name, try_suffixes=('.weight', '.bias'))
    if name is None:
      raise ConfigError(f'The parameter {hf_name!r} has no llama.cpp {arch} tensor name.')
    values = np.asarray(value, np.float32)
    part = name.split('.')[-2]
    if arch == 'llama' and part == 'attn_q':
      values = _permute(values, config['num_attention_heads'])
    elif arch == 'llama' and part == 'attn_k':
      values = _permute(values, config.get('num_key_value_heads') or config['num_attention_heads'])
    elif arch == 'gpt2' and part in _CONV1D and values.ndim == 2:
      values = values.T
    yield name, np.ascontiguousarray(values)
    if arch == 'gpt2' and tied and name == 'token_embd.weight':
      yield 'output.weight', np.ascontiguousarray(values)
  theta, scaling = _rope(config)
  if arch != 'gpt2' and scaling and scaling.get('rope_type', scaling.get('type')) == 'llama3':
    heads = config['num_attention_heads']
    head_dim = config.get('head_dim') or config['hidden_size'] // heads
    scaling = {'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
               'original_max_position_embeddings': 8192, **scaling}
    yield 'rope_freqs.weight', _llama3_factors(head_dim, theta, scaling).astype(np.float32)


def _write_tokenizer(writer, tokenizer, config: Mapping, pre: str, add_bos: bool) -> None:
  """llama.cpp's `tokenizer.ggml.*` metadata for a byte-level BPE `tokenizers.Tokenizer`."""
  model = json.loads(tokenizer.to_str())['model']
  if model['type'] != 'BPE':
    raise ConfigError(f'The tokenizer is {model["type"]}; only byte-level BPE can be written.')
  id_to_token = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
  added = {t.content: t.special for t in tokenizer.get_added_tokens_decoder().values()}
  size = max(config['vocab_size'], len(id_to_token))
  tokens, types = [], []
  for i in range(size):
    token = id_to_token.get(i)
    tokens.append(f'[PAD{i}]' if token is None else token)
    types.append(TokenType.UNUSED if token is None else TokenType.NORMAL if token not in added
                 else TokenType.CONTROL if added[token] else TokenType.USER_DEFINED)
  writer.add_tokenizer_model('gpt2')
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  writer.add_token_merges([m if isinstance(m, str) else ' '.join(m) for m in model['merges']])
  writer.add_add_bos_token(add_bos)
