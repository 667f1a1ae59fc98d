"""Hugging Face configs and state dicts <-> our Flax models and params.

    model = convert.model_from_config(hf_config)                  # models.Llama or models.GPT
    params = convert.params_from_state(hf_config, state_dict)      # nested dict, Flax layout
    hf_config, state_dict = convert.state_from_params(model, params, hf_config)

`state_dict` maps transformers' tensor names to numpy arrays in transformers' layout (a
`nn.Linear` weight is [out, in]: our kernel transposed; GPT-2's `Conv1D` weights are [in, out]
already). Supported `model_type`s: 'llama' (also SmolLM, Llama 2/3), 'qwen2' (q/k/v biases),
'mistral' without a sliding window, and 'gpt2' (its fused `c_attn` is split into our separate
query/key/value projections on the way in and fused again on the way out).
"""

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models.llama import ROPE_TYPES, Llama
from bigmodel_jax.models.transformer import GPT

LLAMA_TYPES = ('llama', 'qwen2', 'mistral')
MODEL_TYPES = (*LLAMA_TYPES, 'gpt2')
# Our Llama names <- transformers' names, inside one block ('model.layers.{i}.').
_LLAMA_BLOCK = {
    ('attn', 'query'): 'self_attn.q_proj', ('attn', 'key'): 'self_attn.k_proj',
    ('attn', 'value'): 'self_attn.v_proj', ('attn', 'out'): 'self_attn.o_proj',
    ('mlp', 'gate'): 'mlp.gate_proj', ('mlp', 'up'): 'mlp.up_proj',
    ('mlp', 'down'): 'mlp.down_proj',
}
_GPT2_BLOCK = {('ln_1',): 'ln_1', ('ln_2',): 'ln_2', ('attn', 'out'): 'attn.c_proj',
               ('fc',): 'mlp.c_fc', ('proj',): 'mlp.c_proj'}


def model_type(hf_config: Mapping) -> str:
  """The config's model_type, checked against the supported ones."""
  kind = hf_config.get('model_type')
  if kind not in MODEL_TYPES:
    raise ConfigError(f'model_type {kind!r} is not supported; supported: '
                      f'{", ".join(MODEL_TYPES)}.')
  if kind in ('mistral', 'qwen2') and hf_config.get('use_sliding_window', kind == 'mistral') \
      and hf_config.get('sliding_window'):
    raise ConfigError(f'This {kind} model uses sliding-window attention, which is not '
                      'supported; only full attention is.')
  return kind


def _rope(hf_config: Mapping) -> tuple[float, tuple | None]:
  """(rope base, scaling items or None) from transformers 4's or 5's config keys."""
  params = dict(hf_config.get('rope_parameters') or {})
  base = hf_config.get('rope_theta', params.get('rope_theta', 10000.0))
  scaling = dict(hf_config.get('rope_scaling') or params)
  scaling.pop('rope_theta', None)
  kind = scaling.get('rope_type', scaling.get('type', 'default'))
  if kind not in ROPE_TYPES:
    raise ConfigError(f'rope_scaling type {kind!r} is not supported; use one of: '
                      f'{", ".join(ROPE_TYPES)}.')
  if kind == 'default':
    return float(base), None
  scaling['rope_type'] = kind
  scaling.pop('type', None)
  return float(base), tuple(sorted(scaling.items()))


def model_from_config(hf_config: Mapping, *, max_len: int | None = None, dtype=None):
  """Our module for a transformers config dict; `max_len` caps the decoding cache."""
  kind = model_type(hf_config)
  extra = {} if dtype is None else {'dtype': dtype}
  if kind == 'gpt2':
    return _gpt2_model(hf_config, extra)
  hidden, heads = hf_config['hidden_size'], hf_config['num_attention_heads']
  if hf_config.get('hidden_act', 'silu') != 'silu':
    raise ConfigError(f"hidden_act {hf_config['hidden_act']!r} is not supported; Llama-family "
                      "models here use 'silu'.")
  base, scaling = _rope(hf_config)
  length = hf_config.get('max_position_embeddings', 2048)
  attention_bias = bool(hf_config.get('attention_bias', False))
  return Llama(
      vocab_size=hf_config['vocab_size'], num_layers=hf_config['num_hidden_layers'],
      embed_dim=hidden, num_heads=heads,
      num_kv_heads=hf_config.get('num_key_value_heads') or heads,
      mlp_dim=hf_config['intermediate_size'],
      head_dim=hf_config.get('head_dim') or hidden // heads, rope_base=base, rope_scaling=scaling,
      norm_eps=float(hf_config.get('rms_norm_eps', 1e-6)),
      max_len=min(length, max_len) if max_len else length,
      tie_embeddings=bool(hf_config.get('tie_word_embeddings', False)),
      qkv_bias=kind == 'qwen2' or attention_bias, out_bias=attention_bias,
      mlp_bias=bool(hf_config.get('mlp_bias', False)), **extra)


