"""The pretrained-LM compression workflow end to end on a tiny Llama folder (no network)."""

import json
import logging
import os

import damage
import numpy as np
import pytest

from bigmodel_jax import pretrained
from bigmodel_jax.compress import pretrained_lm
from bigmodel_jax.data import text
from bigmodel_jax.errors import ConfigError

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')

PHRASES = ['to be, or not to be: that is the question.\n', 'all the world is a stage,\n',
           'now is the winter of our discontent\n', 'a horse! a horse! my kingdom for a horse!\n']


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  """(text dir, model folder): generated text, and a tiny Llama + BPE tokenizer trained on it."""
  rng = np.random.default_rng(0)
  text_dir = tmp_path_factory.mktemp('text')
  body = ''.join(PHRASES[i] for i in rng.integers(0, len(PHRASES), 600))
  (text_dir / text.FILE_NAME).write_text(body)
  backend = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token='<unk>'))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  backend.decoder = tokenizers.decoders.BPEDecoder()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=96, special_tokens=['<unk>', '<s>'])
  backend.train_from_iterator(PHRASES * 20, trainer)
  model_dir = str(tmp_path_factory.mktemp('model'))
  config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, tie_word_embeddings=True)
  torch.manual_seed(0)
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
  pretrained.Tokenizer(backend, '<s>', '<s>').save(model_dir)
  return str(text_dir), model_dir


def _config(folders, tmp_path):
  from configs import smollm2_prune
  config = smollm2_prune.get_config()
  config.data.text_dir, config.model.pretrained = folders
  config.data.tfds_data_dir = str(tmp_path / 'tfds')
  config.model.max_len = 32
  config.calibration.num, config.calibration.length, config.calibration.batch_size = 4, 16, 2
  config.eval.num_tokens, config.eval.context, config.eval.stride = 200, 32, 32
  config.prune.variants = ('magnitude/0.5', 'wanda/2:4', 'owl-sparsegpt/0.5')
  config.prune.block_size = 16
  config.sample.prompt, config.sample.num_tokens = 'to be, or', 4
  config.recover.steps, config.recover.batch_size, config.recover.checkpoint_every = 3, 2, 2
  return config


def test_changed_settings_recompute_what_depends_on_them(folders, tmp_path):
  config = _config(folders, tmp_path)
  config.prune.variants, config.recover.steps, config.export = ('wanda/2:4',), 2, False
  workdir = str(tmp_path / 'run')
  first = pretrained_lm.run(config, workdir)['rows'][0]
  fresh = lambda name: pretrained_lm.run(config, str(tmp_path / name))['rows'][0]
  drop = lambda row: {k: v for k, v in row.items() if k != 'prune_seconds'}
  # Other calibration windows: pruned (and recovered) again, as a fresh run is.
  config.calibration.seed = 1
  changed = pretrained_lm.run(config, workdir)['rows'][0]
  assert changed['perplexity'] != first['perplexity']
  assert drop(changed) == drop(fresh('fresh_seed'))
  # Another fine-tune rate: the pruned weights are read back (the same pruning time, from
  # their record), the fine-tune is done again.
  config.recover.learning_rate = 1e-3
  relearned = pretrained_lm.run(config, workdir)['rows'][0]
  assert relearned['prune_seconds'] == changed['prune_seconds']
  assert relearned['recovered_perplexity'] != changed['recovered_perplexity']
  assert drop(relearned) == drop(fresh('fresh_rate'))


