#!/usr/bin/env bash
# The accelerator benchmark in one command (see benchmarks/accelerator.py for the rows):
#   benchmarks/accelerator.sh               # one GPU/TPU chip; prints one table in under 8 minutes
#   benchmarks/accelerator.sh --cpu_smoke   # the same code at tiny sizes on CPU
# Compiled programs persist in $JAX_COMPILATION_CACHE_DIR (default /tmp/jax_cache_accelerator), so a
# rerun skips most compiles; delete it to time compiles from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache_accelerator}"
exec timeout 540 "$PYTHON" benchmarks/accelerator.py "$@"
