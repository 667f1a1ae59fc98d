"""GGUF files (llama.cpp's format) read into, and written from, Hugging Face transformers' terms.

    hf_config, state_dict = gguf_file.read('SmolLM2-135M-Instruct.Q4_1.gguf')
    # hf_config: a transformers config.json dict; state_dict: transformers' names, float32
    tok = gguf_tokenizer.tokenizer('SmolLM2-135M-Instruct.Q4_1.gguf')
    ids = tok.tokenizer.encode('The capital of France is').ids

`read` gives what `transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`
would hold, as numpy: llama.cpp's tensor names mapped back, its q/k row order for rotary
embeddings undone (llama), GPT-2's projections transposed back to `Conv1D` [in, out], every
tensor dequantized to float32 with `gguf.quants.dequantize`. Architectures: llama (Llama 2/3,
SmolLM and the other models llama.cpp files as llama), qwen2, gpt2.

`gguf_tokenizer.tokenizer` rebuilds a byte-level BPE `tokenizers.Tokenizer` from the metadata
(tokens, merges, token types, the pre-tokenizer named by `tokenizer.ggml.pre`), without
transformers.

`gguf_writer.write` does what llama.cpp's `convert_hf_to_gguf.py` does for these architectures
(names, the q/k permutation, metadata, quantization by `gguf.quants.quantize`); tests build
files with it.

The container itself (header, memory-mapped tensors, dequantization) is `gguf_container`; the
tokenizer is `gguf_tokenizer.tokenizer`.
"""

import math
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pretrained.gguf_container import File, dequantize, get_key, open_file, token_ids

SUPPORTED_ARCHITECTURES = ('llama', 'qwen2', 'gpt2')

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
  file = open_file(path)
  arch = get_key(file, 'general.architecture')
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
    values = dequantize(tensors[name], name)
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



def _llama_config(file: File, arch: str) -> dict:
  """transformers' LlamaConfig / Qwen2Config dict from llama.cpp's `{arch}.*` metadata."""
  tensors = file.tensors
  for name in ('token_embd.weight', 'blk.0.attn_q.weight'):
    if name not in tensors:
      raise ConfigError(f'{file.path!r} lacks the tensor {name!r} that every {arch} model has.')
  heads = get_key(file, f'{arch}.attention.head_count')
  head_dim = get_key(file, f'{arch}.attention.key_length', tensors['blk.0.attn_q.weight'].shape[0]
                     // heads)
  theta = float(get_key(file, f'{arch}.rope.freq_base', 10000.0))
  rope_freqs = tensors.get('rope_freqs.weight')
  if rope_freqs is not None:
    rope_freqs = dequantize(rope_freqs, 'rope_freqs.weight')
  config = {
      'architectures': ['LlamaForCausalLM' if arch == 'llama' else 'Qwen2ForCausalLM'],
      'model_type': arch,
      'vocab_size': tensors['token_embd.weight'].shape[0],
      'hidden_size': get_key(file, f'{arch}.embedding_length'),
      'intermediate_size': get_key(file, f'{arch}.feed_forward_length'),
      'num_hidden_layers': get_key(file, f'{arch}.block_count'),
      'num_attention_heads': heads,
      'num_key_value_heads': get_key(file, f'{arch}.attention.head_count_kv', heads),
      'head_dim': head_dim,
      'hidden_act': 'silu',
      'max_position_embeddings': get_key(file, f'{arch}.context_length'),
      'rms_norm_eps': float(get_key(file, f'{arch}.attention.layer_norm_rms_epsilon')),
      'rope_theta': theta,
      'rope_scaling': _rope_scaling(file, arch, rope_freqs, head_dim, theta),
      'tie_word_embeddings': 'output.weight' not in tensors,
      **token_ids(file),
  }
  if arch == 'llama':
    config['attention_bias'] = 'blk.0.attn_q.bias' in tensors
    config['mlp_bias'] = 'blk.0.ffn_up.bias' in tensors
  return config


def _rope_scaling(file: File, arch: str, rope_freqs, head_dim: int, theta: float) -> dict | None:
  """transformers' rope_scaling from llama.cpp's `rope.scaling.*` keys or `rope_freqs` tensor."""
  if rope_freqs is not None:
    return _llama3_scaling(file, rope_freqs, head_dim, theta)
  kind = get_key(file, f'{arch}.rope.scaling.type', None)
  if kind in (None, 'none'):
    factor = get_key(file, f'{arch}.rope.scale_linear', None)  # Files from before rope.scaling.*.
    return {'rope_type': 'linear', 'factor': float(factor)} if factor else None
  factor = float(get_key(file, f'{arch}.rope.scaling.factor'))
  if kind == 'linear':
    return {'rope_type': 'linear', 'factor': factor}
  if kind == 'yarn':
    return {'rope_type': 'yarn', 'factor': factor, 'original_max_position_embeddings':
            get_key(file, f'{arch}.rope.scaling.original_context_length')}
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


def _llama3_scaling(file: File, rope_freqs: np.ndarray, head_dim: int, theta: float) -> dict:
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


def _gpt2_config(file: File) -> dict:
  """transformers' GPT2Config dict from llama.cpp's `gpt2.*` metadata."""
  tensors = file.tensors
  if 'token_embd.weight' not in tensors:
    raise ConfigError(f'{file.path!r} lacks the tensor token_embd.weight that every gpt2 model '
                      'has.')
  width = get_key(file, 'gpt2.embedding_length')
  inner = get_key(file, 'gpt2.feed_forward_length', 4 * width)
  embedding, output = tensors['token_embd.weight'], tensors.get('output.weight')
  # convert_hf_to_gguf always writes GPT-2's output projection, as a copy of the embedding.
  tied = output is None or (output.ggml_type == embedding.ggml_type and
                            np.array_equal(output.data, embedding.data))
  return {
      'architectures': ['GPT2LMHeadModel'],
      'model_type': 'gpt2',
      'vocab_size': embedding.shape[0],
      'n_positions': get_key(file, 'gpt2.context_length'),
      'n_embd': width,
      'n_layer': get_key(file, 'gpt2.block_count'),
      'n_head': get_key(file, 'gpt2.attention.head_count'),
      'n_inner': None if inner == 4 * width else inner,
      'activation_function': 'gelu_new',
      'layer_norm_epsilon': float(get_key(file, 'gpt2.attention.layer_norm_epsilon')),
      'tie_word_embeddings': bool(tied),
      **token_ids(file),
  }
