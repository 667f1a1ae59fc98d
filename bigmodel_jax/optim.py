"""Optax optimizers and learning-rate schedules built from config."""

import jax
import ml_collections
import optax

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'warmup_cosine', 'step')


def create_learning_rate_schedule(
    opt_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
  """Returns step -> learning rate for `opt_config.schedule`."""
  peak = opt_config.learning_rate
  if opt_config.schedule == 'constant':
    return optax.constant_schedule(peak)
  if opt_config.schedule == 'warmup_cosine':
    warmup = (opt_config.warmup_steps if opt_config.warmup_steps > 0
              else int(round(opt_config.warmup_epochs * steps_per_epoch)))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak * opt_config.end_learning_rate_factor,
    )
  if opt_config.schedule == 'step':
    return optax.exponential_decay(
        init_value=peak,
        transition_steps=max(1, int(round(opt_config.decay_every_epochs * steps_per_epoch))),
        decay_rate=opt_config.decay_factor,
        staircase=True,
    )
  raise ValueError(f'unknown schedule {opt_config.schedule!r}')


def _kernels_only(params):
  # Decay matrices, not biases or scales: the usual convention (and what pruning filters use).
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def create_optimizer(
    opt_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer named by `opt_config.name` and its schedule.

  Returns:
    (transformation, schedule); the schedule is returned for logging the learning rate.
  """
  schedule = create_learning_rate_schedule(opt_config, steps_per_epoch, total_steps)
  chain = []
  if opt_config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  wd = opt_config.weight_decay
  if opt_config.name == 'adamw':
    chain.append(optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                             weight_decay=wd, mask=_kernels_only))
  else:
    if wd > 0:  # Coupled L2: the decay term goes through the optimizer like a gradient.
      chain.append(optax.add_decayed_weights(wd, mask=_kernels_only))
    if opt_config.name == 'adam':
      chain.append(optax.adam(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps))
    elif opt_config.name == 'sgd':
      chain.append(optax.sgd(schedule, momentum=opt_config.momentum or None,
                             nesterov=opt_config.nesterov))
    else:
      raise ValueError(f'unknown optimizer {opt_config.name!r}')
  return optax.chain(*chain), schedule
