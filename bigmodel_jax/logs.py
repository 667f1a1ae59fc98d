"""What reaches the terminal: the project's own lines, warnings and errors, not library INFO logs.

JAX, Orbax and TFDS log through Python `logging` (Orbax and TFDS via absl); absl puts its handler
on the root logger and sets the root level from `--verbosity`. `quiet_by_default` makes that
flag's default WARNING (-1), so library INFO lines stay off unless `--verbosity=0` asks for them,
while every library's warnings and errors still show. The lines people need (what a run is doing,
what it prepared, where results went) are printed by the project: `say` here, `metrics.Console`
in the loops.
"""

import contextlib
import io
import os
import sys

from absl import flags
from absl import logging as absl_logging

# Where launch.py keeps compiled programs between runs ($XDG_CACHE_HOME honoured).
XLA_CACHE_DIR = os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
                             'bigmodel_jax', 'xla')
# Programs that compile faster than this are not worth a cache file (the learning-rate jit, ...).
XLA_CACHE_MIN_COMPILE_S = 0.1
_quieted_cpp = []  # Non-empty once quiet_by_default set TF_CPP_MIN_LOG_LEVEL itself.


def quiet_by_default() -> None:
  """Makes absl's `--verbosity` default WARNING: call at import time of an entry point, and pass
  `parse_flags` to `app.run` (absl's own parser raises an unset verbosity to INFO)."""
  flags.FLAGS.set_default('verbosity', absl_logging.WARNING)  # What --helpfull shows.
  # C++ parts (XLA, gRPC of jax.distributed) read this when they first log: INFO off, WARNING on.
  if 'TF_CPP_MIN_LOG_LEVEL' not in os.environ:
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '1'
    _quieted_cpp.append(True)


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flags parser: absl's, then WARNING for a `--verbosity` not given."""
  from absl import app  # Late: absl.app defines flags of its own when imported.
  rest = app.parse_flags_with_usage(argv)
  apply_verbosity()
  return rest


def apply_verbosity() -> None:
  """After the flags are parsed: WARNING for a `--verbosity` not given (see `parse_flags`)."""
  if flags.FLAGS['verbosity'].using_default_value:
    flags.FLAGS.verbosity = absl_logging.WARNING  # Marks it set, so absl leaves it alone.
  elif flags.FLAGS.verbosity >= absl_logging.INFO and _quieted_cpp:
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '0'  # Asked for INFO: the C++ parts' too.


def use_compilation_cache() -> None:
  """Turns on JAX's persistent compilation cache in `XLA_CACHE_DIR` unless the environment
  configures it ($JAX_COMPILATION_CACHE_DIR; empty = off)."""
  import jax  # Late: this module is imported before flags are parsed, jax need not be.
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return
  jax.config.update('jax_compilation_cache_dir', XLA_CACHE_DIR)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', XLA_CACHE_MIN_COMPILE_S)


def say(text: str) -> None:
  """Prints one of the project's lines for people (stdout, flushed at once)."""
  print(text, file=sys.stdout, flush=True)


@contextlib.contextmanager
def without_prints():
  """Swallows what the body prints to stdout (TFDS prints two lines per prepared dataset that
  repeat the project's own); stderr, where its progress bars go, is left alone."""
  with contextlib.redirect_stdout(io.StringIO()):
    yield