def test_workflow_runs_resumes_and_exports(folders, tmp_path, caplog):
  config = _config(folders, tmp_path)
  workdir = str(tmp_path / 'run')
  results = pretrained_lm.run(config, workdir)
  assert [r['variant'] for r in results['rows']] == ['magnitude/0.5', 'wanda/2:4',
                                                     'owl-sparsegpt/0.5']
  for row in results['rows']:
    assert row['sparsity'] == pytest.approx(0.5, abs=0.01)
    assert np.isfinite(row['perplexity']) and np.isfinite(row['recovered_perplexity'])
    assert row['recover_steps'] == 3
  assert results['dense']['tokens'] > 0 and results['peak_host_memory_mb'] > 0
  assert all(isinstance(r['sample'], str) and r['sample'] for r in results['rows'])
  owl = results['rows'][2]
  assert np.mean(owl['block_sparsity']) == pytest.approx(0.5, abs=1e-6)
  for name in ('results.json', 'results.md', 'perplexity.png'):
    assert os.path.exists(os.path.join(workdir, name))
  # The export reloads in transformers with the pruned weights: zeros where the masks said.
  export = os.path.join(workdir, 'wanda_2-4', 'export')
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
  weight = reloaded.model.layers[1].mlp.down_proj.weight.detach().numpy()  # [out, in]
  assert ((weight.T.reshape(-1, 4, weight.shape[0]) != 0).sum(axis=1) <= 2).all()
  # A re-run reads every finished row; a lost row is recomputed from its phase checkpoints.
  os.remove(os.path.join(workdir, 'magnitude_0.5', 'row.json'))
  again = pretrained_lm.run(config, workdir)
  assert again['rows'] == results['rows']
  # Damaged phase checkpoints (flipped bits in the pruned and the recovered arrays) are set
  # aside with a warning and computed again: the same row (but for the pruning time).
  for phase in ('pruned', 'recovered'):
    folder = os.path.join(workdir, 'magnitude_0.5', phase)
    step = max(int(n) for n in os.listdir(folder) if n.isdigit())
    damage.flip_middle_byte(damage.largest_file(os.path.join(folder, str(step), 'state')))
  os.remove(os.path.join(workdir, 'magnitude_0.5', 'row.json'))
  with caplog.at_level(logging.WARNING):
    repaired = pretrained_lm.run(config, workdir)
  assert caplog.text.count('none is intact: computing it again') == 2
  drop = lambda row: {k: v for k, v in row.items() if k != 'prune_seconds'}
  assert [drop(r) for r in repaired['rows']] == [drop(r) for r in results['rows']]
  assert json.load(open(os.path.join(workdir, 'dense.json')))['perplexity'] == \
      results['dense']['perplexity']


def test_structured_variants_shrink_time_and_export_a_smaller_model(folders, tmp_path):
  config = _config(folders, tmp_path)
  config.prune.variants = ('mlp/0.5', 'heads/0.5', 'mlp+heads/0.5')
  config.recover.steps = 2
  s = config.structured
  s.latency_rounds, s.latency_batches, s.latency_length, s.decode_steps = 1, (1, 2), 8, 1
  workdir = str(tmp_path / 'run')
  results = pretrained_lm.run(config, workdir)
  mlp, heads, both = results['rows']
  assert mlp['mlp_dims_per_layer'] == [32, 32] and mlp['kv_heads_per_layer'] == [2, 2]
  assert heads['mlp_dims_per_layer'] == [64, 64] and heads['kv_heads_per_layer'] == [1, 1]
  assert both['mlp_dims_per_layer'] == [32, 32] and both['kv_heads_per_layer'] == [1, 1]
  assert both['params'] < mlp['params'] < results['params'] and both['sparsity'] > 0.4
  for row in results['rows']:
    assert np.isfinite(row['perplexity']) and np.isfinite(row['recovered_perplexity'])
    assert set(row['latency']) == {'prompt_b1', 'prompt_b2', 'decode_b1', 'decode_b2'}
    assert row['latency']['prompt_b2']['ms'] > 0 and row['dense_latency']['decode_b1']['ms'] > 0
  assert 'Structured' in open(os.path.join(workdir, 'results.md')).read()
  # The export is a smaller transformers model: its config says so, its logits are ours.
  export = os.path.join(workdir, 'mlp+heads_0.5', 'export')
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
  assert (reloaded.config.intermediate_size, reloaded.config.num_key_value_heads,
          reloaded.config.num_attention_heads) == (32, 1, 2)
  ours = pretrained.load(export, max_len=32)
  ids = np.asarray([[3, 5, 7, 11, 13]])
  want = reloaded(torch.from_numpy(ids)).logits.detach().numpy()
  got = np.asarray(ours.model.apply({'params': ours.params}, ids))
  np.testing.assert_allclose(got, want, atol=1e-4)
  # A re-run rebuilds the same rows from structure.json and row.json.
  os.remove(os.path.join(workdir, 'heads_0.5', 'row.json'))
  again = pretrained_lm.run(config, workdir)
  assert [r['perplexity'] for r in again['rows']] == [r['perplexity'] for r in results['rows']]


