"""Default configuration: every key the library reads, one comment each.

Experiment configs import this file and override only what differs. The config
is locked by `launch.py`, so a misspelled key in a file or on the command line
is refused before any compute.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = 'default'  # Run name written to results.json and logs.
  config.seed = 0  # Seeds init, dropout (folded with the step) and shuffling (folded with the epoch).

  # --- Data -----------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.name = 'fashion_mnist'  # 'mnist' or 'fashion_mnist'.
  # Where examples come from:
  #   'idx'  - our TFDS builder over the four (Fashion-)MNIST IDX files: read from `idx_dir`,
  #            or downloaded (checksum-verified) when `idx_dir` is ''. No TensorFlow needed.
  #   'tfds' - TFDS's own catalog dataset of the same name (preparing it needs tensorflow).
  data.source = 'idx'
  data.idx_dir = '/usr/share/datasets/fashion-mnist'  # Folder of the 4 IDX .gz files; '' = download.
  data.tfds_data_dir = ''  # Where TFDS keeps prepared datasets; '' = TFDS's default (~/tensorflow_datasets).
  data.normalize = True  # After scaling to [0, 1], subtract the train set's mean and divide by its std.
  data.shuffle = True  # Reshuffle the train set every epoch (permutation from seed and epoch).
  data.validation_size = 0  # >0: hold out this many train examples for per-epoch eval; test evaluated at the end.
  data.max_train_examples = 0  # >0: use only the first N train examples (quick experiments, tests).
  data.max_eval_examples = 0  # >0: use only the first N eval examples.

  # --- Model ----------------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  model.name = 'mlp'  # Key of bigmodel_jax.models.MODELS.
  model.hidden_sizes = (512, 256)  # Hidden layer widths; the output width comes from the dataset.
  model.activation = 'relu'  # relu | sigmoid | tanh | gelu | silu | leaky_relu | elu.
  # Kernel initializer: lecun_normal | he_normal | he_uniform | xavier_normal | xavier_uniform
  # | normal (std = init_scale) | uniform (U[-init_scale, init_scale]) | torch_default.
  model.kernel_init = 'lecun_normal'
  model.init_scale = 0.01  # Std of 'normal' / half-width of 'uniform'; ignored by the others.
  model.dropout_rate = 0.0  # Dropout after each hidden activation (0 = off).

  # --- Loss -----------------------------------------------------------------
  config.loss = 'cross_entropy'  # 'cross_entropy' (softmax) or 'mse' (on one-hot targets).

  # --- Optimizer ------------------------------------------------------------
  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = 'adam'  # sgd | adam | adamw.
  opt.learning_rate = 1e-3  # Peak learning rate.
  opt.schedule = 'constant'  # constant | warmup_cosine | step.
  opt.warmup_epochs = 0.0  # Linear warm-up from 0 to the peak (warmup_cosine only).
  opt.end_learning_rate_factor = 0.0  # warmup_cosine ends at learning_rate * this.
  opt.decay_every_epochs = 3.0  # step: multiply by decay_factor every this many epochs.
  opt.decay_factor = 0.1  # step: the multiplier.
  opt.momentum = 0.9  # sgd only; 0 = plain SGD.
  opt.nesterov = False  # sgd only.
  opt.b1 = 0.9  # adam/adamw first-moment decay.
  opt.b2 = 0.999  # adam/adamw second-moment decay.
  opt.eps = 1e-8  # adam/adamw epsilon.
  # Weight decay on kernels (never biases): decoupled for adamw, an L2 term for sgd/adam.
  opt.weight_decay = 0.0
  opt.grad_clip_norm = 0.0  # >0: clip gradients to this global norm.

  # --- Training loop --------------------------------------------------------
  config.batch_size = 64  # Training examples per step.
  config.eval_batch_size = 1000  # Evaluation examples per step (the last batch is padded and masked).
  config.num_epochs = 10  # Epochs to train (ignored when num_train_steps > 0).
  config.num_train_steps = -1  # >0: train exactly this many steps instead of num_epochs.
  config.steps_per_call = 100  # Steps fused into one compiled call (lax.scan); 1 = a call per step.
  config.log_every_steps = 500  # Train scalars to TensorBoard and a progress line, roughly this often.
  config.early_stopping_patience = 0  # >0: stop after this many evals without eval-loss improvement.
  config.early_stopping_min_delta = 0.0  # Smallest eval-loss decrease that counts as improvement.

  # --- Checkpoints, logs, profiling -----------------------------------------
  config.checkpoint_every_steps = 0  # >0: also checkpoint mid-epoch; epochs always end with one.
  config.checkpoint_max_to_keep = 3  # Keep the newest N checkpoints.
  config.checkpoint_async = True  # Write checkpoints in the background while training goes on.
  config.profile_steps = 0  # >0: jax.profiler trace of about this many steps, in WORKDIR/profile.
  config.write_plot = True  # Write WORKDIR/curves.png at the end.
  return config
