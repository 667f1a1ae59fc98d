"""examples/oneshot_custom_model.py runs as a script: Wanda and SparseGPT on a model of its own."""

import math
import os
import runpy
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples',
                      'oneshot_custom_model.py')


def test_oneshot_custom_model_example_runs(monkeypatch, capsys):
  monkeypatch.setattr(sys, 'argv', [SCRIPT, '--steps', '60'])
  runpy.run_path(SCRIPT, run_name='__main__')
  out = capsys.readouterr().out
  rows = {line.split('|')[1].strip(): line.split('|')[2:-1] for line in out.splitlines()
          if line.startswith('| ') and not line.startswith('| model')}
  assert set(rows) == {'dense', 'wanda', 'sparsegpt'}
  assert 'block_1 (6 layers, group 3/3)' in out  # Attention (DenseGeneral) and MLP per block.
  for method in ('wanda', 'sparsegpt'):
    accuracy, loss, sparsity = (cell.strip() for cell in rows[method])
    assert sparsity == '0.5000 (13 layers)'  # Conv stem + 2 x (q, k, v, out, fc, proj).
    assert float(accuracy) > 0.25 and math.isfinite(float(loss))  # Above chance (4 classes).
