#!/usr/bin/env bash
# The test suite, on CPU (8 fake XLA devices are set up by tests/conftest.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/ensure_venv.sh"
cd "$root"
exec python -m pytest -q "$@"
