"""The selection semantics through `launch.main` on a multi-label source (configs/demo.py:tiny).

One job with the same/elastic matchers at two sizes, a hierarchy subset and the weighted-loss source:
- w is the weights stage's number everywhere: weights.json, plan.csv, the statistics, every written
  record's image/weight and report.md (a plan once recomputed w with N = sum of label counts, 1.25x);
- the hierarchy subset holds every image with ANY label under the ancestor (multi-label ones too),
  each with weight 1;
- the weighted-loss set is the whole source once, each record weighted by its labels' largest w;
- `selection.sizes` writes and pre-trains `same@30` beside `same` in the same work dir, with one
  source pre-training, and the report draws accuracy against size.
"""

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from data import manifest, records
from launch.workdir import Workspace
from selection import plan as plan_lib
from selection import weights as weights_lib
from tests.conftest import FAST_COMPILE_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # one tiny job through launch.main, about a minute


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("multi_label_job")
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=FAST_COMPILE_FLAGS)
    command = [
        sys.executable,
        "-m",
        "launch.main",
        "--config=configs/demo.py:tiny",
        f"--workdir={workdir}",
        "--config.data.embedded.source.multi_label_fraction=0.25",
        "--config.selection.methods=('same','elastic','hierarchy','weighted_loss')",
        "--config.selection.sizes=(30,60)",
        "--config.finetune.seeds=(0,)",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result.stdout


def _records(directory) -> list[records.Example]:
    shard_set = manifest.load_manifest(str(directory))
    return [records.decode_example(r) for f in shard_set.files for r in records.iter_records(f)]


def test_one_w_in_weights_json_plan_records_and_report(job):
    workdir, _ = job
    iw = weights_lib.ImportanceWeights.read(str(workdir / "weights" / "weights.json"))
    source = manifest.load_manifest(Workspace(str(workdir)).source)  # the de-duplicated source
    assert sum(source.label_counts) > 1.2 * source.num_records  # a multi-label source
    np.testing.assert_allclose(iw.ps, np.asarray(source.label_counts) / source.num_records)  # the paper's Ps
    for choice in ("same", "elastic", "same@30"):
        plan_rows = list(csv.DictReader(open(workdir / "selected" / f"{choice}.plan.csv")))
        np.testing.assert_allclose([float(r["weight"]) for r in plan_rows], iw.w, rtol=1e-8)
        stats_rows = list(csv.DictReader(open(workdir / "selected" / f"{choice}.stats.csv")))
        np.testing.assert_allclose([float(r["weight"]) for r in stats_rows], iw.w, rtol=1e-5)
        written = _records(workdir / "selected" / choice)
        singles = [e for e in written if len(e.labels) == 1]
        assert singles
        for e in written:  # image/weight = the largest w of the record's labels (example_weight_rule "max")
            assert e.weight == pytest.approx(max(iw.w[y] for y in e.labels), rel=1e-6)
    report = open(workdir / "report.md").read()
    shown = dict(re.findall(r"^\| \d+ \| (\S+) \| \d+ \| \S+ \| (\S+) \|", report, flags=re.M))
    assert len(shown) >= 10
    for name, value in shown.items():
        assert value == f"{iw.w[iw.label_names.index(name)]:.6g}", name


def test_hierarchy_subset_keeps_every_image_under_the_ancestor_with_weight_one(job):
    workdir, _ = job
    source = manifest.load_manifest(Workspace(str(workdir)).source)
    under = plan_lib.descendants(source.hierarchy, ["greek"])
    chosen = {i for i, name in enumerate(source.label_names) if name in under}
    expected = {e.example_id for e in _records(source.directory) if chosen & set(e.labels)}
    subset = _records(workdir / "selected" / "hierarchy")
    assert sorted(e.example_id for e in subset) == sorted(expected)  # each once
    mixed = [e for e in subset if set(e.labels) - chosen]
    assert mixed  # multi-label images with a label outside the ancestor are in it too
    assert all(e.weight == 1.0 for e in subset)


def test_weighted_loss_is_the_whole_source_once_weighted_by_w(job):
    workdir, _ = job
    iw = weights_lib.ImportanceWeights.read(str(workdir / "weights" / "weights.json"))
    source = _records(Workspace(str(workdir)).source)
    written = _records(workdir / "selected" / "weighted_loss")
    assert sorted(e.example_id for e in written) == sorted(e.example_id for e in source)
    for e in written:
        assert e.weight == pytest.approx(max(iw.w[y] for y in e.labels), rel=1e-6)
    rows = list(csv.DictReader(open(workdir / "report.csv")))
    assert "weighted_loss" in [r["pretraining_data"] for r in rows]
    assert "Entire source, loss weighted by w" in open(workdir / "report.md").read()


def test_sizes_share_the_source_model_and_draw_figure_2(job):
    workdir, log = job
    assert log.count("[pretrain/entire_source] step 6/6") == 1  # the source model is trained once
    for choice, size in (("same", 60), ("same@30", 30), ("elastic", 60), ("elastic@30", 30)):
        assert manifest.load_manifest(str(workdir / "selected" / choice)).num_records == size
        assert (workdir / "finetune" / choice / "seed_0" / "test_metrics.json").exists()
    assert not (workdir / "selected" / "same@60").exists()  # selection.size is the main row
    rows = [r["pretraining_data"] for r in csv.DictReader(open(workdir / "report.csv"))]
    assert rows == [
        "entire_source",
        "same",
        "same@30",
        "elastic",
        "elastic@30",
        "hierarchy",
        "weighted_loss",
        "random_init",
    ]
    report = open(workdir / "report.md").read()
    assert "Figure 2" in report and "accuracy_vs_size.png" in report
    assert os.path.getsize(workdir / "accuracy_vs_size.png") > 1000
    table3 = report.split("## Transfer results")[1].split("##")[0]
    assert "@30" not in table3 and table3.count("Adaptive transfer") == 2
