#!/usr/bin/env bash
# Set-up, then lint and the whole test suite (CPU only, 8 fake devices, no network).
# Extra arguments go to pytest. Two pytest workers (pytest-xdist): much of the suite waits on
# compilation and on subprocesses, so two processes finish it sooner even on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n 2 "$@"
