"""Bad inputs, tried as a hostile user would: each stops before compute with one sentence on
stderr and exit status 2, never a traceback (issue 17). No training runs here: flags are parsed
in-process by `cli.parse_flags`, the rest goes through `cli.run(inputs.check_run, ...)` as
launch.py does; three cases run launch.py itself in a subprocess."""

import gzip
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from bigmodel_jax import cli, data, inputs
from bigmodel_jax.data import idx, idx_builder, split_cache, text
from configs import default
from tests.conftest import REPO_ROOT, make_images

TINY = os.path.join(REPO_ROOT, 'configs', 'tiny.py')


def _one_sentence(capsys, excinfo, status=2) -> str:
  assert excinfo.value.code == status
  err = capsys.readouterr().err.strip()
  assert 'Traceback' not in err
  assert len(err.splitlines()) == 1 and err.startswith('error: '), err
  return err


def _parse(argv):
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'folder', flag_values=fv)
  config_flags.DEFINE_config_file('config', None, 'file', flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=fv)
  cli.parse_flags(argv, fv)
  return fv


@pytest.fixture(scope='module')
def config_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp('configs')
  files = {'syntax.py': 'def get_config(:\n', 'noget.py': 'X = 1\n',
           'raises.py': 'raise RuntimeError("boom")\n',
           'imports.py': 'import a_module_nobody_has\n',
           'notdict.py': 'def get_config():\n  return 5\n', 'notpy.txt': 'hello\n',
           'keyerror.py': 'def get_config():\n  return {}["x"]\n'}
  for name, body in files.items():
    (folder / name).write_text(body)
  (folder / 'adir.py').mkdir()
  return folder


FLAG_CASES = [  # (argv after the program name, what the sentence says)
    (['--config=/no/such/config.py', '--workdir=w'], 'does not exist'),
    (['--config=', '--workdir=w'], '--config is empty'),
    (['--config={cfg}/adir.py', '--workdir=w'], 'is not a file'),
    (['--config={cfg}/syntax.py', '--workdir=w'], 'has a syntax error at line 1'),
    (['--config={cfg}/noget.py', '--workdir=w'], 'defines no get_config()'),
    (['--config={cfg}/raises.py', '--workdir=w'], 'RuntimeError: boom'),
    (['--config={cfg}/imports.py', '--workdir=w'], "No module named 'a_module_nobody_has'"),
    (['--config={cfg}/notdict.py', '--workdir=w'], "get_config() returned 'int'"),
    (['--config={cfg}/notpy.txt', '--workdir=w'], '--config={cfg}/notpy.txt'),
    (['--config={cfg}/keyerror.py', '--workdir=w'], "failed while loading: KeyError: 'x'"),
    ([f'--config={TINY}', '--workdir=w', '--config.optimzer.learning_rate=1'],
     "--config.optimzer.learning_rate: the config has no key 'optimzer' (did you mean "
     "'optimizer'?)"),
    ([f'--config={TINY}', '--workdir=w', '--config.model.hiden_sizes=(3,)'], "'hiden_sizes'"),
    ([f'--config={TINY}', '--workdir=w', '--config.num_epochs=ten'], '--config.num_epochs=ten'),
    ([f'--config={TINY}', '--workdir=w', '--config.num_epochs=1e3'], '--config.num_epochs=1e3'),
    ([f'--config={TINY}', '--workdir=w', '--config.seed=1.5'], '--config.seed=1.5'),
    ([f'--config={TINY}', '--workdir=w', '--config.optimizer.learning_rate=fast'],
     'could not convert'),
    ([f'--config={TINY}', '--workdir=w', '--config.data.shuffle=maybe'], 'boolean'),
    ([f'--config={TINY}', '--workdir=w', '--config.batch_size'], 'Missing value'),
    ([f'--config={TINY}', '--workdir=w', '--config.optimizer=3'], 'is not a dict'),
    ([f'--config={TINY}'], '--workdir is required'),
    (['--workdir=w'], '--config is required'),
    ([f'--config={TINY}', '--workdir=w', '--no_such_flag=1'], "Unknown command line flag"),
]


