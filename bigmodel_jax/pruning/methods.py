"""The one registry of pruning methods: what each scores with, and where it applies.

    method = methods.get('saliency')
    scores = method.score(params, loss_fn=loss_fn, batches=batches, key=key)

A method is named in a variant '<method>/<kind>' (`config.parse_variant`). Each entry says

- `score`: params -> a score tree like the params (lower = pruned first), for the selection kinds
  global | layerwise | neuron | N:M; None for methods that prune layer by layer from their
  inputs instead (`layer_rule`, run by `oneshot.prune`);
- `head_score`: scores of whole attention heads for kind 'heads' (None: no 'heads' kind);
- `kinds` and `schedules` it supports, and whether it needs training batches (`needs_batches`,
  loss gradients) or calibrates on layer inputs (`calibrates`).

Adding a method is one entry here (plus its score function), or `register(Method(...))` from
research code: config validation, the sweep's dispatch and the gradual schedule all read this
table.
"""

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.pruning import heads, scores

KINDS = ('global', 'layerwise', 'neuron', 'heads', 'nm')
SCHEDULES = ('one_shot', 'iterative', 'gradual')
# (apply_fn, params, calibration inputs, *, head_dim, seed) -> {block: [heads] scores}.
HeadScore = Callable[..., dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Method:
  """A pruning method and where it applies (see the module docstring)."""
  name: str
  summary: str
  kinds: tuple[str, ...]
  schedules: tuple[str, ...]
  score: Callable[..., Any] | None = None
  head_score: HeadScore | None = None
  layer_rule: str | None = None  # oneshot.prune's per-layer rule (Wanda / SparseGPT).
  needs_batches: bool = False
  calibrates: bool = False


def _magnitude(params, **_):
  return scores.magnitude(params)


def _random(params, *, key=None, **_):
  return scores.random(params, key if key is not None else jax.random.PRNGKey(0))


def _with_batches(fn):
  def score(params, *, loss_fn=None, batches: Iterable = (), **_):
    if loss_fn is None:
      raise ValueError(f'The {fn.__name__} score needs loss_fn and batches.')
    return fn(params, loss_fn, batches)
  return score


def _head_magnitude(apply_fn, params, calibration, *, head_dim, seed):
  del seed
  return heads.head_scores(apply_fn, params, calibration, head_dim=head_dim)


def _head_random(apply_fn, params, calibration, *, head_dim, seed):
  order = heads.head_scores(apply_fn, params, calibration[:1], head_dim=head_dim)
  rng = np.random.default_rng(seed)
  return {name: rng.random(len(s)) for name, s in order.items()}


_UNSTRUCTURED = ('global', 'layerwise', 'neuron', 'nm')
_ALL_SCHEDULES = SCHEDULES
_REGISTRY = (
    Method('magnitude', '|w|', KINDS, _ALL_SCHEDULES, score=_magnitude,
           head_score=_head_magnitude),
    Method('random', 'uniform noise: the control', KINDS, _ALL_SCHEDULES, score=_random,
           head_score=_head_random),
    Method('saliency', 'mean |w * dL/dw| over training batches (SNIP)', _UNSTRUCTURED,
           ('one_shot', 'iterative'), score=_with_batches(scores.saliency), needs_batches=True),
    Method('sensitivity', 'OBD loss increase 1/2 F w^2 (empirical Fisher)', _UNSTRUCTURED,
           ('one_shot', 'iterative'), score=_with_batches(scores.sensitivity),
           needs_batches=True),
    Method('wanda', '|w| * ||x||, per output unit, from layer inputs', ('layerwise', 'nm'),
           ('one_shot',), layer_rule='wanda', calibrates=True),
    Method('sparsegpt', 'OBS reconstruction from layer inputs; updates kept weights',
           ('layerwise', 'nm'), ('one_shot',), layer_rule='sparsegpt', calibrates=True),
)
METHODS: dict[str, Method] = {m.name: m for m in _REGISTRY}


def register(method: Method) -> Method:
  """Adds `method` to the registry (e.g. from research code); its name must be new."""
  if method.name in METHODS:
    raise ValueError(f'A pruning method named {method.name!r} is registered already.')
  unknown = set(method.kinds) - set(KINDS) or set(method.schedules) - set(SCHEDULES)
  if unknown:
    raise ValueError(f'Method {method.name!r}: {sorted(unknown)} are not kinds ({KINDS}) or '
                     f'schedules ({SCHEDULES}).')
  if (method.score is None) == (method.layer_rule is None):
    raise ValueError(f'Method {method.name!r} needs exactly one of score and layer_rule.')
  METHODS[method.name] = method
  return method


def get(name: str) -> Method:
  """The registered method `name`; ConfigError listing the names otherwise."""
  if name not in METHODS:
    raise ConfigError(f'Unknown pruning method {name!r}; use one of: {", ".join(METHODS)}.')
  return METHODS[name]


def supporting(*, kind: str | None = None, schedule: str | None = None) -> tuple[str, ...]:
  """Names of the methods that support `kind` and / or `schedule`."""
  return tuple(m.name for m in METHODS.values()
               if (kind is None or kind in m.kinds)
               and (schedule is None or schedule in m.schedules))


def compute_scores(method: str, params: Any, *, loss_fn: scores.BatchLoss | None = None,
                   batches: Iterable[dict[str, jax.Array]] = (), key: jax.Array | None = None
                   ) -> Any:
  """Scores `params` by the registered `method` (one with a `score`, e.g. magnitude)."""
  entry = get(method)
  if entry.score is None:
    raise ValueError(f'{method} prunes layer by layer from calibration inputs '
                     '(pruning.oneshot.prune); it has no weight scores.')
  return entry.score(params, loss_fn=loss_fn, batches=batches, key=key)
