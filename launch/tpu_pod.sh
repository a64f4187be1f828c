#!/usr/bin/env bash
# Runs the job on every worker of a Cloud TPU VM pod slice; jax.distributed discovers the peers.
# usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]
#   e.g. launch/tpu_pod.sh my-v4-64 us-central2-b configs/demo.py gs://bucket/run1 --config.pretrain.steps=2000000
# WORKDIR must be visible to all workers (a GCS bucket or a shared filesystem).
set -euo pipefail
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd ~/tcpt && git pull --ff-only && source scripts/ensure_venv.sh &&
  python -m launch.main --multihost --config=$config --workdir=$workdir $*"