def _gpt2_model(hf_config: Mapping, extra: dict) -> GPT:
  width = hf_config['n_embd']
  inner = hf_config.get('n_inner') or 4 * width
  checks = {
      'activation_function': (hf_config.get('activation_function', 'gelu_new'),
                              ('gelu_new', 'gelu_pytorch_tanh')),
      'layer_norm_epsilon': (hf_config.get('layer_norm_epsilon', 1e-5), (1e-5,)),
      'n_inner': (inner % width, (0,)),
      'scale_attn_by_inverse_layer_idx': (hf_config.get('scale_attn_by_inverse_layer_idx',
                                                        False), (False,)),
      'reorder_and_upcast_attn': (hf_config.get('reorder_and_upcast_attn', False), (False,)),
  }
  for key, (value, allowed) in checks.items():
    if value not in allowed:
      raise ConfigError(f'GPT-2 {key}={hf_config.get(key)!r} is not supported (supported: '
                        f'{", ".join(map(repr, allowed))}).')
  return GPT(vocab_size=hf_config['vocab_size'], num_layers=hf_config['n_layer'],
             num_heads=hf_config['n_head'], embed_dim=width, mlp_ratio=inner // width,
             max_len=hf_config['n_positions'], position='learned',
             tie_embeddings=bool(hf_config.get('tie_word_embeddings', True)), use_bias=True,
             **extra)


class _Reader:
  """Takes tensors out of a state dict by name, with one clear error for a missing one."""

  def __init__(self, state: Mapping[str, np.ndarray], prefix: str = ''):
    self.state, self.prefix, self.used = state, prefix, set()

  def __call__(self, name: str, transpose: bool = False) -> np.ndarray:
    key = self.prefix + name
    if key not in self.state:
      raise ConfigError(f'The checkpoint has no tensor {key!r}; it does not match its config.')
    self.used.add(key)
    x = np.asarray(self.state[key], np.float32)
    return np.ascontiguousarray(x.T) if transpose else x

  def has(self, name: str) -> bool:
    return self.prefix + name in self.state


Place = Callable[[str, Any], Any]  # (top-level name, subtree of numpy arrays) -> placed subtree


def params_from_state(hf_config: Mapping, state: Mapping[str, np.ndarray],
                      place: Place | None = None) -> dict:
  """Our params (Flax layout) from a transformers state dict.

  Each top-level entry (the embedding, each block, ...) goes through `place` as soon as it is
  built, e.g. onto its devices, so a lazy `state` is never all on the host at once; without
  `place` the params are numpy float32.
  """
  place = place or (lambda name, tree: tree)
  if model_type(hf_config) == 'gpt2':
    return {k: place(k, v) for k, v in _gpt2_params(hf_config, state).items()}
  take = _Reader(state)
  params: dict[str, Any] = {
      'wte': place('wte', {'embedding': take('model.embed_tokens.weight')}),
      'ln_f': place('ln_f', {'scale': take('model.norm.weight')})}
  for i in range(hf_config['num_hidden_layers']):
    block: dict[str, Any] = {'ln_1': {'scale': take(f'model.layers.{i}.input_layernorm.weight')},
                             'ln_2': {'scale': take(
                                 f'model.layers.{i}.post_attention_layernorm.weight')},
                             'attn': {}, 'mlp': {}}
    for (group, ours), theirs in _LLAMA_BLOCK.items():
      name = f'model.layers.{i}.{theirs}'
      layer = {'kernel': take(name + '.weight', transpose=True)}
      if take.has(name + '.bias'):
        layer['bias'] = take(name + '.bias')
      block[group][ours] = layer
    params[f'block_{i}'] = place(f'block_{i}', block)
  if not hf_config.get('tie_word_embeddings', False):
    params['lm_head'] = place('lm_head', {'kernel': take('lm_head.weight', transpose=True)})
  _check_all_used(take, state, ignore=('rotary_emb.inv_freq',))
  return params


