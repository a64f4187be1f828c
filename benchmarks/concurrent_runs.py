"""A job's independent runs side by side (`concurrent_runs=0`: one pinned worker per core) against the
same job with its runs one after another (`concurrent_runs=1`), in one run of this script.

Runs `python -m launch.main` twice from empty work dirs (one after another first, so the side-by-side
job cannot profit from a warmer page cache), each with its own persistent compilation cache, and prints
each job's wall time, its stages' times, the ratio, and whether the two reports (`report.csv` less its
wall-time columns, and every fine-tuning run's test metrics) are identical. Also prints the training
runs' input wait (the trainer's own figure, from each run's final.json: its last logging window), and
each training run's own wall time in both jobs with the speed-up that perfect packing of runs side by
side would give (`run_speedups`): the ceiling the job's ratio is read against.

  .venv/bin/python benchmarks/concurrent_runs.py --config=configs/demo.py --dir=/tmp/concurrent_bench
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = {"one_after_another": 1, "side_by_side": 0}


def run_job(config: str, workdir: str, concurrent_runs: int, extra: list[str]) -> float:
    """Wall seconds of one launch of the whole job; its output goes to <workdir>.log."""
    shutil.rmtree(workdir, ignore_errors=True)
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, ".jax_cache"))
    command = [sys.executable, "-m", "launch.main", f"--config={config}", f"--workdir={workdir}"]
    command += [f"--config.concurrent_runs={concurrent_runs}", *extra]
    started = time.perf_counter()
    with open(workdir + ".log", "w") as log:
        subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def report_rows(workdir: str) -> list[dict]:
    """The report's rows without the columns that time something."""
    with open(os.path.join(workdir, "report.csv")) as handle:
        return [{k: v for k, v in row.items() if not k.endswith("_wall_s")} for row in csv.DictReader(handle)]


def test_metrics(workdir: str) -> dict[str, dict]:
    found = {}
    for path in sorted(glob.glob(os.path.join(workdir, "**", "test_metrics.json"), recursive=True)):
        with open(path) as handle:
            found[os.path.relpath(path, workdir)] = json.load(handle)
    return found


def stage_seconds(workdir: str) -> dict[str, float]:
    seconds = {}
    for path in sorted(glob.glob(os.path.join(workdir, "stages", "*.json"))):
        with open(path) as handle:
            marker = json.load(handle)
        seconds[marker["stage"]] = round(float(marker["seconds"]), 1)
    return seconds


def finals(workdir: str) -> dict[str, dict]:
    """Each training run's final.json, by run directory."""
    found = {}
    for path in sorted(glob.glob(os.path.join(workdir, "**", "final.json"), recursive=True)):
        with open(path) as handle:
            found[os.path.relpath(os.path.dirname(path), workdir)] = json.load(handle)
    return found


def input_waits(workdir: str) -> dict[str, float]:
    """Each training run's input-wait fraction (%, last logging window), by run directory."""
    return {
        run: round(100 * final["input_wait_fraction"], 1)
        for run, final in finals(workdir).items()
        if "input_wait_fraction" in final
    }


def run_speedups(sequential: str, side_by_side: str, workers: int) -> dict:
    """Each training run's own wall time (`wall_s`) in the two jobs, and what `workers` runs side by side
    would gain over the same runs in turn if they packed perfectly: workers * t_in_turn / t_beside.
    The sum over runs bounds the job's speed-up from running side by side (compiles, restores and
    evaluations outside `wall_s` aside): it says how much of both cores one run already uses."""
    ours, theirs = finals(sequential), finals(side_by_side)
    runs = {
        run: {
            "in_turn_s": round(ours[run]["wall_s"], 1),
            "beside_s": round(theirs[run]["wall_s"], 1),
            "packed_speedup": round(workers * ours[run]["wall_s"] / theirs[run]["wall_s"], 2),
        }
        for run in sorted(ours.keys() & theirs.keys())
    }
    in_turn = sum(r["in_turn_s"] for r in runs.values())
    beside = sum(r["beside_s"] for r in runs.values())
    return {"runs": runs, "packed_speedup_all_runs": round(workers * in_turn / beside, 2) if beside else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.py")
    parser.add_argument("--dir", default="/tmp/concurrent_bench")
    parser.add_argument("--override", action="append", default=[], help="extra --config.x=y for both jobs")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    wall = {}
    for mode, value in MODES.items():
        load = os.getloadavg()[0]
        wall[mode] = run_job(args.config, os.path.join(args.dir, mode), value, args.override)
        workdir = os.path.join(args.dir, mode)
        print(
            json.dumps(
                {
                    "mode": mode,
                    "concurrent_runs": value,
                    "wall_s": round(wall[mode], 1),
                    "load_at_start": round(load, 2),
                    "load_at_end": round(os.getloadavg()[0], 2),
                    "stages_s": stage_seconds(workdir),
                }
            ),
            flush=True,
        )
    first, second = (os.path.join(args.dir, mode) for mode in MODES)
    waits = input_waits(second)
    print(json.dumps({"input_wait_pct_side_by_side": waits, "max": max(waits.values(), default=0.0)}))
    print(json.dumps({"input_wait_pct_one_after_another": input_waits(first)}))
    workers = len(os.sched_getaffinity(0))
    print(json.dumps({"training_runs_wall_s": run_speedups(first, second, workers), "workers": workers}))
    identical = report_rows(first) == report_rows(second) and test_metrics(first) == test_metrics(second)
    print(
        f"side by side / one after another: {wall['one_after_another'] / wall['side_by_side']:.2f}x faster "
        f"({wall['side_by_side']:.0f} s against {wall['one_after_another']:.0f} s on {os.cpu_count()} cores); "
        f"reports identical: {identical}"
    )


if __name__ == "__main__":
    main()
