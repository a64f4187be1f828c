#!/usr/bin/env bash
# Runs a job on every worker of a Cloud TPU VM slice; jax.distributed (--multihost) finds the peers.
#
# usage: launch/tpu_pod.sh [--dry_run] [--queued] [--spot] NAME ZONE ACCELERATOR CONFIG WORKDIR [launch.main flags...]
#   e.g. launch/tpu_pod.sh tcpt-v3-256 europe-west4-a v3-256 configs/paper/table3.py:pets gs://BUCKET/runs/pets \
#          "--config.selection.methods=('same','elastic')"
#
# 1. creates the TPU VM (or, with --queued, a queued resource, waiting until it is ACTIVE) unless it exists;
# 2. puts this checkout's commit on every worker (a git bundle copied over, checked out detached);
# 3. installs the pinned stack (scripts/ensure_venv.sh) plus jax's TPU runtime;
# 4. runs the same launch.main command on all workers. WORKDIR must be a gs:// path (every worker sees it).
# Launching again after a preemption (same arguments) recreates a deleted VM and resumes the job: finished
# stages are skipped and training runs continue from their last checkpoint.
#
# Every argument reaches the workers as the same argv: the remote command is built with printf %q, so
# spaces, quotes, ';' and '$' in an override are data, never shell. --dry_run prints the exact commands
# (one per line, each a valid shell command) and runs nothing.
set -euo pipefail

dry_run=0 queued=0 spot=()
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --dry_run) dry_run=1 ;;
    --queued) queued=1 ;;
    --spot) spot=(--spot) ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $# -lt 5 ]]; then
  sed -n '4,6p' "$0" >&2
  exit 2
fi
name="$1" zone="$2" accelerator="$3" config="$4" workdir="$5"
shift 5
runtime="${TPU_RUNTIME_VERSION:-tpu-ubuntu2204-base}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
commit="$(git -C "$root" rev-parse HEAD)"
jax_version="$(sed -n 's/^jax==//p' "$root/requirements.lock")"
bundle="/tmp/tcpt-${commit}.bundle"

if [[ "$workdir" != gs://* ]]; then
  echo "error: WORKDIR must be a gs:// path that every worker sees, got '$workdir'" >&2
  exit 2
fi
if [[ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]]; then
  echo "warning: uncommitted changes are NOT sent; the workers run commit $commit" >&2
fi

run() {  # prints the command (shell-quoted) in a dry run, runs it otherwise
  if [[ $dry_run == 1 ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

quote() { printf '%q ' "$@" | sed 's/ $//'; }

remote_setup="set -e; mkdir -p ~/tcpt && cd ~/tcpt && { [ -d .git ] || git init -q; } && git fetch -q ~/tcpt.bundle HEAD && git checkout -q --detach $(quote "$commit") && bash scripts/ensure_venv.sh && .venv/bin/pip install -q $(quote "jax[tpu]==${jax_version}")"
remote_job="cd ~/tcpt && exec .venv/bin/python -m launch.main --multihost $(quote "--config=$config" "--workdir=$workdir" "$@")"

vm=(gcloud compute tpus tpu-vm)
exists=1
if [[ $dry_run == 1 ]]; then
  echo "# if '${vm[*]} describe $name --zone=$zone' fails, the VM is created:"
elif ! "${vm[@]}" describe "$name" --zone="$zone" >/dev/null 2>&1; then
  exists=0
fi
if [[ $dry_run == 1 || $exists == 0 ]]; then
  if [[ $queued == 1 ]]; then
    run gcloud compute tpus queued-resources create "$name" --node-id="$name" --zone="$zone" \
      --accelerator-type="$accelerator" --runtime-version="$runtime" "${spot[@]}"
    if [[ $dry_run == 0 ]]; then
      until [[ "$(gcloud compute tpus queued-resources describe "$name" --zone="$zone" --format='value(state.state)')" == ACTIVE ]]; do
        sleep 60
      done
    fi
  else
    run "${vm[@]}" create "$name" --zone="$zone" --accelerator-type="$accelerator" --version="$runtime" "${spot[@]}"
  fi
fi
run git -C "$root" bundle create "$bundle" HEAD
run "${vm[@]}" scp "$bundle" "$name:tcpt.bundle" --zone="$zone" --worker=all
run "${vm[@]}" ssh "$name" --zone="$zone" --worker=all --command="$remote_setup"
run "${vm[@]}" ssh "$name" --zone="$zone" --worker=all --command="$remote_job"
