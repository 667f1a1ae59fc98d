"""What every phase of a sweep shares: the run set-up, the test split and its evaluation."""

import copy
import os

import jax
import ml_collections
import numpy as np

from bigmodel_jax import checkpoint, metrics, training
from bigmodel_jax.errors import CheckpointDamagedError, ConfigError
from bigmodel_jax.train_state import TrainState


def retrain_config(config: ml_collections.ConfigDict, epochs: int) -> ml_collections.ConfigDict:
  """The config of a masked retraining phase of `epochs` epochs (or `prune.retrain_steps`)."""
  c = copy.deepcopy(config)
  with c.unlocked():
    c.num_epochs, c.num_train_steps = epochs, config.prune.retrain_steps or -1
    c.optimizer.learning_rate = config.prune.retrain_learning_rate
    c.optimizer.warmup_epochs = config.prune.retrain_warmup_epochs
    c.early_stopping_patience = 0
    c.write_plot = False
  return c


class Context:
  """The sweep's run set-up (data, model, layout: built once) and the dense model's template.

  Args:
    config: the whole config (validated).
    workdir: the sweep's folder.
    console: where phase lines go.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               console: metrics.Console):
    self.config, self.workdir, self.console = config, workdir, console
    self.run = training.create_run(config)
    self.model, self.par = self.run.model, self.run.par
    self.steps_per_epoch = self.run.steps.per_epoch
    self.input_shape = self.run.input_shape
    datasets = self.run.datasets
    self.train_split = datasets.train
    self.test_split = datasets.test if datasets.test is not None else datasets.eval
    self.eval_call = self.par.eval_call(loss_fn=self.run.eval_loss_fn)
    self.template = self.par.init(self.run.init)  # Evaluation swaps params in.

  def retrain_run(self, epochs: int) -> training.Run:
    """The run of a masked retraining phase (same data, model and layout; a fresh optimizer)."""
    return self.run.for_phase(retrain_config(self.config, epochs), masked=True)

  def restore(self, run_dir: str, run: training.Run, step: int | None = None) -> TrainState:
    """The state of the training workdir `run_dir` at `step` (default: its latest checkpoint)."""
    ckpt = checkpoint.Checkpointer(os.path.join(run_dir, 'checkpoints'), async_save=False)
    try:
      step = ckpt.latest_step() if step is None else step
      if step is None or step not in ckpt.all_steps():
        raise ConfigError(
            f'No dense checkpoint{"" if step is None else f" at step {step}"} in {run_dir}: '
            'run the dense phase first (leave prune.dense_dir empty to train it here), or point '
            'prune.dense_dir at a finished run of the same model.')
      bad = ckpt.problems(step)
      if bad:
        raise CheckpointDamagedError(
            f'The checkpoint step {step} in {run_dir} is damaged ({", ".join(bad[:4])}): re-run '
            'the command that wrote it to repair it (it resumes from its newest intact step), '
            'or point prune.dense_dir at another finished run.')
      state, _ = run.restore(ckpt, step)
    finally:
      ckpt.close()
    return state

  def dense_state(self, dense_dir: str, step: int | None = None) -> TrainState:
    """Restores the dense run's state (latest, or `step`)."""
    return self.restore(dense_dir, self.run, step)

  def test_metrics(self, params) -> dict[str, float]:
    """{'loss', 'accuracy'} of `params` on the test split."""
    state = self.template.replace(params=params)
    return training.evaluate(self.eval_call, self.par, state, self.test_split,
                             self.par.eval_batch_size)

  def test_accuracy(self, params) -> float:
    return self.test_metrics(params)['accuracy']

  def score_batches(self) -> list[dict[str, np.ndarray]]:
    """`prune.score_batches` training batches, drawn from the seed (saliency, calibration)."""
    p = self.config.prune
    rng = np.random.default_rng(self.config.seed + 7919)
    idx = rng.permutation(len(self.train_split))[:p.score_batches * p.score_batch_size]
    return [{'inputs': self.train_split.inputs[chunk], 'targets': self.train_split.targets[chunk]}
            for chunk in np.array_split(idx, max(1, len(idx) // p.score_batch_size))]

  def seed_key(self) -> jax.Array:
    """The key of random scores (the control)."""
    return jax.random.PRNGKey(self.config.seed + 1)