@pytest.mark.parametrize('argv,message', FLAG_CASES, ids=[' '.join(c[0])[-60:] for c in
                                                          FLAG_CASES])
def test_bad_flags_are_one_sentence(argv, message, config_files, capsys):
  argv = ['launch.py'] + [a.replace('{cfg}', str(config_files)) for a in argv]
  with pytest.raises(SystemExit) as excinfo:
    _parse(argv)
  assert message.replace('{cfg}', str(config_files)) in _one_sentence(capsys, excinfo)


def _loose(config):
  """`config` as a config file may build it: a ConfigDict of its own, without type checks."""
  return ml_collections.ConfigDict(config.to_dict(), type_safe=False)


def _set(config, key, value):
  *parents, leaf = key.split('.')
  node = config
  for p in parents:
    node = node[p]
  with node.unlocked():
    node[leaf] = value


CONFIG_CASES = [  # (key, value, what the sentence says): values a config file or override sets
    ('seed', -1, 'config.seed=-1 is invalid: it must be an integer in [0, 2**32)'),
    ('seed', 2**40, 'config.seed=1099511627776 is invalid'),
    ('batch_size', '64', "config.batch_size='64' is a str; it must be a number"),
    ('num_epochs', 2.5, 'config.num_epochs=2.5 is invalid: it must be a positive integer'),
    ('optimizer.learning_rate', float('inf'), 'must be a finite number'),
    ('optimizer.learning_rate', float('nan'), 'config.optimizer.learning_rate=nan'),
    ('optimizer.learning_rate', -1.0, 'config.optimizer.learning_rate=-1.0 is invalid'),
    ('optimizer.b2', 1.0, 'config.optimizer.b2=1.0 is invalid: it must be in [0, 1)'),
    ('optimizer.nesterov', 1, 'config.optimizer.nesterov=1 is a number; it must be a bool'),
    ('model.hidden_sizes', ('32', 'a'), 'tuple of positive integers'),
    ('model.hidden_sizes', 32, 'config.model.hidden_sizes=32 is a number; it must be a sequence'),
    ('model.dropout_rate', -0.1, 'config.model.dropout_rate=-0.1'),
    ('data.name', 'imagenet', "config.data.name='imagenet' is not accepted"),
    ('data.source', 'http', "config.data.source='http' is not accepted"),
    ('model.name', 'gpt', "cannot read config.data.name='fashion_mnist'"),
    ('parallelism.mode', 'magic', None),  # Checked once devices are known (below).
    ('eval_every_steps', 2.5, 'config.eval_every_steps=2.5'),
    ('checkpoint_max_to_keep', 0, 'config.checkpoint_max_to_keep=0'),
    ('optimzer', 1, 'config.optimzer is not a key of configs/default.py (did you mean '
     'config.optimizer?)'),
    ('optimizer', 3, 'config.optimizer=3 replaces a whole section'),
    ('prune.enabled', 'yes', "config.prune.enabled='yes' is a str; it must be a bool"),
    ('prune.variants', ('magnitude/everything',), "has kind 'everything'"),
    ('prune.sparsities', (1.5,), 'sparsit'),
    ('optimizer.warmup_steps', -5, 'config.optimizer.warmup_steps=-5 is invalid'),
    ('model.name', 'vit', None),  # Fine with patch_size 7; 5 does not divide 28 (below).
    ('label_smoothing', 0.1, None),  # Fine on its own; with mse it conflicts (below).
]


def _check(config, workdir, capsys):
  with pytest.raises(SystemExit) as excinfo:
    cli.run(lambda c, w: inputs.check_run(c, w, default.get_config()), config, str(workdir))
  return _one_sentence(capsys, excinfo)


@pytest.mark.parametrize('key,value,message', [c for c in CONFIG_CASES if c[2]],
                         ids=[f'{c[0]}={c[1]!r}' for c in CONFIG_CASES if c[2]])
def test_bad_values_are_one_sentence_before_compute(key, value, message, tiny_config, tmp_path,
                                                    capsys):
  config = _loose(tiny_config)
  _set(config, key, value)
  if key.startswith('prune.') and key != 'prune.enabled':
    _set(config, 'prune.enabled', True)
  assert message in _check(config, tmp_path / 'run', capsys)
  assert not (tmp_path / 'run').exists()  # Refused before the workdir was made.