def _gpt2_params(hf_config: Mapping, state: Mapping[str, np.ndarray]) -> dict:
  prefix = 'transformer.' if any(k.startswith('transformer.') for k in state) else ''
  take = _Reader(state, prefix)
  width = hf_config['n_embd']
  ln = lambda name: {'scale': take(name + '.weight'), 'bias': take(name + '.bias')}
  layer = lambda name: {'kernel': take(name + '.weight'), 'bias': take(name + '.bias')}
  params: dict[str, Any] = {'wte': {'embedding': take('wte.weight')}, 'wpe': take('wpe.weight'),
                            'ln_f': ln('ln_f')}
  for i in range(hf_config['n_layer']):
    qkv = layer(f'h.{i}.attn.c_attn')
    attn = {name: {'kernel': qkv['kernel'][:, j * width:(j + 1) * width],
                   'bias': qkv['bias'][j * width:(j + 1) * width]}
            for j, name in enumerate(('query', 'key', 'value'))}
    attn['out'] = layer(f'h.{i}.attn.c_proj')
    params[f'block_{i}'] = {'ln_1': ln(f'h.{i}.ln_1'), 'ln_2': ln(f'h.{i}.ln_2'), 'attn': attn,
                            'fc': layer(f'h.{i}.mlp.c_fc'), 'proj': layer(f'h.{i}.mlp.c_proj')}
  if not hf_config.get('tie_word_embeddings', True):
    take.prefix = ''
    params['lm_head'] = {'kernel': take('lm_head.weight', transpose=True)}
  # Old checkpoints carry the causal-mask buffers attn.bias / attn.masked_bias: not weights.
  _check_all_used(take, state, ignore=('attn.bias', 'attn.masked_bias', 'lm_head.weight'))
  return params


def _check_all_used(take: _Reader, state: Mapping, ignore: tuple[str, ...]) -> None:
  unused = [k for k in state if k not in take.used and not k.endswith(ignore)]
  if unused:
    raise ConfigError(f'The checkpoint has {len(unused)} tensors its config does not explain '
                      f'(first: {unused[0]!r}); the config and the weights do not match.')


def state_from_params(model, params: Mapping, hf_config: Mapping | None = None
                      ) -> tuple[dict, dict[str, np.ndarray]]:
  """(transformers config dict, state dict) of our model and params, ready to save.

  `hf_config` is the loaded model's config, whose other keys (token ids, rope settings, ...) are
  kept; sizes come from `model`. A Llama whose blocks differ after structured pruning cannot be
  described by one transformers config: its smaller blocks are padded with zero heads / units to
  the largest block's size (the same outputs), which `padded_blocks` reports.
  """
  params = _to_numpy(params)
  if isinstance(model, GPT):
    return _gpt2_state(model, params, hf_config or {})
  return _llama_state(model, params, dict(hf_config or {}))


def _to_numpy(params):
  import jax
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)


def padded_blocks(model) -> list[int]:
  """Blocks of a structurally pruned model that a transformers export pads with zeros."""
  if isinstance(model, GPT):
    heads = model.heads_per_layer or (model.num_heads,) * model.num_layers
    return [i for i, h in enumerate(heads) if h != model.num_heads]
  sizes = [model.layer_sizes(i) for i in range(model.num_layers)]
  top = tuple(max(s[j] for s in sizes) for j in range(3))
  return [i for i, s in enumerate(sizes) if s != top]


