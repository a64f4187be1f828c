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
# Two pytest workers (pytest-xdist), one per core of the 2-core machine the suite's time is set for;
# each takes whole files (--dist loadfile: a module's shared fixtures are built once), the files with
# slow tests first (tests/conftest.py). Any pytest option can follow, e.g. `-n 0` for one process.
exec python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder "$@"