def test_conflicting_keys_are_one_sentence(tiny_config, tmp_path, capsys):
  tiny_config.model.name, tiny_config.model.patch_size = 'vit', 5
  assert "config.model.patch_size=5 is invalid: it must be a divisor of the images' side 28" in \
      _check(tiny_config, tmp_path / 'a', capsys)
  tiny_config.model.name, tiny_config.model.patch_size = 'mlp', 7
  _set(tiny_config, 'loss', 'mse')
  _set(tiny_config, 'label_smoothing', 0.1)
  assert "needs config.loss='cross_entropy'" in _check(tiny_config, tmp_path / 'a', capsys)
  tiny_config.loss, tiny_config.label_smoothing = 'cross_entropy', 0.0
  tiny_config.prune.enabled = True
  tiny_config.prune.dense_dir = str(tmp_path / 'a')
  assert "is the sweep's own --workdir" in _check(tiny_config, tmp_path / 'a', capsys)
  (tmp_path / 'file').write_text('x')
  tiny_config.prune.dense_dir = str(tmp_path / 'file')
  assert 'is a file, not a finished dense workdir' in _check(tiny_config, tmp_path / 'b', capsys)


def _unwritable(tmp_path):
  """A folder nobody may write to: chmod 555 for a normal user, /proc for root (who ignores
  permission bits)."""
  if os.getuid() == 0:
    return '/proc'
  folder = tmp_path / 'readonly'
  folder.mkdir()
  folder.chmod(0o555)
  return str(folder)


def test_bad_workdirs_are_one_sentence(tiny_config, tmp_path, capsys):
  (tmp_path / 'file').write_text('x')
  cases = [(tmp_path / 'file', 'is a file, not a folder'),
           (tmp_path / 'file' / 'below', f'is below {tmp_path / "file"}, which is a file'),
           (os.path.join(_unwritable(tmp_path), 'run'), 'cannot be written'),
           ('', '--workdir is empty'), ('   ', '--workdir is empty')]
  for workdir, message in cases:
    assert message in _check(tiny_config, workdir, capsys), workdir
  if os.getuid() != 0:
    assert 'cannot be written' in _check(tiny_config, _unwritable(tmp_path), capsys)


def _idx_folder(folder, damage=None):
  idx.write_split(str(folder), 'train', *make_images(40, seed=1))
  idx.write_split(str(folder), 'test', *make_images(20, seed=2))
  if damage is not None:
    damage(folder / 'train-images-idx3-ubyte.gz')
  return str(folder)


def _truncate(path):
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _not_gzip(path):
  path.write_bytes(b'this is not gzip data at all')


def _wrong_magic(path):
  with gzip.open(path, 'wb') as f:
    f.write(b'\x00\x00\x08\x04' + bytes(100))


def _short_data(path):
  raw = gzip.decompress(path.read_bytes())
  with gzip.open(path, 'wb') as f:
    f.write(raw[:-10])


def _missing(path):
  path.unlink()


DATA_CASES = [  # (data key, a function making its value in tmp_path, what the sentence says)
    ('idx_dir', lambda p: str(p / 'nowhere'), 'does not exist'),
    ('idx_dir', lambda p: (p / 'f').write_text('x') and str(p / 'f'), 'is a file, not a folder'),
    ('idx_dir', lambda p: (p / 'empty').mkdir() or str(p / 'empty'),
     "train-images-idx3-ubyte.gz not found in"),
    ('idx_dir', lambda p: _idx_folder(p / 'm', _missing), 'train-images-idx3-ubyte.gz not found'),
    ('idx_dir', lambda p: _idx_folder(p / 't', _truncate), 'is truncated or damaged'),
    ('idx_dir', lambda p: _idx_folder(p / 'g', _not_gzip), 'is truncated or damaged'),
    ('idx_dir', lambda p: _idx_folder(p / 'w', _wrong_magic), 'is not an IDX file with magic'),
    ('idx_dir', lambda p: _idx_folder(p / 's', _short_data), 'bytes of data'),
    ('tfds_data_dir', lambda p: (p / 'f').write_text('x') and str(p / 'f'),
     'config.data.tfds_data_dir='),
    ('tfds_data_dir', lambda p: (p / 'f').write_text('x') and str(p / 'f' / 'below'),
     'which is a file, not a folder'),
]


