"""Pruning the ViT of configs/fashion_mnist_vit.py, to compare with the MLP on the same task.

    python launch.py --config=configs/fashion_mnist_vit_prune.py --workdir=runs/vit_prune \
        --config.prune.dense_dir=runs/fashion_mnist_vit

Prunes every attention (query/key/value/out) and MLP (fc/proj) kernel of the blocks - not the
patch embedding, the [CLS] / position tables, the norms or the classifier head - one-shot at 50,
80 and 90% by global and per-layer magnitude, Wanda, SparseGPT and random (the control), and 2:4,
each followed by 1 epoch of masked retraining (AdamW 1e-3, warm-up + cosine). Whole attention
heads: --config.prune.variants="('magnitude/heads','random/heads')" --config.prune.sparsities="(0.5,)".
The MLP under the same protocol: configs/fashion_mnist_mlp_prune.py with the same variants and
--config.prune.retrain_epochs=1 (README "Language models" / ViT lists both).
"""

from configs import fashion_mnist_vit


def get_config():
  config = fashion_mnist_vit.get_config()
  config.name = 'fashion_mnist_vit_prune'
  p = config.prune
  p.enabled = True
  p.variants = ('magnitude/global', 'magnitude/layerwise', 'wanda/layerwise',
                'sparsegpt/layerwise', 'random/global', 'magnitude/2:4', 'wanda/2:4',
                'sparsegpt/2:4')
  p.sparsities = (0.5, 0.8, 0.9)
  p.include = ('*attn/*/kernel', '*/fc/kernel', '*/proj/kernel')
  p.schedule = 'one_shot'
  p.score_batches = 8
  p.score_batch_size = 128
  p.retrain_epochs = 1
  p.retrain_learning_rate = 1e-3
  p.retrain_warmup_epochs = 0.1
  p.export_formats = ('none',)
  return config
