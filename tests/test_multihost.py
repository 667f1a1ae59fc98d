"""Two OS processes with 2 CPU devices each train as one 4-device cluster (jax.distributed).

Each process runs `launch.py` with `parallelism.distributed`; the coordinator listens on a free
loopback port. The cluster's run must match a one-process run on 4 devices step for step.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_parallel import _latest_arrays

from bigmodel_jax import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 180
PROXY_VARIABLES = ('http_proxy', 'https_proxy', 'all_proxy', 'no_proxy', 'grpc_proxy')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _overrides(idx_dir, tfds_dir, layout):
  return {'data.idx_dir': idx_dir, 'data.tfds_data_dir': tfds_dir, 'num_train_steps': 20,
          **{f'parallelism.{k}': v for k, v in layout.items()}}


def _run_cluster(workdir, overrides, processes=2, devices_each=2):
  env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices_each}'
  port = _free_port()
  flags = [f'--config.{k}={v}' for k, v in overrides.items()] + [
      '--config.parallelism.distributed=True',
      f'--config.parallelism.coordinator_address=127.0.0.1:{port}',
      f'--config.parallelism.num_processes={processes}',
      '--config.parallelism.heartbeat_timeout_s=15']
  procs = [subprocess.Popen(
      [sys.executable, 'launch.py', '--config=configs/tiny.py', f'--workdir={workdir}', *flags,
       f'--config.parallelism.process_id={i}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(processes)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:  # Never leave a peer waiting on the coordinator.
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
    assert p.returncode == 0, f'process {i} failed:\n{out[-4000:]}'
  return outputs


@pytest.mark.parametrize('layout', [{'mode': 'sharded', 'fsdp': 2}, {'mode': 'pmap'}],
                         ids=['sharded-fsdp2', 'pmap'])
def test_two_processes_train_as_one_cluster(tiny_config, idx_dir, tfds_dir, tmp_path, layout):
  reference_dir, cluster_dir = str(tmp_path / 'one'), str(tmp_path / 'cluster')
  overrides = _overrides(idx_dir, tfds_dir, layout)
  for key, value in overrides.items():
    section, _, name = key.rpartition('.')
    (tiny_config[section] if section else tiny_config)[name] = value
  tiny_config.parallelism.num_devices = 4  # Same 4 devices' worth of shards, one process.
  reference = training.train_and_evaluate(tiny_config, reference_dir)

  outputs = _run_cluster(cluster_dir, overrides)
  with open(os.path.join(cluster_dir, 'results.json')) as f:
    results = json.load(f)
  assert results['parallelism']['num_processes'] == 2
  assert results['parallelism']['num_devices'] == 4
  assert 'Done:' in outputs[0] and 'Done:' not in outputs[1]  # Only process 0 reports.
  assert results['final_eval_loss'] == pytest.approx(reference['final_eval_loss'], abs=1e-5)
  a, b = _latest_arrays(cluster_dir)['params'], _latest_arrays(reference_dir)['params']
  diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  print(f'{layout}: 2 processes x 2 devices vs 1 x 4, max abs param diff {diff:.2e}')
  assert diff < 1e-5
