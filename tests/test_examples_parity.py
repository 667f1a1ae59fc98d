"""The examples/ scripts of issue 16's parity part run on their tiny generated data."""

import os
import runpy

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples')


def test_own_cnn_gradual_reaches_its_sparsity_and_learns(capsys):
  main = runpy.run_path(os.path.join(EXAMPLES, 'own_cnn_gradual.py'))['main']
  result = main(steps=120, sparsity=0.8)
  assert result['sparsity'] == pytest.approx(0.8, abs=1e-4)
  assert result['test_accuracy'] > 0.9  # 4 classes: chance 0.25.
  assert 'Conv_0/kernel' in capsys.readouterr().out
