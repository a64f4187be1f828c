"""The accelerator benchmark's one command, in its CPU smoke mode: every row runs and the table is
complete (the figures themselves mean nothing on CPU at these sizes). About 55 CPU-seconds, most of
it compiling the tiny AmoebaNet-B (3 minutes of wall time on the 2 shared cores at load 15)."""

import json
import os
import subprocess

import pytest

from tests.conftest import FAST_COMPILE_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_accelerator_command_cpu_smoke_prints_every_row(tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": FAST_COMPILE_FLAGS,  # one CPU device: the smoke batches are 2 and 4
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "accelerator.sh"), "--cpu_smoke"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    result = json.loads(lines[-1])
    assert result["device"] == "cpu" and result["peak_flops"] > 0
    rows = {row["row"].split(" (")[0].split(",")[0]: row for row in result["rows"]}
    train = [r for r in result["rows"] if r["row"].startswith("ours: small_cnn bfloat16 train step")]
    peers = [r for r in result["rows"] if r["row"].startswith("peer: keras")]
    assert [r["batch"] for r in train] == [r["batch"] for r in peers] == [2, 4]
    for ours, peer in zip(train, peers, strict=True):
        assert ours["images_per_s"] > 0 and peer["images_per_s"] > 0 and 0 < ours["mfu"] < 1
        assert abs(ours["ratio"] - ours["images_per_s"] / peer["images_per_s"]) < 1e-6 * ours["ratio"]
        assert ours["model_tflop_per_step"] > 0
    assert train[1]["model_tflop_per_step"] == pytest.approx(2 * train[0]["model_tflop_per_step"], rel=0.01)
    assert rows["ours: amoeba_net_b"]["images_per_s"] > 0 and rows["ours: amoeba_net_b"]["mfu"] > 0
    assert rows["ours: importance-weights forward pass"]["ratio"] > 0
    wait = [r for r in result["rows"] if r["row"].startswith("input wait")][0]
    assert 0 <= wait["input_wait"] <= 1 and wait["images_per_s"] > 0
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(result["rows"])  # header, one line per row
    assert "[accelerator/input_wait] step 4/4" in proc.stdout and "input wait" in proc.stdout


def test_concurrent_runs_reads_each_runs_wall_time_and_its_packing_ceiling(tmp_path):
    from benchmarks.concurrent_runs import run_speedups

    times = {"in_turn": {"pretrain/a": 100.0, "finetune/b/seed_0": 10.0}, "beside": {"pretrain/a": 160.0}}
    for job, runs in times.items():
        for run, seconds in runs.items():
            (tmp_path / job / run).mkdir(parents=True)
            (tmp_path / job / run / "final.json").write_text(json.dumps({"wall_s": seconds}))
    result = run_speedups(str(tmp_path / "in_turn"), str(tmp_path / "beside"), workers=2)
    assert result["runs"] == {"pretrain/a": {"in_turn_s": 100.0, "beside_s": 160.0, "packed_speedup": 1.25}}
    assert result["packed_speedup_all_runs"] == 1.25  # runs missing from either job are left out
