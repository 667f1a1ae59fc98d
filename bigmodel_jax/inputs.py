"""Checks of what a user hands a run, before any compute: keys and types of the config against
its reference (configs/default.py), finite numbers, and the paths it reads and writes.

`config.validate` checks values; this module checks what validate takes for granted (that a key
exists and holds a number where a number belongs) and the file system: the workdir can be made
and written, data folders are folders, IDX files read whole, Tiny Shakespeare's input.txt is
where `data.text_dir` says. Each problem raises ConfigError or DataError with one sentence.
"""

import difflib
import math
import os
import uuid

import ml_collections

from bigmodel_jax.data import idx, split_cache
from bigmodel_jax.errors import ConfigError, DataError

_NUMBERS = (int, float)


def _leaves(node, prefix=''):
  for key, value in node.items():
    name = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, name + '.')
    else:
      yield name, value


def _kind(value) -> str:
  if isinstance(value, bool):
    return 'bool'
  if isinstance(value, _NUMBERS):
    return 'number'
  if isinstance(value, str):
    return 'str'
  if isinstance(value, (tuple, list)):
    return 'sequence'
  return type(value).__name__


def check_keys_and_types(config: ml_collections.ConfigDict,
                         reference: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a key `reference` lacks (a typo in a config file) or a value whose
  kind (bool, number, str, sequence) differs from the reference's; numbers must be finite."""
  known = dict(_leaves(reference))
  sections = {name.rsplit('.', 1)[0] for name in known if '.' in name}
  for name, value in _leaves(config):
    if name not in known:
      if name in sections:
        raise ConfigError(f'config.{name}={value!r} replaces a whole section; set its keys '
                          f'instead, e.g. config.{name}.<key>.')
      peers = [k for k in list(known) + list(sections) if k.count('.') == name.count('.')]
      close = difflib.get_close_matches(name, peers, n=1)
      raise ConfigError(f'config.{name} is not a key of configs/default.py'
                        + (f' (did you mean config.{close[0]}?)' if close else '')
                        + '; every key is listed in docs/configs.md.')
    want, got = _kind(known[name]), _kind(value)
    if want != got and known[name] is not None:
      raise ConfigError(f'config.{name}={value!r} is a {got}; it must be a {want} (like the '
                        f'default {known[name]!r}).')
  check_finite(config)


def check_finite(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a NaN or infinite number anywhere in `config`."""
  for name, value in _leaves(config):
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f'config.{name}={value!r} is invalid: it must be a finite number.')


def _nearest_existing(path: str) -> str:
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def check_workdir(workdir: str | None) -> str:
  """Makes `workdir` if needed and checks it can be written; returns its absolute path."""
  if not workdir or not str(workdir).strip():
    raise ConfigError('--workdir is empty: give a folder for checkpoints, logs and results.')
  path = os.path.abspath(workdir)  # As the runs take it (no ~ expansion).
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'--workdir={workdir} is a file, not a folder: give a folder (it is made '
                      'if missing).')
  above = _nearest_existing(path)
  if not os.path.isdir(above):
    raise ConfigError(f'--workdir={workdir} is below {above}, which is a file, not a folder.')
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f'.write-test-{uuid.uuid4().hex}')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} cannot be written ({e.strerror}): choose a folder '
                      'you may write to.') from None
  return path


def _check_folder(key: str, value: str, what: str) -> str:
  path = os.path.expanduser(value)
  if not os.path.exists(path):
    raise DataError(f'config.{key}={value!r} does not exist: {what}.')
  if not os.path.isdir(path):
    raise DataError(f'config.{key}={value!r} is a file, not a folder: {what}.')
  return path


def _tfds_dir(config: ml_collections.ConfigDict) -> str | None:
  d = config.data
  if not d.tfds_data_dir:
    return None
  path = os.path.expanduser(d.tfds_data_dir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise DataError(f'config.data.tfds_data_dir={d.tfds_data_dir!r} is a file, not a folder: '
                    "point it at a folder for prepared datasets (made if missing), or '' for "
                    "TFDS's default.")
  above = _nearest_existing(path)
  if not os.path.isdir(above):
    raise DataError(f'config.data.tfds_data_dir={d.tfds_data_dir!r} is below {above}, which is '
                    'a file, not a folder.')
  return path


def check_idx_files(folder: str, name: str) -> None:
  """Reads the four IDX files of `folder` whole (a truncated or garbled file raises DataError)."""
  for split in idx.SPLIT_PREFIXES:
    idx.read_pair(*idx.split_paths(folder, split))
  del name


def text_prepared(data_dir: str | None) -> bool:
  """Whether Tiny Shakespeare is prepared under `data_dir` (None: TFDS's default), without TFDS."""
  folder = os.path.join(data_dir or split_cache.default_data_dir(), 'char_text',
                        'tiny_shakespeare', '1.0.0')
  return os.path.isfile(os.path.join(folder, 'dataset_info.json'))


def check_data(config: ml_collections.ConfigDict) -> None:
  """Checks the data folders a run would read (only those not prepared yet)."""
  data_dir = _tfds_dir(config)
  d = config.data
  text = config.get('job') == 'prune_pretrained' or d.get('name') == 'tiny_shakespeare'
  if text:
    if d.text_dir and not text_prepared(data_dir):
      folder = _check_folder('data.text_dir', d.text_dir,
                             "point it at the folder of Tiny Shakespeare's input.txt, or set it "
                             "to '' to download it")
      if not os.path.isfile(os.path.join(folder, 'input.txt')):
        raise DataError(f'config.data.text_dir={d.text_dir!r} holds no input.txt: put Tiny '
                        "Shakespeare's input.txt there, or set it to '' to download it.")
    return
  if d.source != 'idx' or not d.idx_dir:
    return
  if split_cache.fingerprint(split_cache.prepared_dir(data_dir, d.name)) is not None:
    return  # Prepared already: the IDX files are not read again.
  folder = _check_folder('data.idx_dir', d.idx_dir,
                         f'point it at the four {d.name} IDX files (for Fashion-MNIST on '
                         'Debian/Ubuntu: apt-get install dataset-fashion-mnist), or set it to '
                         "'' to download them")
  check_idx_files(folder, d.name)


def check_dense_dir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """`prune.dense_dir`, when set, must be another folder than the sweep's own workdir."""
  dense = config.prune.dense_dir
  if not dense:
    return
  path = os.path.abspath(dense)
  if path == os.path.abspath(workdir):
    raise ConfigError(f'config.prune.dense_dir={dense!r} is the sweep\'s own --workdir: the '
                      "sweep would overwrite that run's results; give another --workdir, or "
                      "leave prune.dense_dir '' to train the dense model in WORKDIR/dense.")
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'config.prune.dense_dir={dense!r} is a file, not a finished dense '
                      'workdir.')


def check_run(config: ml_collections.ConfigDict, workdir: str,
              reference: ml_collections.ConfigDict | None = None) -> None:
  """Every check of this module and `config.validate`, in the order a user would fix them.

  Args:
    config: the run's config.
    workdir: its --workdir (made here when missing).
    reference: the config `config` derives from (configs/default.py) to check keys and types
      against; None for configs of their own (the pretrained-LM workflow): numbers only.
  """
  from bigmodel_jax import config as config_lib  # Not at the top: config imports data, models.
  if reference is not None:
    check_keys_and_types(config, reference)
  else:
    check_finite(config)
  config_lib.validate(config)
  check_data(config)
  if workdir and config.get('job') != 'prune_pretrained' and config.prune.enabled:
    check_dense_dir(config, workdir)
  check_workdir(workdir)
