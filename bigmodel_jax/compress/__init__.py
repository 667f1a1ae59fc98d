"""The launchable compression workflow: dense training -> prune -> retrain -> evaluate -> export.

    python launch.py --config=configs/fashion_mnist_mlp_prune.py --workdir=runs/prune

Layout of WORKDIR (every phase is resumable; re-running the command continues where it stopped):

    dense/                       the dense run (a normal training workdir), or `prune.dense_dir`
    <variant>_s<sparsity>/       one folder per (variant, sparsity) of the sweep, e.g.
      pruned/                      magnitude-global_s0.90: Orbax checkpoint of params + masks
      retrained/                   a training workdir whose checkpoints carry the masks
      round_<r>/{pruned,retrained}   (schedule 'iterative': one pair per round)
      export/                      compact files (bitmask + float32, bitmask + int8)
    results.json, results.md     one row per (variant, sparsity)
    sparsity_sweep.png           test accuracy vs sparsity, a curve per variant

Modules follow the workflow: `context` (the one run set-up every phase shares), `select` (the
registry's method scores, the kind selects), `phases` (prune; masked retraining), `schedules`
(one-shot, iterative and gradual drivers), `checks` (export round trip, latency), `report`
(table, plot) and `sweep` (`run`, the whole workflow).

A variant is '<score>/<kind>' (`config.parse_variant`): score one of `pruning.METHODS` (magnitude
| saliency | sensitivity | random, or the layer-by-layer wanda | sparsegpt); kind in
global | layerwise (unstructured), neuron (structured: whole hidden units, physically removed
afterwards), heads (structured: whole attention heads of a GPT / ViT, scored by the norm of what
each adds to the residual stream - or at random, the control - then physically removed) or N:M
such as 2:4 (semi-structured).

A pretrained language model (Llama-family, GPT-2; Hugging Face folder or GGUF) has its own
workflow, `pretrained_lm` (configs/smollm2_prune.py): load -> dense perplexity -> per variant
one-shot prune block by block, evaluate, recover, export.
"""

from bigmodel_jax.compress import pretrained_lm
from bigmodel_jax.compress.report import markdown_table, plot_sweep
from bigmodel_jax.compress.sweep import run, run_variant

__all__ = ['markdown_table', 'pretrained_lm', 'plot_sweep', 'run', 'run_variant']
