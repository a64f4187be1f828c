"""Command line, config overrides and the stage skip/resume logic of launch.main."""

import json
import os
import socket
import subprocess
import sys

import ml_collections
import pytest

from data import atomic
from launch import config_cli, stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "launch.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.pretrain.stepz=3", "unknown config key 'pretrain.stepz'"),
        ("--config.nosuch.steps=3", "unknown config key 'nosuch.steps'"),
        ("--config.pretrain.steps=abc", "config.pretrain.steps"),
        ("--config.pretrain.parallelism=pjit", "'pretrain.parallelism'"),
    ],
)
def test_bad_override_fails_before_compute(tmp_path, override, message):
    result = _launch("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "stages")  # nothing ran


def test_unknown_stage_is_rejected(tmp_path):
    result = _launch("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--stages=prepare,trian")
    assert result.returncode == 2 and "unknown stage(s) ['trian']" in result.stderr


def test_stages_whose_inputs_no_stage_wrote_are_refused_before_compute(tmp_path):
    """--stages=prepare,pretrain_source,weights,select skips dedup, whose output all later stages read."""
    result = _launch(
        "--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--stages=prepare,pretrain_source,weights,select"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "needs stage(s) dedup first" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "stages") and not os.path.exists(tmp_path / "data")


def test_stages_after_complete_ones_are_accepted(tmp_path):
    for stage in ("prepare", "dedup"):
        atomic.write_json(os.path.join(tmp_path, "stages", f"{stage}.json"), {"stage": stage, "summary": {}})
    stages.check_prerequisites(str(tmp_path), ("pretrain_source",))
    with pytest.raises(config_cli.ConfigError, match="needs stage.s. pretrain_source first"):
        stages.check_prerequisites(str(tmp_path), ("weights",))


def test_check_override_keys_accepts_nested_and_names_missing():
    config = ml_collections.ConfigDict({"a": 1, "sub": {"steps": 2}})
    config_cli.check_override_keys(config, ["a", "sub.steps"])
    with pytest.raises(config_cli.ConfigError, match=r"'sub' has no field 'stepz'.*fields: steps"):
        config_cli.check_override_keys(config, ["sub.stepz"])
    with pytest.raises(config_cli.ConfigError, match=r"'a' has no field 'b'"):
        config_cli.check_override_keys(config, ["a.b"])


def test_good_overrides_reach_the_resolved_config(tmp_path):
    from configs import demo

    config = demo.get_config("tiny")
    assert config.pretrain.steps == 6
    result = _launch(
        "--config=configs/demo.py:tiny",
        f"--workdir={tmp_path}",
        "--stages=prepare",
        "--config.pretrain.steps=7",
        "--config.selection.methods=('elastic',)",
        "--config.weights.temperature=3.5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = json.load(open(tmp_path / "config.json"))
    assert resolved["pretrain"]["steps"] == 7
    assert resolved["selection"]["methods"] == ["elastic"]
    assert resolved["weights"]["temperature"] == 3.5
    assert os.path.exists(tmp_path / "stages" / "prepare.json")
    assert not os.path.exists(tmp_path / "stages" / "pretrain_source.json")

    # The same work dir under a different config is refused (its stages would be reused), unless asked.
    changed = _launch("--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--stages=prepare")
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "different config (pretrain.steps, selection.methods, weights.temperature)" in changed.stderr
    assert json.load(open(tmp_path / "config.json"))["pretrain"]["steps"] == 7  # left as it was
    allowed = _launch(
        "--config=configs/demo.py:tiny", f"--workdir={tmp_path}", "--stages=prepare", "--allow_config_change"
    )
    assert allowed.returncode == 0 and "prepare: complete, skipped" in allowed.stdout
    assert json.load(open(tmp_path / "config.json"))["pretrain"]["steps"] == 6


def test_changed_keys_names_every_difference():
    old = {"a": 1, "sub": {"x": [1, 2], "y": "s"}, "gone": 0}
    new = {"a": 1, "sub": {"x": [1, 3], "y": "s"}, "added": {"z": 1}}
    assert config_cli.changed_keys(old, new) == ["added", "gone", "sub.x"]
    assert config_cli.changed_keys(old, old) == []


def test_select_stages_keeps_pipeline_order():
    assert stages.select_stages([]) == stages.STAGE_NAMES
    assert stages.select_stages(["report", "prepare"]) == ("prepare", "report")


def test_run_pipeline_skips_complete_stages_and_resumes_after_failure(tmp_path, monkeypatch):
    calls = []

    def make(name, fail_once=False):
        state = {"failed": False}

        def stage(config, ws):
            calls.append(name)
            if fail_once and not state["failed"]:
                state["failed"] = True
                raise RuntimeError(f"{name} crashed")
            return {"ran": name}

        return stage

    fake = {name: make(name, fail_once=(name == "select")) for name in stages.STAGE_NAMES}
    monkeypatch.setattr(stages, "STAGES", fake)
    config = ml_collections.ConfigDict({"seed": 0, "dedup": {"enabled": True}})
    with pytest.raises(RuntimeError, match="select crashed"):
        stages.run_pipeline(config, str(tmp_path))
    assert calls == ["prepare", "dedup", "pretrain_source", "weights", "select"]
    assert not os.path.exists(tmp_path / "stages" / "select.json")

    calls.clear()
    summaries = stages.run_pipeline(config, str(tmp_path))
    assert calls == ["select", "pretrain_selected", "finetune", "report"]
    assert summaries["prepare"] == {"ran": "prepare"}  # read back from the marker

    calls.clear()
    os.remove(tmp_path / "stages" / "finetune.json")
    stages.run_pipeline(config, str(tmp_path), ["finetune", "report"])
    assert calls == ["finetune"]


_TWO_PROCESS_PIPELINE = """
import os, sys, time
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {root!r})
import jax, ml_collections
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid = int(sys.argv[1])
jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2, process_id=pid)
from launch import stages
workdir = {workdir!r}

def stage(name):
    def run(config, ws):
        if pid == 1 and name == "select":  # the slow process: the marker must not appear meanwhile
            time.sleep(1.5)
            print("MARKER_BEFORE_P1_DONE", os.path.exists(ws.marker("select")), flush=True)
        return {{"ran": name, "process": pid}}
    return run

stages.STAGES = {{name: stage(name) for name in stages.STAGE_NAMES}}
config = ml_collections.ConfigDict({{"seed": 0, "dedup": {{"enabled": True}}}})
stages.run_pipeline(config, workdir, ["weights", "select"])
print("DONE", flush=True)
"""


def test_two_processes_mark_a_stage_complete_only_when_both_finished(tmp_path):
    """Real jax.distributed on localhost: process 0 waits for process 1 before writing the marker."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    script = _TWO_PROCESS_PIPELINE.format(root=ROOT, port=port, workdir=str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outs.append(out)
    assert "MARKER_BEFORE_P1_DONE False" in outs[1] and all("DONE" in o for o in outs)
    marker = json.load(open(tmp_path / "stages" / "select.json"))
    assert marker["summary"] == {"ran": "select", "process": 0}  # written by process 0 only
