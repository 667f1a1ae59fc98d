"""The seed's experiment, exactly: MLP 784-512-256-10 (ReLU) on MNIST, Adam 1e-3, batch 64,
10 epochs, cross-entropy, reshuffled each epoch, inputs scaled to [0, 1] and no other tricks.

    python launch.py --config=configs/mnist_mlp.py --workdir=runs/mnist

MNIST is downloaded through TFDS (no local copy on our machines; point
`--config.data.idx_dir` at a folder of the four MNIST IDX files to run offline).
Expected: about 98% test accuracy (not measured here: our machines cannot download MNIST).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.name = 'mnist_mlp'
  config.data.name = 'mnist'
  config.data.idx_dir = ''  # Download the IDX files (TFDS download manager, checksums verified).
  config.data.normalize = False
  return config
