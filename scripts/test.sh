#!/usr/bin/env bash
# The test suite, on CPU (8 fake XLA devices are set up by tests/conftest.py), after the code-health
# checks: lint (ruff check), formatting (ruff format --check) and types (mypy); configs in
# pyproject.toml. `set -e`: the first check that finds anything stops the script with its non-zero
# status, so CI (.ci/run) fails on a lint, format or type error as on a failing test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/ensure_venv.sh"
cd "$root"
ruff check .
ruff format --check .
mypy
exec python -m pytest -q "$@"
