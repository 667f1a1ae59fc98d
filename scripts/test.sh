#!/usr/bin/env bash
# Set-up, then lint and the whole test suite (CPU only, 8 fake devices, no network).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
