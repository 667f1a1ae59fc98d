"""Training: one run set-up (`setup`), the loop (`loop`), its side work (`hooks`), the workdir.

    results = training.train_and_evaluate(config, workdir)      # what launch.py runs

    run = training.create_run(config)                           # data, model, optimizer, layout
    results = training.train(run, workdir, training.Phase(log_prefix='[dense] '))
"""

from bigmodel_jax.training.loop import Phase, evaluate, train, train_and_evaluate
from bigmodel_jax.training.setup import Run, create_run
from bigmodel_jax.training.workdir import lock_workdir, locked

__all__ = ['Phase', 'Run', 'create_run', 'evaluate', 'lock_workdir', 'locked', 'train',
           'train_and_evaluate']