def _pad_to(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return np.pad(x, widths)


def _llama_state(model: Llama, params: Mapping, hf_config: dict):
  sizes = [model.layer_sizes(i) for i in range(model.num_layers)]
  heads, kv, mlp = (max(s[j] for s in sizes) for j in range(3))
  d = model.resolved_head_dim
  # Per output/input axis of each projection: the padded width (heads * head_dim, or units).
  widths = {('attn', 'query'): heads * d, ('attn', 'key'): kv * d, ('attn', 'value'): kv * d,
            ('mlp', 'gate'): mlp, ('mlp', 'up'): mlp}
  state = {'model.embed_tokens.weight': params['wte']['embedding'],
           'model.norm.weight': params['ln_f']['scale']}
  for i in range(model.num_layers):
    block = params[f'block_{i}']
    pre = f'model.layers.{i}.'
    state[pre + 'input_layernorm.weight'] = block['ln_1']['scale']
    state[pre + 'post_attention_layernorm.weight'] = block['ln_2']['scale']
    for (group, ours), theirs in _LLAMA_BLOCK.items():
      layer = block[group][ours]
      kernel = layer['kernel']
      if (group, ours) in widths:
        kernel = _pad_to(kernel, widths[group, ours], 1)
      else:  # out / down: their inputs are the padded axis.
        kernel = _pad_to(kernel, heads * d if ours == 'out' else mlp, 0)
      state[pre + theirs + '.weight'] = np.ascontiguousarray(kernel.T)
      if 'bias' in layer:
        bias = layer['bias']
        if (group, ours) in widths:
          bias = _pad_to(bias, widths[group, ours], 0)
        state[pre + theirs + '.bias'] = bias
  if not model.tie_embeddings:
    state['lm_head.weight'] = np.ascontiguousarray(params['lm_head']['kernel'].T)
  hf_config.setdefault('model_type', 'qwen2' if model.qkv_bias and not model.out_bias
                       else 'llama')
  arch = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM',
          'mistral': 'MistralForCausalLM'}[hf_config['model_type']]
  hf_config.update(
      architectures=[arch], vocab_size=model.vocab_size, hidden_size=model.embed_dim,
      intermediate_size=mlp, num_hidden_layers=model.num_layers, num_attention_heads=heads,
      num_key_value_heads=kv, head_dim=d, rms_norm_eps=model.norm_eps,
      tie_word_embeddings=model.tie_embeddings, hidden_act='silu',
      attention_bias=model.out_bias, mlp_bias=model.mlp_bias,
      max_position_embeddings=max(model.max_len, hf_config.get('max_position_embeddings', 0)))
  hf_config.setdefault('torch_dtype', 'float32')
  _set_rope(hf_config, model.rope_base, model.rope_scaling)
  return hf_config, state


def _set_rope(hf_config: dict, base: float, scaling: tuple | None) -> None:
  """Writes the rope settings both as transformers 4 and 5 read them."""
  hf_config.pop('rope_parameters', None)
  hf_config['rope_theta'] = base
  hf_config['rope_scaling'] = dict(scaling) if scaling else None
  params = dict(scaling) if scaling else {'rope_type': 'default'}
  hf_config['rope_parameters'] = {**params, 'rope_theta': base}


def _gpt2_state(model: GPT, params: Mapping, hf_config: Mapping):
  width = model.embed_dim
  state = {'transformer.wte.weight': params['wte']['embedding'],
           'transformer.wpe.weight': params['wpe'],
           'transformer.ln_f.weight': params['ln_f']['scale'],
           'transformer.ln_f.bias': params['ln_f']['bias']}
  for i in range(model.num_layers):
    block, pre = params[f'block_{i}'], f'transformer.h.{i}.'
    # Blocks that lost heads are padded back to n_embd with zero heads (the same outputs).
    attn = {n: {'kernel': _pad_to(block['attn'][n]['kernel'], width, 1),
                'bias': _pad_to(block['attn'][n]['bias'], width, 0)}
            for n in ('query', 'key', 'value')}
    attn['out'] = {'kernel': _pad_to(block['attn']['out']['kernel'], width, 0),
                   'bias': block['attn']['out']['bias']}
    state[pre + 'attn.c_attn.weight'] = np.concatenate(
        [attn[n]['kernel'] for n in ('query', 'key', 'value')], axis=1)
    state[pre + 'attn.c_attn.bias'] = np.concatenate(
        [attn[n]['bias'] for n in ('query', 'key', 'value')])
    flat = {('attn', 'out'): attn['out'], ('ln_1',): block['ln_1'], ('ln_2',): block['ln_2'],
            ('fc',): block['fc'], ('proj',): block['proj']}
    for key, theirs in _GPT2_BLOCK.items():
      layer = flat[key]
      state[pre + theirs + '.weight'] = layer['kernel'] if 'kernel' in layer else layer['scale']
      state[pre + theirs + '.bias'] = layer['bias']
  if not model.tie_embeddings:
    state['lm_head.weight'] = np.ascontiguousarray(params['lm_head']['kernel'].T)
  config = dict(hf_config)
  config.update(model_type='gpt2', architectures=['GPT2LMHeadModel'],
                vocab_size=model.vocab_size, n_embd=width, n_layer=model.num_layers,
                n_head=model.num_heads, n_positions=model.max_len,
                n_inner=model.mlp_ratio * width, activation_function='gelu_new',
                layer_norm_epsilon=1e-5, tie_word_embeddings=model.tie_embeddings)
  return config, state


def count_params(params: Any, is_leaf: Callable | None = None) -> int:
  """Number of scalars in a params tree."""
  import jax
  return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(params, is_leaf=is_leaf)))
