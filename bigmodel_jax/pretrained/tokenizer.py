"""Tokenizers of pretrained models: Hugging Face `tokenizer.json` files (the `tokenizers` library).

    tok = tokenizer.Tokenizer.from_folder('path/to/model')
    ids = tok.encode('The capital of France is')      # the model's own special tokens added
    text = tok.decode(ids)
"""

import dataclasses
import json
import os

from bigmodel_jax import report
from bigmodel_jax.errors import ConfigError

TOKENIZER = 'tokenizer.json'
TOKENIZER_CONFIG = 'tokenizer_config.json'


@dataclasses.dataclass
class Tokenizer:
  """A `tokenizers.Tokenizer` with the model's special tokens.

  Attributes:
    backend: the `tokenizers.Tokenizer` (its post-processor adds BOS where the model wants it).
    bos_token, eos_token: the special tokens' strings (None where the model has none).
  """
  backend: object
  bos_token: str | None = None
  eos_token: str | None = None

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  @property
  def bos_id(self) -> int | None:
    return None if self.bos_token is None else self.backend.token_to_id(self.bos_token)

  @property
  def eos_id(self) -> int | None:
    return None if self.eos_token is None else self.backend.token_to_id(self.eos_token)

  def encode(self, text: str, *, special: bool = True) -> list[int]:
    """Token ids of `text`; `special` adds the model's own special tokens (as transformers)."""
    return self.backend.encode(text, add_special_tokens=special).ids

  def decode(self, ids, *, skip_special: bool = False) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  @classmethod
  def from_folder(cls, folder: str) -> 'Tokenizer':
    """The tokenizer of a Hugging Face folder (tokenizer.json, tokenizer_config.json)."""
    from tokenizers import Tokenizer as Backend
    path = os.path.join(folder, TOKENIZER)
    if not os.path.exists(path):
      raise ConfigError(f'{folder} has no {TOKENIZER}; only fast (tokenizers-library) '
                        'tokenizers are read here.')
    try:
      backend = Backend.from_file(path)
    except Exception as e:  # The tokenizers library raises a bare Exception for a bad file.
      raise ConfigError(f'{path} is not a readable tokenizer file ({e}).') from None
    config = {}
    if os.path.exists(os.path.join(folder, TOKENIZER_CONFIG)):
      with open(os.path.join(folder, TOKENIZER_CONFIG)) as f:
        config = json.load(f)
    token = lambda key: (config.get(key) or {}).get('content') if isinstance(
        config.get(key), dict) else config.get(key)
    return cls(backend, token('bos_token'), token('eos_token'))

  @classmethod
  def from_gguf(cls, found) -> 'Tokenizer':
    """From `gguf_tokenizer.tokenizer(path)` (the backend and the special tokens' ids)."""
    name = lambda i: None if i is None else found.tokenizer.id_to_token(int(i))
    return cls(found.tokenizer, name(found.bos_token_id), name(found.eos_token_id))

  def save(self, folder: str) -> list[str]:
    """Writes tokenizer.json and a tokenizer_config.json that transformers' AutoTokenizer reads."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, TOKENIZER)
    self.backend.save(path + '.tmp')
    os.replace(path + '.tmp', path)
    config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': self.bos_token,
              'eos_token': self.eos_token, 'clean_up_tokenization_spaces': False,
              'model_max_length': 1_000_000}
    report.write_json(os.path.join(folder, TOKENIZER_CONFIG), config)
    return [TOKENIZER, TOKENIZER_CONFIG]
