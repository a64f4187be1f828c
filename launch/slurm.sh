#!/usr/bin/env bash
# Submits a job to SLURM (launch/slurm.sbatch: one process per node, jax.distributed over the nodes).
#
# usage: launch/slurm.sh [--dry_run] [sbatch options...] -- CONFIG WORKDIR [launch.main flags...]
#   e.g. launch/slurm.sh --nodes=4 --partition=gpu -- configs/paper/table3.py:pets /shared/runs/pets \
#          "--config.selection.methods=('same','elastic')"
#
# The job's arguments travel as sbatch's argv to the batch script, which passes them on as "$@": no
# shell ever re-reads them, so spaces, quotes and ';' in an override stay data. WORKDIR must be on a
# filesystem every node sees (or gs://). Submitting the same command again after a preemption or a
# time limit resumes the job. --dry_run prints the exact sbatch command (shell-quoted) and submits nothing.
set -euo pipefail
dry_run=0
if [[ "${1:-}" == --dry_run ]]; then dry_run=1; shift; fi
sbatch_options=()
while [[ $# -gt 0 && "$1" != -- ]]; do sbatch_options+=("$1"); shift; done
if [[ $# -lt 3 ]]; then
  sed -n '4,6p' "$0" >&2
  exit 2
fi
shift  # the --
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command=(sbatch --chdir="$root" "${sbatch_options[@]}" "$root/launch/slurm.sbatch" "$@")
if [[ $dry_run == 1 ]]; then
  printf '%q ' "${command[@]}" | sed 's/ $//'
  echo
else
  "${command[@]}"
fi
