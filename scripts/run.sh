#!/usr/bin/env bash
# Set-up, then the main job: the seed MLP on Fashion-MNIST from the local IDX files (no network).
# Extra arguments go to launch.py, e.g. --config.num_epochs=2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python launch.py --config=configs/fashion_mnist_mlp.py \
  --workdir="${WORKDIR:-runs/fashion_mnist_mlp}" "$@"
