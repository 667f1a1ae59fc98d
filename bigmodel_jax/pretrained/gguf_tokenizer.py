"""The tokenizer of a GGUF file: a byte-level BPE `tokenizers.Tokenizer` rebuilt from its
`tokenizer.ggml.*` metadata (tokens, merges, token types, the pre-tokenizer named by
`tokenizer.ggml.pre`), without transformers.

    tok = gguf_tokenizer.tokenizer('SmolLM2-135M-Instruct.Q4_1.gguf')
    ids = tok.tokenizer.encode('The capital of France is').ids
"""

import functools
from typing import Any, NamedTuple

import numpy as np
from absl import logging
from gguf import TokenType

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pretrained.gguf_container import get_key, open_file, token_ids

# Plain ints: comparing numpy token types with the IntEnum members is slow over 100k tokens.
_NORMAL, _CONTROL, _USER_DEFINED = (int(TokenType.NORMAL), int(TokenType.CONTROL),
                                    int(TokenType.USER_DEFINED))

# The text splits of llama.cpp's pre-tokenizer types (llama-vocab.cpp) that GPT-2's regex lacks.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {'gpt2': None, 'default': None, 'smollm': 'digits', 'qwen2': _QWEN2_SPLIT,
               'deepseek-r1-qwen': _QWEN2_SPLIT, 'llama-bpe': _LLAMA3_SPLIT,
               'llama3': _LLAMA3_SPLIT, 'llama-v3': _LLAMA3_SPLIT, 'smaug-bpe': _LLAMA3_SPLIT}
# llama.cpp's BPE takes a word whole when the vocabulary has it, before any merge, for these.
_IGNORE_MERGES = ('llama-bpe', 'llama3', 'llama-v3', 'smaug-bpe')


class GGUFTokenizer(NamedTuple):
  """A GGUF file's tokenizer.

  Attributes:
    tokenizer: the `tokenizers.Tokenizer`; `encode` adds BOS / EOS as the file says to.
    bos_token_id: the file's `tokenizer.ggml.bos_token_id`, or None.
    eos_token_id: the file's `tokenizer.ggml.eos_token_id`, or None.
    add_bos: whether llama.cpp prepends BOS to a prompt (`tokenizer.ggml.add_bos_token`).
    add_eos: whether it appends EOS (`tokenizer.ggml.add_eos_token`).
  """
  tokenizer: Any
  bos_token_id: int | None
  eos_token_id: int | None
  add_bos: bool
  add_eos: bool



def tokenizer(path) -> GGUFTokenizer:
  """The byte-level BPE tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.

  Control tokens (token type 3) become special added tokens and user-defined ones (4) plain
  added tokens, so that both are matched whole in text, as llama.cpp does. An unknown
  `tokenizer.ggml.pre` logs a warning and splits text as GPT-2 does.

  Raises:
    ConfigError: the file is not a GGUF file or its tokenizer is not byte-level BPE ('gpt2').
  """
  from tokenizers import AddedToken, Tokenizer, decoders, models

  file = open_file(path, vocabulary=True)
  kind = get_key(file, 'tokenizer.ggml.model', None)
  if kind != 'gpt2':
    raise ConfigError(f'{file.path!r} has tokenizer.ggml.model {kind!r}; only byte-level BPE '
                      "('gpt2') tokenizers are supported.")
  tokens = get_key(file, 'tokenizer.ggml.tokens')
  types = np.asarray(get_key(file, 'tokenizer.ggml.token_type', np.full(len(tokens), _NORMAL)))
  merges = [tuple(merge.split(' ', 1)) for merge in get_key(file, 'tokenizer.ggml.merges')]
  pre = get_key(file, 'tokenizer.ggml.pre', 'default')
  model = models.BPE(_byte_level_vocab(tokens, types), merges, ignore_merges=pre in _IGNORE_MERGES)
  tok = Tokenizer(model)
  tok.pre_tokenizer = _pre_tokenizer(pre, file.path)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                          for i in np.flatnonzero(types == _CONTROL)])
  tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                  for i in np.flatnonzero(types == _USER_DEFINED)])
  ids = token_ids(file)
  bos, eos = ids.get('bos_token_id'), ids.get('eos_token_id')
  add_bos = bool(get_key(file, 'tokenizer.ggml.add_bos_token', False)) and bos is not None
  add_eos = bool(get_key(file, 'tokenizer.ggml.add_eos_token', False)) and eos is not None
  if add_bos or add_eos:
    tok.post_processor = _template(tokens, bos if add_bos else None, eos if add_eos else None)
  return GGUFTokenizer(tok, bos, eos, add_bos, add_eos)


def _byte_level_vocab(tokens: list[str], types) -> dict[str, int]:
  """{token: id}, normal tokens spelled in GPT-2's byte alphabet as BPE needs them.

  Files keep the byte alphabet (Ġ for a space), but some store a normal token with the raw
  characters; those are respelled. Added tokens keep their text: it is matched in raw input.
  """
  to_char = _byte_alphabet()
  alphabet = set(to_char.values())
  vocab = {token: index for index, token in enumerate(tokens)}  # Repeats keep the last id.
  for index in np.flatnonzero(np.asarray(types) == _NORMAL):
    if not alphabet.issuperset(token := tokens[index]):
      vocab.pop(token, None)
      vocab[''.join(to_char[b] for b in token.encode('utf-8'))] = int(index)
  return vocab


@functools.cache
def _byte_alphabet() -> dict[int, str]:
  """GPT-2's printable stand-in character for each byte: {byte: character}."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  others = [b for b in range(256) if b not in printable]
  return {b: chr(c) for b, c in [*zip(printable, printable, strict=True),
                                 *zip(others, range(256, 256 + len(others)), strict=True)]}


def _pre_tokenizer(pre: str, path: str):
  from tokenizers import Regex, pre_tokenizers

  if pre not in _PRE_SPLITS:
    logging.warning('%r has the unknown tokenizer.ggml.pre %r; splitting text as GPT-2 does.',
                    path, pre)
  split = _PRE_SPLITS.get(pre)
  if split is None:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if split == 'digits':  # SmolLM: each digit alone, then GPT-2's split.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])
  return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior='isolated'),
                                  pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                           use_regex=False)])


def _template(tokens: list[str], bos: int | None, eos: int | None):
  from tokenizers import processors

  first = [tokens[bos]] if bos is not None else []
  last = [tokens[eos]] if eos is not None else []
  specials = [(tokens[i], i) for i in {bos, eos} if i is not None]
  return processors.TemplateProcessing(
      single=[*first, '$A', *last],
      pair=[*first, '$A', *last, *[f'{t}:1' for t in first], '$B:1', *[f'{t}:1' for t in last]],
      special_tokens=specials)
