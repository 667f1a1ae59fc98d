"""Hugging Face model folders: config.json + safetensors weights (one file or a sharded index).

    hf_config, state = hf_folder.read('path/to/SmolLM2-135M')   # state: lazy, name -> array
    hf_folder.write('out/', hf_config, state_dict)               # transformers loads it

Tensors are read one at a time from the files (memory-mapped by `safetensors`), so a caller
that places each on its devices as it goes never holds a second whole copy on the host.
"""

import json
import os
from collections.abc import Iterator, Mapping

import numpy as np

from bigmodel_jax import report
from bigmodel_jax.errors import ConfigError

CONFIG = 'config.json'
WEIGHTS = 'model.safetensors'
INDEX = 'model.safetensors.index.json'
_MAX_SHARD_BYTES = 2 * 1024**3  # transformers' own default shard size is 5 GB; smaller is safer.


class LazyState(Mapping):
  """Read-only mapping name -> numpy array over one or more safetensors files."""

  def __init__(self, files: dict[str, str]):
    self._files = files  # tensor name -> file path

  def __getitem__(self, name: str) -> np.ndarray:
    from safetensors import safe_open
    path = self._files[name]
    with safe_open(path, framework='numpy') as f:
      return f.get_tensor(name)

  def __iter__(self) -> Iterator[str]:
    return iter(self._files)

  def __len__(self) -> int:
    return len(self._files)


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ConfigError(f'{path} does not exist: a Hugging Face model folder needs {what}.') \
        from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f'{path} is not valid JSON ({e}).') from None


def _tensor_names(path: str) -> list[str]:
  from safetensors import SafetensorError, safe_open
  try:
    with safe_open(path, framework='numpy') as f:
      return list(f.keys())
  except (SafetensorError, OSError) as e:
    raise ConfigError(f'{path} is not a readable safetensors file ({e}).') from None


def read(folder: str) -> tuple[dict, LazyState]:
  """(config dict, lazy state dict) of a Hugging Face model folder."""
  if not os.path.isdir(folder):
    raise ConfigError(f'{folder} is not a folder; give a Hugging Face model folder (with '
                      f'{CONFIG} and {WEIGHTS}) or a .gguf file.')
  hf_config = _read_json(os.path.join(folder, CONFIG), 'config.json')
  single, index = os.path.join(folder, WEIGHTS), os.path.join(folder, INDEX)
  if os.path.exists(single):
    files = {name: single for name in _tensor_names(single)}
  elif os.path.exists(index):
    weight_map = _read_json(index, 'its index').get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
      raise ConfigError(f'{index} has no weight_map.')
    paths = {os.path.join(folder, f) for f in weight_map.values()}
    missing = sorted(p for p in paths if not os.path.exists(p))
    if missing:
      raise ConfigError(f'{missing[0]} is listed in {INDEX} but does not exist.')
    files = {name: os.path.join(folder, f) for name, f in weight_map.items()}
    for path in paths:  # Every listed shard must be readable and hold what the index says.
      _tensor_names(path)
  else:
    other = [f for f in os.listdir(folder) if f.endswith(('.bin', '.pt', '.pth'))]
    hint = (f' It has {other[0]}: PyTorch pickles are not read here; convert them to '
            'safetensors (transformers: model.save_pretrained(folder)).') if other else ''
    raise ConfigError(f'{folder} has neither {WEIGHTS} nor {INDEX}.{hint}')
  return hf_config, LazyState(files)


def write(folder: str, hf_config: Mapping, state: Mapping[str, np.ndarray],
          max_shard_bytes: int = _MAX_SHARD_BYTES) -> list[str]:
  """Writes config.json and the weights (sharded with an index when large); returns the files.

  Every file is written to a temporary name and renamed, so a killed save leaves no torn file.
  """
  from safetensors.numpy import save_file
  os.makedirs(folder, exist_ok=True)
  state = {k: np.ascontiguousarray(v) for k, v in state.items()}
  shards, size = [[]], 0
  for name, x in state.items():
    if shards[-1] and size + x.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += x.nbytes
  names = ([WEIGHTS] if len(shards) == 1 else
           [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))])
  for file, members in zip(names, shards, strict=True):
    path = os.path.join(folder, file)
    save_file({k: state[k] for k in members}, path + '.tmp', metadata={'format': 'pt'})
    os.replace(path + '.tmp', path)
  if len(shards) > 1:
    index = {'metadata': {'total_size': int(sum(x.nbytes for x in state.values()))},
             'weight_map': {k: f for f, members in zip(names, shards, strict=True)
                            for k in members}}
    report.write_json(os.path.join(folder, INDEX), index)
    names.append(INDEX)
  report.write_json(os.path.join(folder, CONFIG), dict(hf_config))
  return [*names, CONFIG]
