"""What `launch.py` runs: flags parsed, inputs checked before any compute, the job dispatched.

Every problem a user can fix ends the same way: one sentence on stderr, `error: ...`, and exit
status 2 (3 for a loss that became NaN); no traceback. What goes wrong before a config exists
(a config file that is missing, does not parse, has no `get_config`, a misspelled or wrongly
typed `--config.KEY`) is caught while the flags are parsed (`parse_flags`); the config and the
paths it names are then checked (`config.validate`, `inputs.check_run`) before JAX starts. An
error nobody foresaw is a bug: it prints one line too, and its traceback goes to a file.
"""

import os
import re
import sys
import tempfile
import traceback

import ml_collections
from absl import flags

from bigmodel_jax import errors, logs

EXIT_USER = 2  # A config, a path or a checkpoint the user can fix.
EXIT_NON_FINITE = 3  # The loss became NaN or infinite.
EXIT_BUG = 1  # Anything else: a bug, with its traceback in a file.
USER_ERRORS = (errors.ConfigError, errors.DataError, errors.CheckpointMismatchError,
               errors.CheckpointDamagedError)


def fail(sentence: str, status: int = EXIT_USER):
  """Prints `error: <sentence>` on stderr and exits with `status`."""
  print(f'error: {_one_line(sentence)}', file=sys.stderr, flush=True)
  sys.exit(status)


def _one_line(text: str) -> str:
  return ' '.join(str(text).split())


def _config_path(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_config_file(path: str | None) -> None:
  """Raises ConfigError unless `path` is a readable Python file (before absl tries it)."""
  if path is None:
    return  # absl's required-flag check says it.
  path = path.split(':', 1)[0]  # config_flags' 'file.py:arg' form.
  if not path:
    raise errors.ConfigError('--config is empty: give a config file such as configs/tiny.py.')
  if not os.path.exists(path):
    raise errors.ConfigError(f'--config={path} does not exist: give a config file such as '
                             'configs/tiny.py (paths are relative to the current folder).')
  if not os.path.isfile(path):
    raise errors.ConfigError(f'--config={path} is not a file: give a config file such as '
                             'configs/tiny.py.')
  if not os.access(path, os.R_OK):
    raise errors.ConfigError(f'--config={path} cannot be read (permissions).')


def _flag_error(e: Exception, argv: list[str]) -> str:
  """One sentence for what went wrong while absl parsed the flags and loaded the config file."""
  path = (_config_path(argv) or '').split(':', 1)[0]
  text = str(e.args[0]) if e.args else ''
  if isinstance(e, (KeyError, AttributeError)) and 'get_config' not in text:
    # A --config.KEY override naming no key of the locked config.
    hint = re.search(r'Did you mean "([^"]+)"', text)
    key = re.search(r'instead of "([^"]+)"', text) or re.search(r"'(\w+)'", text)
    key = key.group(1) if key else '?'
    overrides = [a.split('=', 1)[0] for a in argv if a.startswith('--config.')
                 and f'.{key}.' in a.split('=', 1)[0] + '.']
    if overrides:
      return (f'{overrides[0]}: the config has no key {key!r}'
              + (f' (did you mean {hint.group(1)!r}?)' if hint else '')
              + '; every key is listed in configs/default.py and docs/configs.md.')
  if isinstance(e, SyntaxError):
    return f'--config={path} has a syntax error at line {e.lineno}: {e.msg}.'
  if isinstance(e, AttributeError) and 'get_config' in str(e):
    return (f'--config={path} defines no get_config(): a config file returns its ConfigDict '
            'from get_config() (see configs/tiny.py).')
  if isinstance(e, flags.Error):
    text = _one_line(e).removeprefix('flag ')
    required = re.search(r'Flag (--\w+) must have a value other than None', text)
    if required:
      return (f'{required.group(1)} is required: python launch.py --config=configs/tiny.py '
              '--workdir=runs/tiny')
    if 'Configuration is not available' in text:
      text = text.split('load:', 1)[-1].strip()
      return f'--config={path} could not be loaded: {text}.'
    return text.rstrip('.') + '.'
  return (f'--config={path} failed while loading: {type(e).__name__}: {_one_line(e)} '
          '(a config file must run on its own and return a ConfigDict from get_config()).')


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """`app.run`'s flags parser: absl's parsing with one sentence and exit status 2 on any error,
  then `logs.parse_flags`' verbosity rule (for the global flags only)."""
  try:
    check_config_file(_config_path(argv))
    rest = flag_values(argv)
    config = flag_values['config'].value  # Loads the file now if it was deferred.
    if not isinstance(config, ml_collections.ConfigDict):
      raise errors.ConfigError(f'--config={_config_path(argv)}: get_config() returned '
                               f'{type(config).__name__!r}, not an ml_collections.ConfigDict.')
  except errors.ConfigError as e:
    fail(str(e))
  except SystemExit:
    raise  # --help and friends.
  except Exception as e:  # noqa: BLE001  (whatever a config file raises: one sentence)
    fail(_flag_error(e, argv))
  if flag_values is flags.FLAGS:
    logs.apply_verbosity()
  return rest


def _traceback_file(workdir: str | None) -> str:
  folder = workdir if workdir and os.path.isdir(workdir) else tempfile.gettempdir()
  path = os.path.join(folder, 'error-traceback.txt')
  try:
    with open(path, 'w') as f:
      traceback.print_exc(file=f)
  except OSError:
    return '(could not be written)'
  return path


def run(job, config, workdir: str) -> None:
  """Runs `job(config, workdir)`, mapping every error to one sentence and an exit status."""
  try:
    job(config, workdir)
  except USER_ERRORS as e:
    fail(str(e))
  except errors.NonFiniteLossError as e:
    fail(str(e), EXIT_NON_FINITE)
  except KeyboardInterrupt:
    fail('interrupted; re-run the same command to resume from the newest checkpoint.', 130)
  except Exception as e:  # noqa: BLE001  (a bug: one line here, the traceback in a file)
    fail(f'unexpected {type(e).__name__}: {_one_line(e)[:500]} - this is a bug; the '
         f'traceback is in {_traceback_file(workdir)}; please report it.', EXIT_BUG)
