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
import sys

from absl import flags, logging

from data import paths
from launch import config_cli, stages, validate

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
_STAGES = flags.DEFINE_list(
    "stages", [], f"Subset of stages to run, in pipeline order; all when empty. Known: {stages.STAGE_NAMES}."
)


def main(argv: list[str]) -> int:
    try:
        config_cli.parse_command_line(argv)
        validate.check_workdir(_WORKDIR.value)
        selected = stages.select_stages(_STAGES.value)
        config = _CONFIG.value
        validate.check_config(config)
        config_cli.check_workdir_config(config, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value)
    except config_cli.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
    cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(paths.resolve(_WORKDIR.value), ".jax_cache")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    stages.run_pipeline(config, _WORKDIR.value, selected)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
