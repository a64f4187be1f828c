"""The Table-3-shaped grid: 2 embedded targets x 4 rows in one launch.main command.

One source model for both targets, a weights pass per target, finished cells skipped on a second
launch, and the table (Markdown and CSV, with the logit-averaged mean) assembled from the finished
cells.
"""

import csv
import json
import math
import os
import subprocess
import sys

import ml_collections
import pytest

from launch import grid
from launch.workdir import Workspace
from selection import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(workdir):
    # A one-point fine-tuning grid a row (the grid of targets is what this tests): 12 fine-tuning runs
    # a target instead of 16.
    one_point = [
        "--config.finetune_sweep.learning_rates=(0.001,)",
        "--config.finetune_sweep.random_init_learning_rates=(0.003,)",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "launch.main", "--config=configs/grid.py:tiny", f"--workdir={workdir}", *one_point],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_embedded_grid_two_targets_four_rows(tmp_path):
    workdir = tmp_path / "grid"
    out = _launch(workdir)
    rows = list(csv.DictReader(open(workdir / "grid.csv")))
    assert [r["pretraining_data"] for r in rows] == ["entire_source", "same", "elastic", "random_init"]
    for row in rows:
        cells = [float(row[t]) for t in ("greek_lower", "cyrillic_lower")]
        logits = [math.log(c / 100 / (1 - c / 100)) for c in cells]
        assert float(row["mean_logit"]) == pytest.approx(100 / (1 + math.exp(-sum(logits) / 2)), abs=0.01)
    assert "| Entire source |" in (workdir / "grid.md").read_text()
    # One entire-source model (trained by the first target's job), one weights pass per target.
    assert (workdir / "pretrain" / "entire_source" / "final.json").exists()
    assert not (workdir / "targets" / "cyrillic_lower" / "pretrain" / "entire_source").exists()
    for target in ("greek_lower", "cyrillic_lower"):
        job = workdir / "targets" / target
        assert (job / "weights" / "weights.json").exists() and (job / "report.md").exists()
        assert json.loads((job / "config.json").read_text())["data"]["embedded"]["target"]["groups"] == target
    assert out.count("pretrain_source: done") == 2 and "=== grid target 2/2 cyrillic_lower" in out
    # Launching again skips every finished cell and gives the same table.
    again = _launch(workdir)
    assert "running" not in again.replace("=== grid", "") and list(csv.DictReader(open(workdir / "grid.csv"))) == rows


def test_table_from_the_finished_cells_only(tmp_path):
    config = ml_collections.ConfigDict({"grid": grid.grid_config(("a", "b")), "finetune": {"seeds": (0,)}})
    config.selection = methods.selection_config()
    config.selection.methods, config.selection.size = ("same",), 100
    root = Workspace(str(tmp_path))
    run = {"top1": 0.5, "mean_per_class": 0.5}
    os.makedirs(os.path.dirname(Workspace(root.grid_target("a")).finetune_results))
    with open(Workspace(root.grid_target("a")).finetune_results, "w") as handle:
        json.dump({"entire_source": [run], "same": [{"top1": 0.9, "mean_per_class": 0.9}]}, handle)
    rows = {r["pretraining_data"]: r for r in grid.write_table(config, root)}
    assert rows["entire_source"]["a"] == 50.0 and rows["entire_source"]["b"] is None
    assert rows["entire_source"]["mean_logit"] is None  # no mean over a partial row
    assert "| Entire source | 50.00 |  |  |" in open(root.grid_md).read()
    assert grid._mean_logit([50.0, 50.0]) == pytest.approx(50.0) and grid._mean_logit([90.0, 10.0]) == pytest.approx(
        50.0
    )


def test_grid_dry_run_counts_the_shared_source_model_once():
    from configs import grid as grid_config
    from launch import dryrun

    p = dryrun.plan(
        grid_config.get_config("tiny"), "/nonexistent/grid", ("pretrain_source", "pretrain_selected", "finetune")
    )
    names = [r["run"] for r in p["runs"]]
    assert names.count("pretrain/entire_source") == 1
    assert (
        "targets/greek_lower/pretrain/same" in names and "targets/cyrillic_lower/finetune/random_init/seed_1" in names
    )
    assert len([n for n in names if "/pretrain/" in n]) == 2 * 2  # same and elastic per target
    assert len([n for n in names if "/seed_" in n]) == 2 * 4 * 2  # 4 rows x 2 seeds per target


def test_grid_targets_share_the_source_models_only_with_a_shared_source(tmp_path):
    """Without dedup the targets train on one source: its entire-source model and Pt's own source model
    are trained once, at the grid's root; with dedup each target's source differs, and so do they."""
    root, target = str(tmp_path), str(tmp_path / "targets" / "a")
    shared = Workspace(target, dedup=False, shared=root)
    assert shared.weights_model == os.path.join(root, "weights", "model")
    assert shared.pretrain("entire_source") == os.path.join(root, "pretrain", "entire_source")
    own = Workspace(target, dedup=True, shared=root)
    assert own.weights_model == os.path.join(target, "weights", "model")
    assert own.pretrain("entire_source") == os.path.join(target, "pretrain", "entire_source")
