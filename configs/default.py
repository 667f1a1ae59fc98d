"""Default configuration: every key the library reads, one comment each.

Experiment configs import this file and override only what differs. The config
is locked by `launch.py`, so a misspelled key in a file or on the command line
is refused before any compute.
"""

import ml_collections


# Over 80 lines on purpose: every key of the library in one place, one comment each.
def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = 'default'  # Run name written to results.json and logs.
  config.seed = 0  # Seeds init, dropout (folded with the step) and shuffling (folded with the epoch).

  # --- Data -----------------------------------------------------------------
  config.data = data = ml_collections.ConfigDict()
  data.name = 'fashion_mnist'  # 'mnist', 'fashion_mnist' (images) or 'tiny_shakespeare' (characters).
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
  data.text_dir = ''  # Text: folder holding Tiny Shakespeare's input.txt; '' = download it.
  data.seq_len = 64  # Text: characters per training example (the model's context).

  # --- Model ----------------------------------------------------------------
  config.model = model = ml_collections.ConfigDict()
  model.name = 'mlp'  # Key of bigmodel_jax.models.MODELS.
  model.hidden_sizes = (512, 256)  # Hidden layer widths; the output width comes from the dataset.
  model.activation = 'relu'  # relu | sigmoid | tanh | gelu | silu | leaky_relu | elu.
  # Kernel initializer: lecun_normal | he_normal | he_uniform | xavier_normal | xavier_uniform
  # | normal (std = init_scale) | uniform (U[-init_scale, init_scale]) | torch_default.
  model.kernel_init = 'lecun_normal'
  model.init_scale = 0.01  # Std of 'normal' / half-width of 'uniform'; ignored by the others.
  model.dropout_rate = 0.0  # Dropout after hidden activations / in Transformer blocks (0 = off).
  # Transformers ('gpt' language model, 'vit' image encoder):
  model.num_layers = 4  # Blocks.
  model.num_heads = 4  # Attention heads per block.
  model.embed_dim = 128  # Width of the residual stream.
  model.mlp_ratio = 4  # MLP width / embed_dim.
  model.max_len = 64  # gpt: longest sequence (position table, generation cache); >= data.seq_len.
  model.position = 'learned'  # gpt: 'learned' position table or 'rope' (rotary).
  model.tie_embeddings = True  # gpt: output logits from the token embedding table.
  model.use_bias = False  # gpt: biases in projections and LayerNorms.
  model.patch_size = 7  # vit: square patch side; the image sides must divide by it.
  model.dtype = 'float32'  # Transformers' compute dtype: 'float32' or 'bfloat16' (params stay float32).

  # --- Loss -----------------------------------------------------------------
  config.loss = 'cross_entropy'  # 'cross_entropy' (softmax) or 'mse' (on one-hot targets).
  # cross_entropy only: train against (1 - a) one_hot + a / classes (evaluation keeps the plain
  # loss); 0 = off. Applies to every training phase of a pruning run.
  config.label_smoothing = 0.0

  # --- Optimizer ------------------------------------------------------------
  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = 'adam'  # sgd | adam | adamw.
  opt.learning_rate = 1e-3  # Peak learning rate.
  opt.schedule = 'constant'  # constant | warmup_cosine | step.
  opt.warmup_epochs = 0.0  # Linear warm-up from 0 to the peak (warmup_cosine only).
  opt.warmup_steps = 0  # >0: warm-up length in steps instead of warmup_epochs.
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
  config.eval_every_steps = 0  # >0: also evaluate the eval split every N steps (at the end of the compiled call reaching each multiple); 0 = at epoch ends only.
  config.early_stopping_patience = 0  # >0: stop after this many evals without eval-loss improvement.
  config.early_stopping_min_delta = 0.0  # Smallest eval-loss decrease that counts as improvement.

  # --- Checkpoints, logs, profiling -----------------------------------------
  config.checkpoint_every_steps = 0  # >0: also checkpoint mid-epoch; epochs always end with one.
  config.checkpoint_max_to_keep = 3  # Keep the newest N checkpoints.
  config.checkpoint_async = True  # Write checkpoints in the background while training goes on.
  config.profile_steps = 0  # >0: jax.profiler trace of about this many steps, in WORKDIR/profile.
  config.write_plot = True  # Write WORKDIR/curves.png at the end.

  # --- Devices and hosts (bigmodel_jax/parallel/) ---------------------------
  config.parallelism = par = ml_collections.ConfigDict()
  # single  - plain jit on the first device (the reference).
  # pmap    - jax.pmap data parallelism: state replicated, batch split, gradients pmean-ed.
  # sharded - jit over a Mesh('data', 'fsdp'): batch split over both axes, params / optimizer
  #           state / masks replicated (fsdp = 1) or split over 'fsdp' (FSDP / ZeRO-3 style).
  par.mode = 'sharded'
  par.data = -1  # sharded: devices on the 'data' axis; -1 = the rest (devices / fsdp).
  par.fsdp = 1  # sharded: devices on the 'fsdp' axis that split each large leaf (1 = replicate).
  # sharded: devices on the 'tensor' axis (1 = none): Transformer heads, MLP width and vocabulary
  # are split over it by their logical axis names (parallel.LOGICAL_RULES); the batch is not.
  par.tensor = 1
  par.fsdp_min_size = 1024  # sharded: leaves with fewer elements stay replicated.
  par.num_devices = -1  # One host only: use the first N devices (-1 = all of the cluster's).
  par.distributed = False  # Call jax.distributed.initialize() first (several hosts / processes).
  par.coordinator_address = ''  # 'host:port' of process 0; '' = auto-detect (SLURM, TPU pod, ...).
  par.num_processes = -1  # Processes in the cluster; -1 = auto-detect.
  par.process_id = -1  # This process's index; -1 = auto-detect.
  par.cpu_collectives = 'gloo'  # CPU clusters only: collectives library ('gloo' or 'mpi').
  par.heartbeat_timeout_s = 100  # A dead peer is noticed after this many seconds.

  # --- Pruning (bigmodel_jax/compress.py; off unless enabled) -----------------
  config.prune = prune = ml_collections.ConfigDict()
  prune.enabled = False  # True: launch.py runs dense -> prune -> retrain instead of plain training.
  # What to prune, '<score>/<kind>' each: score magnitude | saliency | sensitivity | random,
  # or the post-training wanda | sparsegpt (layerwise or N:M only, one_shot schedule);
  # kind global | layerwise (unstructured), neuron (whole hidden units, then physically removed),
  # heads (GPT / ViT attention heads; score magnitude = norm of a head's residual contribution on
  # the calibration batches, or random; physically removed) or N:M such as 2:4 (N kept of every M
  # along the input dimension; ignores `sparsities`).
  prune.variants = ('magnitude/global',)
  prune.sparsities = (0.9,)  # Fraction of prunable weights removed (neuron: of hidden units, heads: of each block's heads); a list sweeps.
  prune.schedule = 'one_shot'  # one_shot | iterative (`rounds` prune-retrain rounds) | gradual (Zhu & Gupta).
  prune.include = ('*kernel',)  # Glob patterns of prunable leaves, e.g. 'Dense_[01]/kernel'.
  prune.exclude = ()  # Glob patterns removed from `include` (biases and norms are never matched by default).
  prune.overrides = ''  # Per-layer sparsities, 'PATTERN=S,PATTERN=S' (e.g. 'Dense_2/kernel=0.5'): those leaves are pruned to S on their own, outside the global ranking, by every schedule (iterative: over its rounds; gradual: along its ramp); unstructured global|layerwise variants only.
  # How a sparsity spreads over the prunable layers (unstructured global|layerwise variants of a
  # weight score): 'global' = as the variant's kind says (one ranking of all scores, or the same
  # fraction per layer); 'uniform' = the same fraction per layer; 'erk' = Erdos-Renyi-Kernel
  # (RigL; density ~ sum(dims) / prod(dims), small layers denser). The pruned count is exact.
  prune.distribution = 'global'
  # How pruned weights train: 'masked' = frozen at zero; 'ste' (gradual schedule) = straight-
  # through: the forward sees masked weights, the dense ones get the gradient and the masks are
  # recomputed from them every gradual_every_steps along the ramp; 'set' | 'rigl' (one_shot
  # schedule) = dynamic sparse training: every dst_every_steps drop the smallest active weights
  # of each layer and regrow as many at random (SET) or by largest gradient (RigL), at zero with
  # zeroed moments.
  prune.training = 'masked'
  prune.dst_every_steps = 100  # set | rigl: steps between drop-and-regrow updates.
  prune.dst_drop_fraction = 0.3  # set | rigl: fraction of a layer's active weights redrawn at the first update, decayed by cosine to 0.
  prune.dst_end_fraction = 0.75  # set | rigl: fraction of the retraining steps after which masks stop changing.
  prune.nm_skip_indivisible = False  # N:M kinds: leave dense (and name in the log) layers whose input dimension does not divide by M, as NVIDIA's ASP; False = refuse them.
  prune.score_batches = 8  # Training batches for saliency / sensitivity, and wanda / sparsegpt calibration.
  prune.score_batch_size = 128  # Examples per scoring batch.
  prune.retrain_epochs = 3  # Masked retraining epochs after each pruning (gradual: the whole phase).
  prune.retrain_steps = 0  # >0: retrain this many steps instead of retrain_epochs (one_shot / iterative).
  prune.retrain_learning_rate = 3e-4  # Peak LR of retraining (fresh optimizer, optimizer.schedule).
  prune.retrain_warmup_epochs = 0.0  # Warm-up of the retraining schedule (warmup_cosine).
  prune.rounds = 3  # iterative: rounds, each removing the same fraction of the remaining weights.
  prune.rewind_epoch = -1  # iterative: -1 keep trained weights; 0 rewind kept weights to init; k to dense epoch k.
  prune.gradual_begin_epoch = 0.0  # gradual: epoch of the retraining phase where pruning starts.
  prune.gradual_end_epoch = 2.0  # gradual: epoch where the final sparsity is reached.
  prune.gradual_every_steps = 100  # gradual: steps between mask updates.
  # gradual with retrain_steps (step-based runs, e.g. LMs whose epochs are long): the ramp in
  # steps of the retraining phase; both >= 0 replace the two epochs above, -1 = use the epochs.
  prune.gradual_begin_step = -1  # gradual: step where pruning starts.
  prune.gradual_end_step = -1  # gradual: step where the final sparsity is reached.
  prune.dense_dir = ''  # A finished dense workdir to start from; '' = train one in WORKDIR/dense.
  prune.export_formats = ('none', 'int8')  # Compact exports: 'none' = bitmask + float32, 'int8'.
  prune.measure_latency = True  # neuron / heads variants: time dense vs shrunk model at batch 1 and 256.
  return config
