"""The whole demo flow at a tiny size: report contents, and kill + resume giving the same report."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import FAST_COMPILE_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = [
    "pretraining_data",
    "target",
    "top1_mean",
    "top1_std",
    "mean_per_class_mean",
    "mean_per_class_std",
    "seeds",
    "finetune_learning_rate",
    "finetune_weight_decay",
]
COST_COLUMNS = [
    "unique_examples",
    "images_seen",
    "scoring_images",
    "select_wall_s",
    "pretrain_wall_s",
    "induction_top1",
    "induction_top5",
]


def _command(workdir):
    return [sys.executable, "-m", "launch.main", "--config=configs/demo.py:tiny", f"--workdir={workdir}"]


def _env(cache):
    # One compilation cache for all runs: later runs trace but do not recompile. One CPU device, as
    # the demo runs, with conftest's fast-compile flags.
    return dict(os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=str(cache), XLA_FLAGS=FAST_COMPILE_FLAGS)


@pytest.mark.slow
def test_tiny_demo_end_to_end_and_resume_after_kill(tmp_path):
    cache = tmp_path / "jax_cache"
    straight = tmp_path / "straight"
    result = subprocess.run(_command(straight), cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== stage 8/8 report: done" in result.stdout
    assert "img/s" in result.stdout and "eta" in result.stdout  # progress lines

    rows = list(csv.DictReader(open(straight / "report.csv")))
    assert list(rows[0].keys()) == COLUMNS + COST_COLUMNS
    # The comparison's costs: every pre-trained row sees 6 steps x 16 images; the label-level methods
    # forward nothing to select; the selected sets hold at most their 60 draws as distinct examples.
    assert [r["images_seen"] for r in rows] == ["96", "96", "96", "0"]
    assert all(r["scoring_images"] == "0" for r in rows)
    assert 0 < int(rows[2]["unique_examples"]) <= 60 < int(rows[0]["unique_examples"])
    # kNN induction accuracy of each pre-trained model (none for random initialisation).
    assert all(0 <= float(r["induction_top1"]) <= float(r["induction_top5"]) <= 100 for r in rows[:3])
    assert rows[3]["induction_top1"] == ""
    assert [r["pretraining_data"] for r in rows] == ["entire_source", "same", "elastic", "random_init"]
    assert all(r["seeds"] == "2" and 0.0 <= float(r["top1_mean"]) <= 100.0 for r in rows)
    report = open(straight / "report.md").read()
    assert "Table 3" in report and "Table 5" in report and "Sample rate (same)" in report
    # Fine-tuning point per row: the best validation top-1 of the row's grid (random init: its own),
    # then every seed's final run on the whole training split used it; the report names it.
    for row in rows:
        choice = row["pretraining_data"]
        grid = json.load(open(straight / "finetune" / choice / "grid.json"))
        assert len(grid["points"]) == 2
        best = max(grid["points"], key=lambda p: p["val_top1"])
        assert grid["chosen"] == {"learning_rate": best["learning_rate"], "weight_decay": best["weight_decay"]}
        expected_rates = (3e-3, 1e-2) if choice == "random_init" else (1e-3, 3e-3)
        assert tuple(p["learning_rate"] for p in grid["points"]) == expected_rates
        for seed in (0, 1):
            metrics = json.load(open(straight / "finetune" / choice / f"seed_{seed}" / "test_metrics.json"))
            assert metrics["learning_rate"] == best["learning_rate"] and metrics["weight_decay"] == best["weight_decay"]
        assert row["finetune_learning_rate"] == f"{best['learning_rate']:g}"
    assert report.count("(best of 2 on validation)") == 4
    assert os.path.getsize(straight / "importance_weights.png") > 1000
    # the demo plants 20 near-duplicates of target images in the source; the dedup stage removes them
    removed = json.load(open(straight / "data" / "source_dedup" / "manifest.json"))["extra"]["dedup"]["removed_ids"]
    assert len(removed) >= 19 and all(i.startswith("planted-") for i in removed)
    assert f"{len(removed)} of 316 source images removed" in report
    assert os.path.getsize(straight / "dedup_pairs.png") > 1000

    # A second launch finds every stage complete.
    again = subprocess.run(_command(straight), cwd=ROOT, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("complete, skipped") == 8

    # Kill a fresh run with SIGKILL at its first checkpoint on the selected shards, the rerun at its
    # first finished fine-tuning grid point, and run it a third time with the remaining grid points and
    # the fine-tuning seeds side by side: the report is the uninterrupted, one-after-another one.
    killed = tmp_path / "killed"
    _kill_when(killed, cache, lambda: _has_step(killed / "pretrain" / "same" / "checkpoints"))
    assert not (killed / "stages" / "pretrain_selected.json").exists()
    first_point = killed / "finetune" / "entire_source" / "grid" / "lr0.001_wd0.0001" / "final.json"
    _kill_when(killed, cache, first_point.exists)
    assert not (killed / "finetune" / "entire_source" / "grid.json").exists()
    assert (killed / "stages" / "pretrain_selected.json").exists()
    resumed = subprocess.run(
        [*_command(killed), "--config.concurrent_runs=2"],
        cwd=ROOT,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "pretrain_selected: complete, skipped" in resumed.stdout
    for choice in ("entire_source", "same", "elastic", "random_init"):
        side_by_side, in_turn = (json.load(open(w / "finetune" / choice / "grid.json")) for w in (killed, straight))
        assert (side_by_side["points"], side_by_side["chosen"]) == (in_turn["points"], in_turn["chosen"])
    assert _without_wall_times(killed / "report.csv") == _without_wall_times(straight / "report.csv")


def _without_wall_times(path):
    """The report's rows but its wall-time columns, which differ between any two runs."""
    return [{k: v for k, v in row.items() if not k.endswith("_wall_s")} for row in csv.DictReader(open(path))]


def _has_step(checkpoint_dir):
    return checkpoint_dir.exists() and any(p.name.isdigit() for p in checkpoint_dir.iterdir())


def _kill_when(workdir, cache, condition):
    """Starts the demo in `workdir` and SIGKILLs it as soon as `condition()` holds."""
    process = subprocess.Popen(
        _command(workdir), cwd=ROOT, env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None and not condition():
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
