"""Selection statistics: Table 5 columns from a plan and a written shard set, totals, the weight plot."""

import csv
import os

import numpy as np
import pytest

from data import manifest, records
from selection import plan as plan_lib
from selection import stats, write
from tests.test_selection_write import make_label_plan, make_source


def test_preview_table_from_worked_example(tmp_path):
    plan = plan_lib.same_distribution(["A", "B", "C"], np.array([10, 40, 50]), np.array([0.5, 0.3, 0.2]), 30)
    table = stats.label_table(plan)
    assert [r["planned_rate"] for r in table] == pytest.approx([1.5, 0.225, 0.12])
    t = stats.totals(table)
    assert t["examples"] == 30 and not t["realised"] and t["unique"] + t["repeated"] == 30
    csv_path, md_path = stats.write_tables(table, str(tmp_path / "same"), top=2)
    rows = list(csv.DictReader(open(csv_path)))
    assert rows[0]["label"] == "A" and rows[0]["realised"] == ""
    md = open(md_path).read()
    assert "| 1 | A | 10 |" in md and "| 3 |" not in md and "Selected examples: 30" in md


def test_realised_table_from_written_shards(tmp_path):
    source = str(tmp_path / "src")
    make_source(source)
    plan = make_label_plan(source, "same", 150)
    shard_set = write.write_selected(
        source, plan, str(tmp_path / "out"), records_per_shard=64, seed=0, process_index=0, process_count=1
    )
    table = stats.label_table(plan, shard_set)
    t = stats.totals(table)
    assert t["realised"] and t["examples"] == 150 == shard_set.num_records
    distinct = {r for f in manifest.load_manifest(str(tmp_path / "out")).files for r in records.iter_records(f)}
    assert t["unique"] == len(distinct) and t["repeated"] == 150 - len(distinct)
    assert sum(r["attributed_count"] for r in table) == 200  # multi-label: attributed counts sum to N
    assert sum(r["source_count"] for r in table) > 200  # raw counts: examples carrying each label


def test_plot_weights_png(tmp_path):
    path = str(tmp_path / "w.png")
    w = np.random.default_rng(0).lognormal(size=500)
    w[:3] = 0.0
    stats.plot_weights(w, [f"l{i}" for i in range(500)], path, top=100)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000
