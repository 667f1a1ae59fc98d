"""Character data through our TFDS builder, and a tiny GPT trained end to end by the loop."""

import os

import numpy as np
import pytest

from bigmodel_jax import data, training
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
