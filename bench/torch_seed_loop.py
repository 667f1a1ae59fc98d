"""The seed's PyTorch loop, standalone: what bench/startup.py times against the main job.

    .venv/bin/python bench/torch_seed_loop.py [--epochs 3] [--threads 2]

Reads the Fashion-MNIST IDX files itself (no bigmodel_jax import), scales pixels to [0, 1] and
normalises them with the train set's mean and std, then trains MLP 784-512-256-10 with Adam 1e-3,
batch 64 (shuffled index slices of in-memory tensors, the last partial batch dropped, loss.item()
per step as the seed does) and evaluates on the test split after every epoch. Prints one line per
epoch and, last, one JSON line. Nothing here asserts a speed.
"""

import argparse
import gzip
import json
import os
import time

START = time.time()

import numpy as np  # noqa: E402
import torch  # noqa: E402

IDX_DIR = '/usr/share/datasets/fashion-mnist'


def read_idx(folder: str, stem: str) -> np.ndarray:
  """An IDX file of unsigned bytes (gzipped or not) as an array of its declared shape."""
  for name in (stem + '.gz', stem):
    file = os.path.join(folder, name)
    if os.path.exists(file):
      with (gzip.open if name.endswith('.gz') else open)(file, 'rb') as f:
        raw = f.read()
      ndim = raw[3]
      shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
      return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)
  raise FileNotFoundError(f'{stem}[.gz] not in {folder}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--idx_dir', default=IDX_DIR)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)

  def split(prefix):
    images = read_idx(args.idx_dir, f'{prefix}-images-idx3-ubyte').reshape(-1, 784)
    labels = read_idx(args.idx_dir, f'{prefix}-labels-idx1-ubyte')
    return torch.from_numpy(images.astype(np.float32) / 255), torch.from_numpy(
        labels.astype(np.int64))

  x, y = split('train')
  x_test, y_test = split('t10k')
  mean, std = x.mean(), x.std()
  x, x_test = (x - mean) / std, (x_test - mean) / std
  data_s = time.time() - START

  model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()
  batch, steps = 64, len(y) // 64
  first_step_s, history = None, []
  for epoch in range(args.epochs):
    model.train()
    perm, running = torch.randperm(len(y)), 0.0
    for i in range(steps):
      if first_step_s is None:
        first_step_s = time.time() - START
      index = perm[i * batch:(i + 1) * batch]
      optimizer.zero_grad()
      loss = loss_fn(model(x[index]), y[index])
      loss.backward()
      optimizer.step()
      running += loss.item()
    model.eval()
    with torch.no_grad():
      correct = sum(int((model(x_test[j:j + 1000]).argmax(-1) == y_test[j:j + 1000]).sum())
                    for j in range(0, len(y_test), 1000))
    history.append({'epoch': epoch + 1, 'train_loss': running / steps,
                    'eval_accuracy': correct / len(y_test)})
    print(f'epoch {epoch + 1}/{args.epochs}  train_loss {running / steps:.4f}  '
          f'eval_accuracy {correct / len(y_test):.4f}', flush=True)
  print(json.dumps({'start_time': START, 'data_s': data_s, 'first_step_s': first_step_s,
                    'final_eval_accuracy': history[-1]['eval_accuracy'],
                    'threads': torch.get_num_threads(), 'torch_version': torch.__version__}))


if __name__ == '__main__':
  main()
