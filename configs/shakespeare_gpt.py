"""The small character-level GPT of nanoGPT's CPU recipe on Tiny Shakespeare.

    python launch.py --config=configs/shakespeare_gpt.py --workdir=runs/shakespeare_gpt

4 layers, 4 heads, 128 wide, context 64, batch 12, no dropout, no biases, tied embeddings;
AdamW (b2 0.99, weight decay 0.1 on matrices), gradients clipped at 1.0, lr 1e-3 with 100 warm-up
steps and cosine decay to 1e-4 over 2000 steps. Evaluated every 500 steps on TFDS's validation
split (the 5% of the characters after the 90% train split) in non-overlapping windows of 64; the
test split at the end. Lines and results.json speak in tokens/s and perplexity. Offline, the
corpus is read from ../shared/data/tiny_shakespeare when that exists.
Expected (measured, see README): validation loss 1.891 after 2000 steps (~2.4 min on 2 CPU
cores, 5-8% more with the three evaluations before the end); with --config.model.position=rope
(rotary positions, no position table) 1.760.
"""

import os

from configs import default

_SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..',
                       'shared', 'data', 'tiny_shakespeare')


def get_config():
  config = default.get_config()
  config.name = 'shakespeare_gpt'
  config.data.name = 'tiny_shakespeare'
  config.data.text_dir = os.path.normpath(_SHARED) if os.path.isdir(_SHARED) else ''
  config.data.seq_len = 64
  config.data.normalize = False
  config.model.name = 'gpt'
  config.model.num_layers, config.model.num_heads, config.model.embed_dim = 4, 4, 128
  config.model.max_len = 64
  config.model.dropout_rate = 0.0
  config.model.use_bias = False
  opt = config.optimizer
  opt.name = 'adamw'
  opt.learning_rate = 1e-3
  opt.schedule = 'warmup_cosine'
  opt.warmup_steps = 100
  opt.end_learning_rate_factor = 0.1
  opt.b1, opt.b2 = 0.9, 0.99
  opt.weight_decay = 0.1
  opt.grad_clip_norm = 1.0
  config.batch_size = 12
  config.eval_batch_size = 96
  config.num_train_steps = 2000
  config.steps_per_call = 50
  config.log_every_steps = 250
  config.eval_every_steps = 500  # Validation loss at 500, 1000, 1500, 2000: 5-8% more time.
  config.parallelism.mode = 'single'
  return config
