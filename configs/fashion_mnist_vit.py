"""A small ViT on Fashion-MNIST: the Transformer encoder on the MLP's task, for comparison.

    python launch.py --config=configs/fashion_mnist_vit.py --workdir=runs/fashion_mnist_vit

7x7 patches (16 tokens + [CLS]), 4 pre-LayerNorm blocks, 4 heads, 64 wide, MLP 256; AdamW (weight
decay 0.05 on matrices), lr 1e-3 with a half-epoch warm-up and cosine decay, batch 128, 10 epochs,
the same normalised images as configs/fashion_mnist_mlp.py and no augmentation.
Expected (measured, see README "Language models" / ViT): about 89% test accuracy.
"""

from configs import fashion_mnist_mlp


def get_config():
  config = fashion_mnist_mlp.get_config()
  config.name = 'fashion_mnist_vit'
  m = config.model
  m.name = 'vit'
  m.patch_size = 7
  m.num_layers, m.num_heads, m.embed_dim, m.mlp_ratio = 4, 4, 64, 4
  m.dropout_rate = 0.0
  opt = config.optimizer
  opt.name = 'adamw'
  opt.learning_rate = 1e-3
  opt.weight_decay = 0.05
  opt.schedule = 'warmup_cosine'
  opt.warmup_epochs = 0.5
  config.batch_size = 128
  config.num_epochs = 10
  return config
