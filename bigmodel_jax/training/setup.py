"""One run set-up: data, model, optimizer (one resolved step count), layout and checkpointer.

Plain training (`training.train_and_evaluate`) and every phase of a compression sweep build their
runs here, so they cannot drift apart: a retraining phase is `run.for_phase(config, masked=True)`,
which keeps the data, model and layout and builds only its own optimizer.
"""

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import optax

from bigmodel_jax import checkpoint, data, losses, models, optim, parallel, pruning, train
from bigmodel_jax import config as config_lib
from bigmodel_jax.train_state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a training phase needs, built once.

  Attributes:
    config: the phase's config.
    datasets: the preprocessed splits on this host.
    steps: the phase's length (`config.resolve_steps`).
    model: the Flax module.
    par: devices, shardings and compiled steps (`parallel.from_config`).
    tx: the optimizer; `pruning.masked` around it when `masked`.
    schedule: its learning-rate schedule (for logging).
    masked: whether the state carries masks (a pruned model).
  """
  config: ml_collections.ConfigDict
  datasets: data.Datasets
  steps: config_lib.Steps
  model: nn.Module
  par: parallel.Layout
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  masked: bool = False

  @property
  def input_shape(self) -> tuple[int, ...]:
    return self.datasets.train.inputs.shape[1:]

  @property
  def tokens_per_example(self) -> int:
    """Tokens a language model (`models.TEXT_MODELS`) predicts per example, i.e. its window
    (data.seq_len); 0 for other models."""
    if self.config.model.name not in models.TEXT_MODELS:
      return 0
    return math.prod(self.datasets.train.targets.shape[1:])

  @property
  def eval_loss_fn(self) -> train.LossFn:
    return losses.LOSSES[self.config.loss]

  @property
  def train_loss_fn(self) -> train.LossFn:
    """Training's loss, label-smoothed when configured (evaluation keeps the plain one)."""
    return losses.train_loss(self.config.loss, self.config.label_smoothing)

  @property
  def init(self) -> Callable[[], TrainState]:
    """() -> the initial state (pure: wrap it in `jax.eval_shape` or `par.init`)."""
    return functools.partial(create_train_state, self.config.seed, model=self.model, tx=self.tx,
                             input_shape=self.input_shape, masked=self.masked,
                             input_dtype=self.datasets.train.inputs.dtype)

  @functools.cached_property
  def abstract_state(self) -> TrainState:
    """`init`'s output as ShapeDtypeStructs (traced once per run)."""
    return jax.eval_shape(self.init)

  def checkpointer(self, workdir: str, keep_steps: Sequence[int] = ()) -> checkpoint.Checkpointer:
    """The Orbax checkpointer of a training workdir (WORKDIR/checkpoints)."""
    return checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                   max_to_keep=self.config.checkpoint_max_to_keep,
                                   async_save=self.config.checkpoint_async, keep_steps=keep_steps)

  def restore(self, ckpt: checkpoint.Checkpointer, step: int) -> tuple[TrainState, dict]:
    """(state, meta) of checkpoint `step`, restored straight into this run's shardings,
    whatever device count wrote it."""
    abstract = self.abstract_state
    arrays, meta = ckpt.restore(step, self.par.abstract(abstract.arrays()))
    return abstract.replace_arrays(arrays), meta

  def for_phase(self, config: ml_collections.ConfigDict, *, masked: bool) -> 'Run':
    """A run of `config` (same data, model and layout; e.g. retraining) with its own optimizer."""
    config_lib.validate(config, prune=False)
    steps = config_lib.resolve_steps(config, len(self.datasets.train))
    tx, schedule = _optimizer(config, steps, masked)
    return dataclasses.replace(self, config=config, steps=steps, tx=tx, schedule=schedule,
                               masked=masked)


def _optimizer(config: ml_collections.ConfigDict, steps: config_lib.Steps, masked: bool):
  tx, schedule = optim.create_optimizer(config.optimizer, steps.per_epoch, steps.total)
  if masked:
    # Masking the updates keeps pruned weights at zero; the gradients need masking too only
    # when the optimizer looks across entries (global-norm clipping), and it costs a pass.
    tx = pruning.masked(tx, mask_gradients=config.optimizer.grad_clip_norm > 0)
  return tx, schedule


def create_run(config: ml_collections.ConfigDict, *, masked: bool = False) -> Run:
  """Validates `config` and builds its run (reads the dataset; process 0 first on a cluster)."""
  config_lib.validate(config, prune=False)
  par = parallel.from_config(config)
  datasets = parallel.process_zero_first(lambda: data.load_datasets(config.data))
  steps = config_lib.resolve_steps(config, len(datasets.train))
  model = models.create_model(config.model, datasets.num_classes)
  par.set_logical_axes(models.logical_axes(model, datasets.train.inputs.shape[1:],
                                           datasets.train.inputs.dtype))
  tx, schedule = _optimizer(config, steps, masked)
  return Run(config=config, datasets=datasets, steps=steps, model=model, par=par, tx=tx,
             schedule=schedule, masked=masked)