def test_bad_configs_say_what_is_wrong(folders, tmp_path):
  cases = {
      'takes the fraction': ('prune.variants', ('mlp/2:4',)),
      'structured.scope': ('structured.scope', 'everywhere'),
      'structured.decode_steps=0': ('structured.decode_steps', 0),
      'structured.latency_length=40': ('structured.latency_length', 40),
      "entry 'obs/0.5'": ('prune.variants', ('obs/0.5',)),
      "must be in \\(0, 1\\)": ('prune.variants', ('wanda/1.5',)),
      'takes a sparsity, not an N:M': ('prune.variants', ('owl-wanda/2:4',)),
      'N:M with 0 < N < M': ('prune.variants', ('wanda/4:2',)),
      'prune.variants is empty': ('prune.variants', ()),
      'eval.context=64 exceeds': ('eval.context', 64),
      'calibration.num=0': ('calibration.num', 0),
      'eval.stride=0': ('eval.stride', 0),
      'recover.learning_rate': ('recover.learning_rate', 0.0),
      'exceed config.model.max_len': ('sample.num_tokens', 30),
  }
  for message, (key, value) in cases.items():
    config = _config(folders, tmp_path)
    if key.startswith('structured.'):
      config.prune.variants = ('mlp/0.25',)
    config.structured.latency_length = 8
    section, name = key.split('.')
    config[section][name] = value
    with pytest.raises(ConfigError, match=message):
      pretrained_lm.run(config, str(tmp_path / "bad"))


@pytest.mark.parametrize('fsdp,tensor', [(8, 1), (4, 2)])
def test_sharded_runs_give_the_same_masks_and_perplexity(folders, tmp_path, fsdp, tensor):
  import jax

  from bigmodel_jax import checkpoint
  rows = {}
  for name, (f, t) in {'one': (1, 1), 'pod': (fsdp, tensor)}.items():
    config = _config(folders, tmp_path)
    config.prune.variants = ('wanda/0.5', 'sparsegpt/2:4')
    config.recover.steps, config.export = 0, False
    config.parallelism.data, config.parallelism.fsdp, config.parallelism.tensor = 1, f, t
    config.parallelism.fsdp_min_size = 1
    results = pretrained_lm.run(config, str(tmp_path / name))
    rows[name] = results
  assert rows['pod']['mesh'] == {'data': 1, 'fsdp': fsdp, 'tensor': tensor}
  assert rows['one']['dense']['perplexity'] == pytest.approx(rows['pod']['dense']['perplexity'],
                                                             rel=1e-5)
  for one, pod in zip(rows['one']['rows'], rows['pod']['rows'], strict=True):
    assert one['perplexity'] == pytest.approx(pod['perplexity'], rel=1e-4)
    folder = one['variant'].replace('/', '_').replace(':', '-')
    masks = [checkpoint.Checkpointer(str(tmp_path / n / folder / 'pruned')).restore_numpy()
             ['masks'] for n in ('one', 'pod')]
    jax.tree.map(np.testing.assert_array_equal, *masks)


def test_launch_killed_mid_sweep_then_rerun_matches(folders, tmp_path):
  import signal
  import subprocess
  import sys
  import time
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  text_dir, model_dir = folders
  command = [sys.executable, os.path.join(repo, 'launch.py'),
             '--config=' + os.path.join(repo, 'configs', 'smollm2_prune.py'),
             f'--config.model.pretrained={model_dir}', f'--config.data.text_dir={text_dir}',
             f'--config.data.tfds_data_dir={tmp_path / "tfds"}', '--config.model.max_len=32',
             '--config.calibration.num=4', '--config.calibration.length=16',
             '--config.eval.num_tokens=200', '--config.eval.context=32', '--config.eval.stride=32',
             '--config.prune.block_size=16', '--config.sample.prompt=to be',
             '--config.export=False', '--config.recover.steps=4', '--config.recover.batch_size=2',
             '--config.recover.checkpoint_every=1']
  variants = "--config.prune.variants=('wanda/0.5','sparsegpt/2:4')"
  workdir = tmp_path / 'killed'
  proc = subprocess.Popen([*command, f'--workdir={workdir}', variants], cwd=repo,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and not (workdir / 'wanda_0.5' / 'recovered').exists():
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / 'results.json').exists(), 'the run finished before it was killed'
  rerun = subprocess.run([*command, f'--workdir={workdir}', variants], cwd=repo,
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  whole = subprocess.run([*command, f'--workdir={tmp_path / "whole"}', variants], cwd=repo,
                         capture_output=True, text=True, timeout=600)
  assert whole.returncode == 0, whole.stderr[-3000:]
  killed = json.load(open(workdir / 'results.json'))
  uninterrupted = json.load(open(tmp_path / 'whole' / 'results.json'))
  for a, b in zip(killed['rows'], uninterrupted['rows'], strict=True):
    for key in ('perplexity', 'recovered_perplexity', 'sparsity', 'sample'):
      assert a[key] == b[key], key