@pytest.mark.parametrize('key,make,message', DATA_CASES,
                         ids=[f'{c[0]}-{c[2][:30]}' for c in DATA_CASES])
def test_bad_data_paths_are_one_sentence(key, make, message, tiny_config, tmp_path, capsys):
  tiny_config.data.tfds_data_dir = str(tmp_path / 'tfds')  # Not prepared: the files are read.
  _set(tiny_config, f'data.{key}', make(tmp_path))
  assert message in _check(tiny_config, tmp_path / 'run', capsys)


def _shakespeare(tmp_path):
  from configs import shakespeare_gpt
  config = shakespeare_gpt.get_config()
  config.data.text_dir = ''  # A clone without ../shared.
  config.data.tfds_data_dir = str(tmp_path / 'tfds')
  return config


def test_text_dir_without_input_txt(tmp_path, capsys):
  config = _shakespeare(tmp_path)
  config.data.text_dir = str(tmp_path)
  assert 'holds no input.txt' in _check(config, tmp_path / 'run', capsys)
  config.data.text_dir = str(tmp_path / 'nowhere')
  assert 'does not exist' in _check(config, tmp_path / 'run', capsys)


def test_offline_shakespeare_says_where_to_put_input_txt(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(text, 'URL', 'http://127.0.0.1:9/input.txt')  # Refused at once: offline.
  config = _shakespeare(tmp_path)
  with pytest.raises(SystemExit) as excinfo:
    cli.run(lambda c, w: data.load_datasets(c.data), config, str(tmp_path / 'run'))
  err = _one_sentence(capsys, excinfo)
  assert 'input.txt' in err and '--config.data.text_dir=FOLDER' in err and 'offline?' in err


def test_offline_idx_download_is_one_sentence(tiny_config, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(idx_builder._URLS, 'fashion_mnist', 'http://127.0.0.1:9/')
  tiny_config.data.idx_dir = ''
  tiny_config.data.tfds_data_dir = str(tmp_path / 'tfds')
  with pytest.raises(SystemExit) as excinfo:
    cli.run(lambda c, w: data.load_datasets(c.data), tiny_config, str(tmp_path / 'run'))
  assert '--config.data.idx_dir=FOLDER' in _one_sentence(capsys, excinfo)


@pytest.mark.parametrize('extra,message', [
    (['--config.optimzer.learning_rate=1'], "no key 'optimzer'"),
    (['--config.seed=-1'], 'config.seed=-1 is invalid'),
    (['unexpected'], "unexpected arguments 'unexpected'"),
])
def test_launch_py_itself_says_one_sentence(extra, message, tiny_config, tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'launch.py'), f'--config={TINY}',
       f'--workdir={tmp_path / "run"}', f'--config.data.idx_dir={tiny_config.data.idx_dir}',
       *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ')
  assert message in proc.stderr
  assert not (tmp_path / 'run').exists()


def test_a_damaged_prepared_dataset_is_one_sentence(tiny_config, tmp_path, capsys):
  tiny_config.data.tfds_data_dir = str(tmp_path / 'tfds')
  data.load_datasets(tiny_config.data)  # Prepared, and its splits cached.
  capsys.readouterr()  # TFDS's progress bars.
  folder = split_cache.prepared_dir(tiny_config.data.tfds_data_dir, tiny_config.data.name)
  for name in os.listdir(folder):
    if name.startswith(split_cache.PREFIX):
      os.remove(os.path.join(folder, name))  # The cache goes: TFDS's files are read again.
    elif 'array_record' in name:
      with open(os.path.join(folder, name), 'r+b') as f:
        f.truncate(100)
  with pytest.raises(SystemExit) as excinfo:
    cli.run(lambda c, w: data.load_datasets(c.data), tiny_config, str(tmp_path / 'run'))
  assert 'delete that prepared dataset folder and run again' in _one_sentence(capsys, excinfo)
