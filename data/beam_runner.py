"""Runs the project's Apache Beam pipelines (source preparation, selected-set writes) on a chosen runner.

At corpus scale (hundreds of millions of images) preparing the source and writing a selected set
are data jobs for a distributed engine with retries, autoscaling and monitoring, not for the
accelerator hosts; TFDS and ArrayRecord build their large datasets the same way. One config block
(`default_config`, e.g. `selection.beam`, `data.beam`) picks the runner and its options:

  DirectRunner    local, in this process or `direct_num_workers` worker processes
                  (`direct_running_mode`: in_memory | multi_threading | multi_processing)
  DataflowRunner  `project`, `region`, `temp_location` (gs://...)
  FlinkRunner     `flink_master` (host:port)
  SparkRunner     `spark_master` (spark://host:port)
  extra_options   any further Beam flags, passed through (e.g. --sdk_container_image=...)

"DirectRunner" here always means Beam's batch engine in Python (the FnApiRunner the direct runner
uses for batch jobs). Beam's own `DirectRunner` tries the Prism runner first, which downloads a
binary at run time and so fails offline; it is never picked implicitly.

`run` logs the pipeline's counters (examples read, written, skipped, bytes) when it ends; with
`dry_run` it prints the options and the pipeline graph and runs nothing.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import ml_collections

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")
RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_config() -> ml_collections.ConfigDict:
    """The runner block of a config; strings left empty are not passed to Beam."""
    c = ml_collections.ConfigDict()
    c.runner = "DirectRunner"
    c.direct_num_workers = 1
    c.direct_running_mode = "in_memory"
    c.project = ""
    c.region = ""
    c.temp_location = ""
    c.flink_master = ""
    c.spark_master = ""
    c.extra_options = ()
    return c


def option_flags(config: ml_collections.ConfigDict, prefix: str = "beam") -> list[str]:
    """Beam command-line flags for the runner block at config key `prefix`; a required option left
    empty is an error naming its key."""
    if config.runner not in RUNNERS:
        raise ValueError(f"config key '{prefix}.runner' = {config.runner!r} is not one of {RUNNERS}")
    flags = [f"--runner={config.runner}"]
    required = {
        "DirectRunner": (),
        "DataflowRunner": ("project", "region", "temp_location"),
        "FlinkRunner": ("flink_master",),
        "SparkRunner": ("spark_master",),
    }[config.runner]
    missing = [f"{prefix}.{key}" for key in required if not config[key]]
    if missing:
        raise ValueError(f"config key '{missing[0]}' is empty: {config.runner} needs {', '.join(missing)}")
    if config.runner == "DirectRunner":
        flags += [
            f"--direct_num_workers={config.direct_num_workers}",
            f"--direct_running_mode={config.direct_running_mode}",
        ]
    elif config.runner == "DataflowRunner":
        flags += [f"--project={config.project}", f"--region={config.region}", f"--temp_location={config.temp_location}"]
    elif config.runner == "FlinkRunner":
        flags.append(f"--flink_master={config.flink_master}")
    else:
        flags.append(f"--spark_master_url={config.spark_master}")
    return flags + list(config.extra_options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner flags of a pipeline's command line (same names as the config block)."""
    defaults = default_config()
    group = parser.add_argument_group("Beam runner")
    group.add_argument("--runner", default=defaults.runner, choices=RUNNERS)
    group.add_argument("--direct_num_workers", type=int, default=defaults.direct_num_workers)
    group.add_argument("--direct_running_mode", default=defaults.direct_running_mode, choices=RUNNING_MODES)
    for key in ("project", "region", "temp_location", "flink_master", "spark_master"):
        group.add_argument(f"--{key}", default="")
    group.add_argument("--beam_option", action="append", default=[], help="a further Beam flag (repeatable)")
    group.add_argument("--dry_run", action="store_true", help="print the options and the graph, run nothing")


def config_from_args(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """The runner block from the flags of `add_arguments`."""
    config = default_config()
    for key in config:
        if key != "extra_options":
            config[key] = getattr(args, key)
    config.extra_options = tuple(args.beam_option)
    return config


def _graph(pipeline) -> list[str]:
    """The pipeline's top-level transforms in construction order, each with its inputs."""
    from apache_beam.pipeline import PipelineVisitor

    lines: list[str] = []

    class Visitor(PipelineVisitor):
        def _add(self, node) -> None:
            if node.full_label and "/" not in node.full_label:
                producers = [getattr(v, "producer", None) for v in node.inputs]
                inputs = sorted({p.full_label.split("/")[0] for p in producers if p is not None})
                sides = sorted({si.pvalue.producer.full_label.split("/")[0] for si in node.side_inputs})
                lines.append(
                    f"{node.full_label}  <- {', '.join(inputs) or '(root)'}"
                    + (f"  [side inputs: {', '.join(sides)}]" if sides else "")
                )

        def enter_composite_transform(self, node) -> None:
            self._add(node)

        def visit_transform(self, node) -> None:
            self._add(node)

    pipeline.visit(Visitor())
    return lines


def counter_values(result) -> dict[str, int]:
    """Every counter of a finished pipeline, `namespace/name -> value` (committed where the runner has it)."""
    from apache_beam.metrics.metric import MetricsFilter

    values: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter())["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        key = f"{counter.key.metric.namespace}/{counter.key.metric.name}"
        values[key] = values.get(key, 0) + int(value)
    return dict(sorted(values.items()))


def run(
    build: Callable[[object], None], config: ml_collections.ConfigDict, *, name: str, dry_run: bool = False
) -> dict[str, int] | None:
    """Builds a pipeline with `build(pipeline)`, runs it to completion and returns its counters.

    With `dry_run`, prints the options and the graph instead and returns None.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    flags = option_flags(config)
    options = PipelineOptions(flags)
    runner = config.runner
    if config.runner == "DirectRunner":
        from apache_beam.runners.portability.fn_api_runner import fn_runner

        runner = fn_runner.FnApiRunner()
        if config.direct_running_mode == "multi_processing":  # worker processes import this project
            path = os.environ.get("PYTHONPATH", "")
            if ROOT not in path.split(os.pathsep):
                os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, path) if p)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build(pipeline)
    if dry_run:
        print(f"[beam] {name}: dry run, nothing executed")
        print(f"[beam] options: {' '.join(flags)}")
        for label in _graph(pipeline):
            print(f"[beam] transform: {label}")
        return None
    print(f"[beam] {name}: running on {config.runner} ({' '.join(flags[1:])})", flush=True)
    result = pipeline.run()
    result.wait_until_finish()
    counters = counter_values(result)
    print(f"[beam] {name}: done; counters {counters}", flush=True)
    return counters
