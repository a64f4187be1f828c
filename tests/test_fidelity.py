"""Pt's own source model (weights.model / weights.pretrain) and several pre-training seeds per row
(pretrain.seeds): the layout, the shared Pt, the report's columns over both kinds of seed (issue 14)."""

import csv
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import demo, fidelity
from launch import dryrun, pt_model, report, validate
from launch.config_cli import ConfigError
from tests.conftest import FAST_COMPILE_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDED_COLUMNS = [
    "pretraining_data",
    "target",
    "top1_mean",
    "top1_std_pretrain",
    "top1_std_finetune",
    "pretrain_seeds",
    "finetune_seeds",
]


def _json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
def test_fidelity_tiny_pretrain_seeds_and_own_pt_model(tmp_path):
    workdir = tmp_path / "w"
    env = dict(
        os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), XLA_FLAGS=FAST_COMPILE_FLAGS
    )
    command = [sys.executable, "-m", "launch.main", "--config=configs/fidelity.py:tiny", f"--workdir={workdir}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # Pt's own model: trained once, with its own budget and seed, and read by both pre-training seeds.
    pt_run = _json(workdir / "weights" / "model" / "final.json")
    assert pt_run["steps"] == 8
    w0, w1 = (_json(workdir / f"pretrain_seed_{p}" / "weights" / "weights.json") for p in (0, 1))
    assert w0 == w1
    # The rows: the rows' budget at each pre-training seed, which really differs between the seeds.
    finals = [_json(workdir / f"pretrain_seed_{p}" / "pretrain" / "entire_source" / "final.json") for p in (0, 1)]
    assert [f["steps"] for f in finals] == [6, 6] and finals[0]["loss"] != finals[1]["loss"]
    assert os.path.exists(workdir / "pretrain_seed_1" / "pretrain" / "uniform" / "final.json")
    # Random initialisation does not depend on the pre-training seed: fine-tuned once, at the top.
    assert os.path.exists(workdir / "finetune" / "random_init" / "seed_1" / "test_metrics.json")
    assert not os.path.exists(workdir / "pretrain_seed_1" / "finetune" / "random_init")

    rows = list(csv.DictReader(open(workdir / "report.csv")))
    assert list(rows[0].keys())[: len(SEEDED_COLUMNS)] == SEEDED_COLUMNS
    assert [r["pretraining_data"] for r in rows] == ["entire_source", "same", "uniform", "random_init"]
    per_seed = [_json(workdir / f"pretrain_seed_{p}" / "finetune" / "results.json") for p in (0, 1)]
    for row in rows:
        choice = row["pretraining_data"]
        top1 = np.array([[100 * r["top1"] for r in results[choice]] for results in per_seed])  # [pretrain, finetune]
        assert row["pretrain_seeds"] == "2" and row["finetune_seeds"] == "2"
        assert float(row["top1_mean"]) == pytest.approx(top1.mean(), abs=0.006)
        assert float(row["top1_std_pretrain"]) == pytest.approx(top1.mean(axis=1).std(), abs=0.006)
        assert float(row["top1_std_finetune"]) == pytest.approx(top1.std(axis=1).mean(), abs=0.006)
    md = open(workdir / "report.md").read()
    assert "Pt computed by its own source model" in md and "8 steps" in md and "Machine:" in md
    assert "Std over pre-training seeds" in md and "pretrain_seed_0/importance_weights.png" in md

    # Killed after the seeded stages: a rerun skips every stage, per seed included, and gives the same report.
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "running" not in again.stdout.replace("report: running", "")
    assert list(csv.DictReader(open(workdir / "report.csv"))) == rows

    # A seed's view is the job run alone at that seed (README: the demo's three seeds come from one
    # job with pretrain.seeds): `--config.pretrain.seed=1` gives seed 1's rows to the last bit, with the
    # runs side by side or one after another.
    alone = tmp_path / "alone"
    command = [*command[:-1], f"--workdir={alone}", "--config.pretrain.seed=1", "--config.pretrain.seeds=()"]
    command.append("--config.concurrent_runs=2")  # and Pt's model trains beside the entire-source row
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    alone_results = _json(alone / "finetune" / "results.json")
    assert alone_results.keys() == per_seed[1].keys()
    for choice, runs in per_seed[1].items():
        assert [r["top1"] for r in alone_results[choice]] == [r["top1"] for r in runs], choice


def test_seeded_rows_mean_and_both_spreads():
    def runs(*top1):
        return [{"top1": t, "mean_per_class": t} for t in top1]

    rows = report.seeded_rows({0: {"a": runs(0.5, 0.7)}, 1: {"a": runs(0.2, 0.2)}, 2: {"a": runs(0.3, 0.5)}}, "t")
    (row,) = rows
    assert row["top1_mean"] == pytest.approx(40.0)  # per-seed means 60, 20, 40
    assert row["top1_std_pretrain"] == pytest.approx(np.std([60, 20, 40]))
    assert row["top1_std_finetune"] == pytest.approx(np.mean([10, 0, 10]))
    assert (row["pretrain_seeds"], row["finetune_seeds"]) == (3, 2)
    assert row["top1_per_pretrain_seed"] == "60.00 20.00 40.00"


def test_pt_model_defaults_to_the_entire_source_model():
    config = demo.get_config("tiny")
    assert not pt_model.own_model(config)
    assert "entire-source model" in pt_model.describe(config)
    assert pt_model.image_size(config) == config.pretrain.image_size
    own = fidelity.get_config("tiny")
    assert pt_model.own_model(own)
    run = pt_model.run_config(own)
    assert (run.steps, run.seed, run.learning_rate) == (8, 5, own.pretrain.learning_rate)  # overrides over pretrain
    assert "seeds" not in run and tuple(pt_model.model_config(own, 7).stage_filters) == (8, 16)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.weights.pretrain.update({"stepz": 3}), "unknown config key 'weights.pretrain.stepz'"),
        (
            lambda c: c.weights.pretrain.update({"learning_rate": -1.0}),
            "config key 'weights.pretrain.learning_rate' = -1.0: must be a number > 0",
        ),
        (lambda c: c.weights.model.update({"name": "resnet"}), "config key 'weights.model.name' = 'resnet'"),
        (lambda c: setattr(c.pretrain, "seeds", (1, 1)), "config key 'pretrain.seeds' = (1, 1)"),
    ],
)
def test_bad_pt_model_and_seed_keys_are_named(edit, message):
    config = fidelity.get_config("tiny")
    edit(config)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate.check_config(config, check_paths=False)


def test_dry_run_lists_the_pt_model_and_every_seed(tmp_path):
    config = fidelity.get_config("tiny")
    plan = dryrun.plan(config, str(tmp_path), ("pretrain_source", "weights", "pretrain_selected", "finetune"))
    names = [r["run"] for r in plan["runs"]]
    assert "weights/model" in names and "pretrain_seed_1/pretrain/entire_source" in names
    assert "pretrain_seed_1/pretrain/uniform" in names
    random_init = [n for n in names if "random_init/seed_" in n]
    assert random_init == ["finetune/random_init/seed_0", "finetune/random_init/seed_1"]
    assert "pretrain_seed_1/finetune/same/seed_1" in names
    assert next(r for r in plan["runs"] if r["run"] == "weights/model")["steps"] == 8


def test_empty_pt_sections_keep_the_paper_default():
    config = demo.get_config("tiny")
    config.weights.model = ml_collections.ConfigDict()
    config.weights.pretrain = ml_collections.ConfigDict()
    assert not pt_model.own_model(config)
    validate.check_config(config, check_paths=False)
