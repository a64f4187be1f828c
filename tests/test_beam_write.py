"""The selected-set write as a Beam pipeline (direct runner): byte-identical to the in-process writer with
1 and 2 workers, a killed run rerun to the same bytes, the dry run, and the runner options' checks."""

import os
import signal
import subprocess
import sys
import time
from typing import Any

import ml_collections
import pytest

from data import beam_runner, manifest
from launch import validate
from launch.config_cli import ConfigError
from selection import beam_write, write
from tests.test_selection_write import make_label_plan, make_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("source"))
    make_source(directory)
    return directory


def contents(directory: str) -> dict[str, bytes]:
    """Every file of a finished write by name: shards, manifest and write_config.json."""
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def direct(workers: int) -> ml_collections.ConfigDict:
    config = beam_runner.default_config()
    config.direct_num_workers = workers
    config.direct_running_mode = "multi_processing" if workers > 1 else "in_memory"
    return config


def test_beam_write_equals_inprocess_with_one_and_two_workers(source_dir, tmp_path):
    plan = make_label_plan(source_dir, "elastic", 150)
    kwargs: dict[str, Any] = {"records_per_shard": 30, "seed": 11}
    reference = write.write_selected(
        source_dir, plan, str(tmp_path / "inprocess"), process_index=0, process_count=1, **kwargs
    )
    assert reference.num_records == 150 and len(reference.files) == 5
    expected = contents(str(tmp_path / "inprocess"))
    for workers in (1, 2):
        out = str(tmp_path / f"beam{workers}")
        shard_set = beam_write.write_selected(source_dir, plan, out, beam_config=direct(workers), **kwargs)
        assert shard_set is not None
        assert shard_set.record_counts == reference.record_counts
        assert contents(out) == expected, f"{workers} worker(s)"
    manifest.load_manifest(str(tmp_path / "beam2"))  # sha256s computed while writing match the files


def test_beam_write_example_plan_and_with_replacement(source_dir, tmp_path):
    wanted = {b"s0-1": 3, b"s2-5": 1, b"s4-39": 2}
    write.write_selected(
        source_dir, wanted, str(tmp_path / "a"), records_per_shard=4, seed=0, process_index=0, process_count=1
    )
    beam_write.write_selected(source_dir, wanted, str(tmp_path / "b"), records_per_shard=4, seed=0)
    assert contents(str(tmp_path / "a")) == contents(str(tmp_path / "b"))
    plan = make_label_plan(source_dir, "same", 333)  # with replacement: repeats spread over output shards
    write.write_selected(
        source_dir, plan, str(tmp_path / "c"), records_per_shard=100, seed=7, process_index=0, process_count=1
    )
    beam_write.write_selected(source_dir, plan, str(tmp_path / "d"), records_per_shard=100, seed=7)
    assert contents(str(tmp_path / "c")) == contents(str(tmp_path / "d"))


_KILLED = """
import sys
sys.path.insert(0, {root!r})
from tests.test_selection_write import make_label_plan
from selection import beam_write
beam_write.write_selected({src!r}, make_label_plan({src!r}, "same", 600), {out!r}, records_per_shard=5, seed=2)
"""


def test_killed_beam_write_reruns_to_the_same_output(tmp_path):
    src = str(tmp_path / "src")
    make_source(src, shards=8, per_shard=60)
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED.format(root=ROOT, src=src, out=out)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(n.startswith("selected-") and n.endswith(".tfrecord") for n in _listdir(out)):
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = [n for n in _listdir(out) if n.startswith("selected-") and n.endswith(".tfrecord")]
    assert 0 < len(written) < 120  # killed part-way: some of the 120 output shards exist ...
    with pytest.raises(manifest.ManifestError):
        manifest.load_manifest(out)  # ... and the set is not taken as whole
    rerun = beam_write.write_selected(src, make_label_plan(src, "same", 600), out, records_per_shard=5, seed=2)
    assert rerun is not None
    assert len(rerun.files) == 120
    manifest.load_manifest(out)  # every sha256 verifies
    reference = str(tmp_path / "reference")
    write.write_selected(
        src, make_label_plan(src, "same", 600), reference, records_per_shard=5, seed=2, process_index=0, process_count=1
    )
    assert contents(out) == contents(reference)  # the killed run's temp files are gone too


def _listdir(path: str) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) else []


def test_dry_run_prints_options_and_graph_and_writes_nothing(source_dir, tmp_path, capsys):
    plan_csv = str(tmp_path / "same.plan.csv")
    make_label_plan(source_dir, "same", 100).to_csv(plan_csv)
    out = str(tmp_path / "out")
    beam_write.main(
        [
            f"--source={source_dir}",
            f"--plan_csv={plan_csv}",
            f"--out={out}",
            "--runner=DataflowRunner",
            "--project=my-project",
            "--region=europe-west4",
            "--temp_location=gs://my-bucket/tmp",
            "--dry_run",
        ]
    )
    printed = capsys.readouterr().out
    assert "--runner=DataflowRunner --project=my-project --region=europe-west4" in printed
    for step in ("Scan", "Allocate", "Select", "GroupByOutputShard", "WriteShard", "WriteManifest"):
        assert f"transform: {step}  <-" in printed
    assert not os.path.exists(out)


def test_plan_csv_cli_writes_the_plans_draws_and_weights(source_dir, tmp_path):
    plan = make_label_plan(source_dir, "same", 120)
    plan.to_csv(str(tmp_path / "plan.csv"))
    beam_write.main(
        [f"--source={source_dir}", f"--plan_csv={tmp_path / 'plan.csv'}", f"--out={tmp_path / 'out'}", "--seed=1"]
    )
    planned, weight = beam_write.load_plan_csv(str(tmp_path / "plan.csv"), manifest.load_manifest(source_dir))
    assert planned == pytest.approx(plan.planned, abs=1e-6) and weight == pytest.approx(plan.weight, rel=1e-8)
    write.write_selected(
        source_dir, planned, str(tmp_path / "ref"), label_weights=weight, records_per_shard=2000, seed=1,
        process_index=0, process_count=1,
    )  # fmt: skip
    assert contents(str(tmp_path / "out")) == contents(str(tmp_path / "ref"))


def test_runner_options_name_the_missing_key():
    config = beam_runner.default_config()
    assert beam_runner.option_flags(config) == [
        "--runner=DirectRunner",
        "--direct_num_workers=1",
        "--direct_running_mode=in_memory",
    ]
    config.runner = "DataflowRunner"
    config.project = "my-project"
    with pytest.raises(ValueError, match="'selection.beam.region' is empty"):
        beam_runner.option_flags(config, prefix="selection.beam")
    config.runner, config.spark_master = "SparkRunner", "spark://host:7077"
    assert beam_runner.option_flags(config)[1] == "--spark_master_url=spark://host:7077"


def test_config_switch_is_validated():
    from configs import demo

    config = demo.get_config("tiny")
    assert config.selection.writer == "inprocess"
    config.selection.writer = "beam"
    validate.check_config(config)
    config.selection.beam.runner = "FlinkRunner"
    with pytest.raises(ConfigError, match="selection.beam.flink_master"):
        validate.check_config(config)
    config.selection.writer = "spark"
    with pytest.raises(ConfigError, match="selection.writer"):
        validate.check_config(config)
    config.selection.writer, config.selection.write_processes = "inprocess", -1
    with pytest.raises(ConfigError, match="selection.write_processes"):
        validate.check_config(config)
