"""Character data through our TFDS builder, and a tiny GPT trained end to end by the loop."""

import json
import math
import os
import struct

import chex
import numpy as np
import pytest

from bigmodel_jax import checkpoint, data, training
from bigmodel_jax.data import text
from bigmodel_jax.errors import ConfigError, DataError

PHRASES = ['to be, or not to be: that is the question.\n', 'all the world is a stage,\n',
           'now is the winter of our discontent\n', 'a horse! a horse! my kingdom for a horse!\n']


@pytest.fixture(scope='module')
def text_dir(tmp_path_factory) -> str:
  """A folder with an input.txt of ~12 KB of generated, learnable text."""
  rng = np.random.default_rng(0)
  folder = tmp_path_factory.mktemp('text')
  body = ''.join(PHRASES[i] for i in rng.integers(0, len(PHRASES), 400))
  (folder / text.FILE_NAME).write_text(body)
  return str(folder)


def _config(text_dir, tfds_dir):
  from configs import shakespeare_gpt
  config = shakespeare_gpt.get_config()
  config.data.text_dir, config.data.tfds_data_dir = text_dir, tfds_dir
  config.data.seq_len = 16
  config.model.num_layers, config.model.num_heads, config.model.embed_dim = 2, 2, 32
  config.model.max_len = 16
  config.batch_size = 16
  config.eval_batch_size = 64
  config.num_train_steps = 60
  config.steps_per_call = 20
  config.optimizer.warmup_steps = 5
  config.optimizer.learning_rate = 3e-3
  config.checkpoint_async = False
  config.write_plot = False
  return config


def test_split_rule_is_tfds_90_5_5():
  parts = text.split_text(bytes(range(100)) * 10)
  assert [len(parts[k]) for k in text.SPLITS] == [900, 50, 50]
  assert parts['train'] + parts['validation'] + parts['test'] == bytes(range(100)) * 10


def test_windows_and_vocabulary():
  vocab = text.Vocabulary('\n abc')
  ids = vocab.encode('abc abc\n')
  assert vocab.decode(ids) == 'abc abc\n'
  inputs, targets = text.windows(ids, 3, overlapping=True)
  assert inputs.shape == targets.shape == (5, 3)
  np.testing.assert_array_equal(inputs[1:], targets[:-1])
  inputs, targets = text.windows(ids, 3, overlapping=False)
  assert inputs.shape == (2, 3) and targets[0, -1] == inputs[1, 0]
  with pytest.raises(ValueError, match='outside the vocabulary'):
    vocab.encode('abz')
  with pytest.raises(DataError, match='shorter than one window'):
    text.windows(ids, 20, overlapping=False)


def test_the_builder_prepares_offline_and_splits_into_windows(text_dir, tfds_dir):
  config = _config(text_dir, tfds_dir)
  datasets = data.load_datasets(config.data)
  raw = open(os.path.join(text_dir, text.FILE_NAME), 'rb').read()
  assert datasets.num_classes == len(set(raw))
  n_train = int(len(raw) * 0.9)
  assert len(datasets.train) == n_train - 16
  assert datasets.train.inputs.shape[1:] == (16,) and datasets.train.inputs.dtype == np.int32
  assert datasets.vocab.decode(datasets.train.inputs[0]) == raw[:16].decode()
  assert len(datasets.eval) == (int((len(raw) - n_train) * 0.5) - 1) // 16


def test_a_missing_corpus_is_a_clear_error(tmp_path):
  from configs import shakespeare_gpt
  config = shakespeare_gpt.get_config()
  config.data.text_dir, config.data.tfds_data_dir = str(tmp_path), str(tmp_path / 'tfds')
  with pytest.raises(DataError, match='holds no input.txt'):
    data.load_datasets(config.data)


def test_model_and_data_must_match(text_dir, tfds_dir, tmp_path):
  config = _config(text_dir, tfds_dir)
  config.model.name = 'mlp'
  with pytest.raises(ConfigError, match='cannot read'):
    training.train_and_evaluate(config, str(tmp_path))
  config = _config(text_dir, tfds_dir)
  config.model.max_len = 8
  with pytest.raises(ConfigError, match='max_len'):
    training.train_and_evaluate(config, str(tmp_path))


def test_tiny_gpt_learns_the_generated_text(text_dir, tfds_dir, tmp_path):
  results = training.train_and_evaluate(_config(text_dir, tfds_dir), str(tmp_path / 'run'))
  assert results['num_params'] > 0 and results['steps'] == 60
  # Uniform guessing over the ~30 characters costs ln(30) = 3.4 nats.
  assert results['final_eval_loss'] < 2.5
  assert np.isfinite(results['test_loss'])
  assert results['parallelism']['mode'] == 'single'


