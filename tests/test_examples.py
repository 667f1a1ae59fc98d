"""The scripts in examples/ run, on their generated data, and do what they say."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / 'examples'


def _load(name):
  spec = importlib.util.spec_from_file_location(f'example_{name}', EXAMPLES / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_nnx_mlp(tmp_path):
  result = _load('nnx_mlp').main(str(tmp_path), sparsity=0.8, steps=150)
  assert result['stats']['sparsity'] == pytest.approx(0.8, abs=1e-3)
  assert result['round_trip_equal']
  assert result['retrained'] > 0.5  # Four classes: chance is 0.25.
  assert result['sizes']['file_bytes'] < result['sizes']['dense_float32_bytes']


def test_stock_train_state():
  result = _load('stock_train_state').main(sparsity=0.8, steps=150)
  assert result['revived'] == 0
  assert result['stats']['sparsity'] == pytest.approx(0.8, abs=1e-3)
  assert result['retrained'] > 0.5
