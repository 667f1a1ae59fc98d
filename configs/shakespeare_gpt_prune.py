"""One-shot LLM pruning of the Tiny Shakespeare GPT: magnitude vs Wanda vs SparseGPT.

    python launch.py --config=configs/shakespeare_gpt_prune.py --workdir=runs/gpt_prune
    # reuse a finished dense run:  --config.prune.dense_dir=runs/shakespeare_gpt

Trains the dense model of configs/shakespeare_gpt.py (or reuses `prune.dense_dir`), then prunes
every attention (query/key/value/out) and MLP (fc/proj) kernel - never embeddings or norms - at
50% unstructured and 2:4, each method one-shot from 8 x 16 calibration windows of the training
split, then retrains each for 200 masked steps. results.md lists test loss (nats per character)
and accuracy one-shot and after retraining.
"""

from configs import shakespeare_gpt


def get_config():
  config = shakespeare_gpt.get_config()
  config.name = 'shakespeare_gpt_prune'
  p = config.prune
  p.enabled = True
  p.variants = ('magnitude/layerwise', 'wanda/layerwise', 'sparsegpt/layerwise',
                'magnitude/2:4', 'wanda/2:4', 'sparsegpt/2:4')
  p.sparsities = (0.5,)
  p.include = ('*attn/*/kernel', '*/fc/kernel', '*/proj/kernel')
  p.schedule = 'one_shot'
  p.score_batches = 8
  p.score_batch_size = 16
  p.retrain_epochs = 0
  p.retrain_steps = 200
  p.retrain_learning_rate = 3e-4
  p.export_formats = ('none',)
  p.measure_latency = False
  return config