def _scalars(logdir) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the TensorBoard event files in `logdir` (TFRecord framing)."""
  from tensorboardX.proto import event_pb2
  found = {}
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), 'rb') as f:
      while header := f.read(12):
        record = f.read(struct.unpack('<Q', header[:8])[0])
        f.read(4)
        event = event_pb2.Event.FromString(record)
        for value in event.summary.value:
          found.setdefault(value.tag, {})[event.step] = value.simple_value
  return found


def test_lm_run_speaks_in_tokens_and_evaluates_every_n_steps(text_dir, tfds_dir, tmp_path,
                                                             capsys):
  config = _config(text_dir, tfds_dir)  # 60 steps, 20 per call, windows of 16 characters.
  config.eval_every_steps, config.log_every_steps, config.write_plot = 20, 20, True
  workdir = tmp_path / 'run'
  training.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  results = json.loads((workdir / 'results.json').read_text())
  evals = results['eval_history']
  assert [e['step'] for e in evals] == [20, 40, 60]  # Two inside the epoch, then its end.
  lines = out.splitlines()
  assert [line.split()[1] for line in lines if line.startswith('step ')] == ['20/60', '40/60']
  assert any(line.startswith('epoch 1/1  train_loss') and 'eval_perplexity' in line
             for line in lines)
  assert 'tokens/s' in out and ' ex/s' not in out and 'eval_accuracy' not in out
  assert lines[-1].startswith('Done: test_loss') and 'train tokens/s' in lines[-1]
  # Tokens per second are windows per second x 16; perplexity is exp(mean token cross-entropy).
  assert results['tokens_per_example'] == 16
  assert results['train_tokens_per_s'] == pytest.approx(16 * results['train_examples_per_s'])
  for key in ('test', 'final_eval', 'best_eval'):
    assert results[f'{key}_perplexity'] == pytest.approx(math.exp(results[f'{key}_loss']))
  for record in evals + results['history']:
    assert record['tokens_per_s'] == pytest.approx(16 * record['examples_per_s'])
    assert record['eval_perplexity'] == pytest.approx(math.exp(record['eval_loss']))
    assert record['train_perplexity'] == pytest.approx(math.exp(record['train_loss']))
  assert evals[-1]['eval_loss'] == results['final_eval_loss']
  # Each entry's train loss covers the steps since the previous evaluation.
  assert np.mean([e['train_loss'] for e in evals]) == pytest.approx(
      results['history'][0]['train_loss'], rel=1e-6)
  assert results['best_eval_loss'] == min(e['eval_loss'] for e in evals)
  assert results['best_eval_loss_step'] in (20, 40, 60)
  scalars = _scalars(workdir / 'tensorboard')
  assert sorted(scalars['eval/perplexity']) == [20, 40, 60]
  assert scalars['eval/loss'][40] == pytest.approx(evals[1]['eval_loss'])
  assert sorted(scalars['perf/tokens_per_s']) == [20, 40, 60]
  assert 'train/perplexity' in scalars
  assert os.path.getsize(workdir / 'curves.png') > 1000  # Plotted per step.


def test_a_resumed_lm_run_with_eval_every_steps_is_exact(text_dir, tfds_dir, tmp_path,
                                                         monkeypatch):
  config = _config(text_dir, tfds_dir)
  config.num_train_steps, config.steps_per_call, config.model.dropout_rate = 80, 10, 0.1
  config.eval_every_steps, config.checkpoint_every_steps = 20, 30
  straight = str(tmp_path / 'straight')
  expected = training.train_and_evaluate(config, straight)
  assert [e['step'] for e in expected['eval_history']] == [20, 40, 60, 80]

  class Crash(Exception):
    pass

  from bigmodel_jax.training import loop
  real, calls = loop.evaluate, []

  def dies_at_the_third(*args, **kwargs):
    calls.append(None)
    if len(calls) == 3:
      raise Crash()
    return real(*args, **kwargs)

  resumed = str(tmp_path / 'resumed')
  with monkeypatch.context() as patch:  # Dies evaluating step 60, before step 60 is saved.
    patch.setattr('bigmodel_jax.training.loop.evaluate', dies_at_the_third)
    with pytest.raises(Crash):
      training.train_and_evaluate(config, resumed)
  ckpt = checkpoint.Checkpointer(os.path.join(resumed, 'checkpoints'))
  assert ckpt.latest_step() == 30  # Evaluated at 20; steps 21-30 summed for the next one.
  assert [e['step'] for e in ckpt.restore_meta(30)['eval_history']] == [20]
  results = training.train_and_evaluate(config, resumed)

  def final(workdir):
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'))
    return ckpt.restore_numpy(ckpt.latest_step())

  chex.assert_trees_all_equal(final(straight), final(resumed))
  for got, want in zip(results['eval_history'], expected['eval_history'], strict=True):
    assert (got['step'], got['eval_loss'], got['eval_accuracy']) == (
        want['step'], want['eval_loss'], want['eval_accuracy'])
    assert got['train_loss'] == pytest.approx(want['train_loss'], rel=1e-12)
  for key in ('final_eval_loss', 'best_eval_loss', 'best_eval_loss_step', 'test_loss'):
    assert results[key] == expected[key]


def test_one_shot_llm_pruning_sweep_end_to_end(text_dir, tfds_dir, tmp_path):
  from bigmodel_jax import compress
  from configs import shakespeare_gpt_prune
  config = shakespeare_gpt_prune.get_config()
  small = _config(text_dir, tfds_dir)
  config.data, config.model, config.optimizer = small.data, small.model, small.optimizer
  config.batch_size, config.eval_batch_size = small.batch_size, small.eval_batch_size
  config.num_train_steps, config.steps_per_call = 40, 20
  config.checkpoint_async, config.write_plot = False, True
  config.prune.variants = ('magnitude/layerwise', 'wanda/layerwise', 'sparsegpt/2:4',
                           'magnitude/heads')
  config.prune.score_batches, config.prune.score_batch_size = 2, 8
  config.prune.retrain_steps = 10
  config.prune.measure_latency = True
  results = compress.run(config, str(tmp_path))
  rows = {r['variant']: r for r in results['rows']}
  assert set(rows) == {'magnitude/layerwise', 'wanda/layerwise', 'sparsegpt/2:4',
                       'magnitude/heads'}
  for row in rows.values():
    # Heads: half the attention weights, a third of the prunable ones here.
    assert row['sparsity'] == pytest.approx(0.5 if row is not rows['magnitude/heads'] else 1 / 6,
                                            abs=1e-9)
    assert np.isfinite(row['one_shot_test_loss']) and np.isfinite(row['test_loss'])
    assert row['retrain_steps'] == 10
  # Heads: 1 of 2 per block removed -> half of every q/k/v/out kernel, none of fc/proj; the
  # physically shrunk model (after masked retraining) computes what the masked one does.
  heads = rows['magnitude/heads']
  assert heads['structured']['heads_per_layer'] == [1, 1]
  assert heads['structured']['max_abs_logit_diff_vs_masked'] < 1e-4
  assert heads['layers']['block_0/attn/query/kernel'] == pytest.approx(0.5)
  assert heads['layers']['block_1/fc/kernel'] == 0.0
  assert 'one-shot loss' in open(os.path.join(str(tmp_path), 'results.md')).read()
  assert os.path.getsize(os.path.join(str(tmp_path), 'sparsity_sweep.png')) > 1000  # Loss bars.
  config.prune.variants = ('wanda/global',)
  with pytest.raises(ConfigError, match='layer by layer'):
    compress.run(config, str(tmp_path / 'bad'))


def test_tensor_parallel_training_matches_one_device(text_dir, tfds_dir, tmp_path):
  from bigmodel_jax import checkpoint
  finals = {}
  for name, layout in (('single', {'mode': 'single'}),
                       ('tp', {'mode': 'sharded', 'data': 2, 'fsdp': 2, 'tensor': 2})):
    config = _config(text_dir, tfds_dir)
    config.num_train_steps = 20
    config.parallelism.update(layout)
    results = training.train_and_evaluate(config, str(tmp_path / name))
    ckpt = checkpoint.Checkpointer(str(tmp_path / name / 'checkpoints'), async_save=False)
    finals[name] = (ckpt.restore_arrays(ckpt.latest_step())['params'], results)
    ckpt.close()
  import jax
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
      jax.tree.leaves(finals['tp'][0]), jax.tree.leaves(finals['single'][0]), strict=True))
  print(f'tensor-parallel (2x2x2) vs single, 20 AdamW steps: max abs param diff {diff:.2e}')
  assert diff < 1e-5
  assert finals['tp'][1]['parallelism']['mesh']['tensor'] == 2
  assert finals['tp'][1]['final_eval_loss'] == pytest.approx(finals['single'][1]['final_eval_loss'],
                                                            abs=1e-5)
