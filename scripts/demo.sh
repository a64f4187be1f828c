#!/usr/bin/env bash
# The main job: the whole target-conditioned pre-training flow on the embedded default data.
# Extra arguments are passed to launch.main, e.g. --config.pretrain.steps=100.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/ensure_venv.sh"
cd "$root"
exec python -m launch.main --config=configs/demo.py --workdir="${WORKDIR:-workdirs/demo}" "$@"
