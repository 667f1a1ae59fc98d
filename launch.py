"""Launches a run: `python launch.py --config=configs/fashion_mnist_mlp.py --workdir=runs/fmnist`.

Kept short on purpose: it parses flags and hands the config to the library. Override any config
value from the command line, e.g. `--config.optimizer.learning_rate=3e-4 --config.num_epochs=2`.
Whatever is wrong with the input (a config file, a key, a value, a path, a damaged checkpoint)
stops before any compute with one sentence and exit status 2 (`bigmodel_jax.cli`).

The terminal shows the project's own lines, warnings and errors; `--verbosity=0` brings back the
INFO logs of JAX, Orbax and TFDS (`--verbosity=1` their DEBUG logs). Compiled programs are kept in
JAX's persistent compilation cache (`logs.XLA_CACHE_DIR`, or $JAX_COMPILATION_CACHE_DIR; set it
empty to turn the cache off), so a second run of the same model skips most of its compile time.
"""

import atexit
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from bigmodel_jax import cli, compress, inputs, logs, parallel, training
from configs import default

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and results; re-use to resume.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
logs.quiet_by_default()


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {" ".join(argv[1:])!r}: give every setting as a flag, e.g. '
             '--config.num_epochs=2.')
  config = FLAGS.config
  pretrained_lm = config.get('job') == 'prune_pretrained'
  cli.run(lambda c, w: inputs.check_run(c, w, None if pretrained_lm else default.get_config()),
          config, FLAGS.workdir)  # Before any compute: keys, types, values, paths.
  logs.use_compilation_cache()
  if pretrained_lm:
    job = compress.pretrained_lm.run
  elif config.prune.enabled:
    job = compress.run
  else:
    job = training.train_and_evaluate

  def start(config, workdir):
    parallel.initialize_distributed(config.parallelism)  # Before any other JAX call.
    job(config, workdir)
  cli.run(start, config, FLAGS.workdir)
  _exit_now()


def _exit_now():
  """Ends a finished run without tearing the interpreter down module by module (~0.8 s with JAX,
  Orbax and TFDS loaded, on 2 cores): the run's files are closed and its checkpoints finalized
  by now; exit handlers (logging, jax.distributed's shutdown) still run, streams are flushed."""
  atexit._run_exitfuncs()  # noqa: SLF001  (what a normal exit runs first)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
