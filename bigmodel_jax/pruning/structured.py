"""Structured pruning of whole hidden neurons of an MLP, and the physical shrink that follows.

Removing hidden neuron j of layer i zeroes column j of `Dense_i/kernel`, entry j of
`Dense_i/bias` and row j of `Dense_{i+1}/kernel`. A neuron's score sums a weight score over its
incoming column and bias (for magnitude: the L1 norm, as in Li et al. 2017). `shrink_mlp` then
drops those rows and columns and returns a narrower dense MLP whose outputs equal the masked
model's, and which runs faster because its matrices are smaller.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.models.mlp import MLP
from bigmodel_jax.pruning import selection


def _dense_names(params: Any) -> list[str]:
  names = sorted((k for k in params if k.startswith('Dense_')), key=lambda k: int(k[6:]))
  if len(names) < 2 or set(params) != set(names):
    raise ConfigError('Neuron pruning supports MLP params {Dense_0, ..., Dense_L} with at least '
                      f'one hidden layer; got {sorted(params)}.')
  return names


def neuron_scores(scores: Any) -> list[jax.Array]:
  """One score vector per hidden layer: the weight scores summed over each neuron's inputs."""
  names = _dense_names(scores)
  return [jnp.sum(scores[n]['kernel'], axis=0) + scores[n].get('bias', 0.0) for n in names[:-1]]


def neuron_keep(scores: Any, sparsity: float, *, scope: str = 'layerwise') -> list[jax.Array]:
  """Bool keep-vectors per hidden layer removing the fraction `sparsity` of hidden neurons.

  'layerwise' removes that fraction from every hidden layer; 'global' ranks all hidden neurons
  together (scores of layers with different fan-in are not always comparable: use with care).
  Each layer keeps at least one neuron.
  """
  selection.check_sparsity(sparsity)
  vectors = neuron_scores(scores)
  keep = selection.masks_from_scores(vectors, sparsity, scope=scope)
  return [k.at[jnp.argmax(v)].set(True) for k, v in zip(keep, vectors, strict=True)]


def neuron_masks(params: Any, keep: list[jax.Array]) -> Any:
  """Element masks of the params that remove the hidden neurons not in `keep`."""
  names = _dense_names(params)
  masks = jax.tree.map(lambda x: jnp.ones(x.shape, jnp.bool_), params)
  for i, k in enumerate(keep):
    masks[names[i]]['kernel'] = jnp.broadcast_to(k[None, :], params[names[i]]['kernel'].shape)
    if 'bias' in params[names[i]]:
      masks[names[i]]['bias'] = jnp.array(k, copy=True)  # Never alias: states get donated.
    masks[names[i + 1]]['kernel'] = jnp.broadcast_to(k[:, None],
                                                     params[names[i + 1]]['kernel'].shape)
  return masks


def shrink_mlp(model: MLP, params: Any, keep: list[jax.Array]) -> tuple[MLP, Any]:
  """A narrower MLP and its params without the removed neurons (same outputs as the masked one)."""
  names = _dense_names(params)
  if len(keep) != len(model.hidden_sizes):
    raise ConfigError(f'{len(keep)} keep-vectors for an MLP with {len(model.hidden_sizes)} hidden '
                      'layers.')
  keep = [np.asarray(jax.device_get(k), bool) for k in keep]
  params = jax.device_get(params)
  new = {n: dict(params[n]) for n in names}
  for i, k in enumerate(keep):
    idx = np.flatnonzero(k)
    new[names[i]]['kernel'] = np.asarray(new[names[i]]['kernel'])[:, idx]
    if 'bias' in new[names[i]]:
      new[names[i]]['bias'] = np.asarray(new[names[i]]['bias'])[idx]
    new[names[i + 1]]['kernel'] = np.asarray(new[names[i + 1]]['kernel'])[idx, :]
  widths = tuple(int(k.sum()) for k in keep)
  return dataclasses.replace(model, hidden_sizes=widths), jax.tree.map(jnp.asarray, new)
