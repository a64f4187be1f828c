"""The one entry point: runs the stages of the target-conditioned pre-training flow in order.

    python -m launch.main --config=configs/demo.py --workdir=workdirs/demo [--stages=weights,select]
                          [--config.pretrain.steps=100 ...]

Each stage reads the previous stage's outputs from the work dir and writes its own; a stage whose
outputs are complete is skipped, and a stage interrupted half-way resumes (its training runs continue
from their last checkpoint), so re-running the same command after a crash finishes the job.
The stages themselves live in `launch.stages`; this file only parses the command line.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time

from absl import flags, logging

from data import atomic, paths
from launch import config_cli, stages, validate
from launch.workdir import Workspace

_CONFIG = config_cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: every stage's outputs go here.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() first (TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS set).",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Continue a work dir whose config.json differs from this config (finished stages are kept as they are).",
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "Validate, then print the plan (stages, runs, steps, images seen, FLOPs, estimated time for config.hardware, "
    "sharded train-state memory) without computing or writing anything.",
)
_STAGES = flags.DEFINE_list(
    "stages", [], f"Subset of stages to run, in pipeline order; all when empty. Known: {stages.STAGE_NAMES}."
)


def _git_commit() -> str:
    """The code's commit (with "+dirty" when the tree has uncommitted changes), or "unknown"."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def record_launch(workdir: str, argv: list[str], config) -> str:
    """Writes this launch's commit, command line and resolved config to the work dir; returns the path."""
    ws = Workspace(paths.resolve(workdir))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = ws.launch_record(f"{stamp}-{os.getpid()}")
    command = [sys.executable, "-m", "launch.main", *argv[1:]]
    atomic.write_json(
        path,
        {
            "git_commit": _git_commit(),
            "command": shlex.join(command),
            "argv": command,
            "time_utc": stamp,
            "host": socket.gethostname(),
            "config": config_cli.as_json(config),
        },
    )
    return path


def main(argv: list[str]) -> int:
    try:
        config_cli.parse_command_line(argv)
        dry_run, workdir = _DRY_RUN.value, _WORKDIR.value or ""
        if not (dry_run and workdir and paths.is_url(workdir)):  # a bucket is checked where it runs
            validate.check_workdir(workdir)
        selected = stages.select_stages(_STAGES.value)
        config = _CONFIG.value
        validate.check_config(config, check_paths=not dry_run)
        validate.check_hardware(config)
        validate.check_grid(config, check_paths=not dry_run)
        if not dry_run:
            config_cli.check_workdir_config(config, workdir, _ALLOW_CONFIG_CHANGE.value)
            if not (config.get("grid") and config.grid.targets):  # a grid checks each target's job itself
                stages.check_prerequisites(workdir, selected)
    except config_cli.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if dry_run:
        from launch import dryrun

        resolved = paths.resolve(workdir)
        print(dryrun.format_plan(dryrun.plan(config, resolved, selected), config, resolved))
        return 0
    logging.set_verbosity(logging.WARNING)
    import jax

    if _MULTIHOST.value:
        jax.distributed.initialize()
    try:
        validate.check_devices(config, jax.process_count(), jax.local_device_count())
    except config_cli.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Every training and evaluation run of a job compiles the same few programs: cache them on disk.
    cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(paths.resolve(workdir), ".jax_cache")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if jax.process_index() == 0:
        record_launch(workdir, argv, config)
    try:
        if config.get("grid") and config.grid.targets:
            from launch import grid

            grid.run_grid(config, workdir, selected)
        else:
            stages.run_pipeline(config, workdir, selected)
    except config_cli.ConfigError as err:  # a value only the data shows to be unusable (e.g. dedup's thresholds)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
