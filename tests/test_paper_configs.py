"""The paper's experiments as configs: each validates, builds its model abstractly and dry-runs.

`launch.main --dry_run` runs in-process (the model FLOPs are cached per model across the table), and
must neither compute nor write: the work dir does not appear.
"""

import os
import sys

import pytest
from absl import flags

from configs.paper import common, table3, table4
from launch import dryrun, validate
from launch import main as launch_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(spec, workdir, capsys, *extra):
    argv = [
        "launch.main",
        f"--config={os.path.join(ROOT, 'configs', 'paper', spec)}",
        f"--workdir={workdir}",
        "--dry_run",
        *extra,
    ]
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        code = launch_main.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert not os.path.exists(workdir)  # nothing written
    return out


@pytest.mark.parametrize("target", sorted(common.TARGETS))
@pytest.mark.parametrize("source", sorted(common.SOURCES))
def test_every_table3_and_table4_cell_validates(target, source):
    for module in (table3, table4):
        config = module.get_config(f"{target},{source}")
        validate.check_config(config, check_paths=False)
        validate.check_hardware(config)
        assert config.selection.hierarchy.ancestors == (common.subset_name(common.TARGETS[target].subset, source),)
        assert config.selection.size == common.SOURCES[source]["size"]


@pytest.mark.parametrize(
    "spec, runs, total",
    [
        ("table3.py:birdsnap", 4 + 25, "8.32e+09 images seen"),
        ("table5.py", 3 + 20, "6.25e+09 images seen"),
        ("table6.py", 4 + 25, "8.32e+09 images seen"),
        ("figure2.py:cars,2000000,5000000", 5 + 30, "1.04e+10 images seen"),
    ],
)
def test_inception_configs_dry_run(tmp_path, capsys, spec, runs, total):
    out = _dry_run(spec, tmp_path / "w", capsys)
    assert out.startswith("dry run: nothing computed or written")
    assert f"total: {runs} training runs, {total}" in out
    assert "pretrain/entire_source                          2000000   1024   2.05e+09" in out
    assert "3.4 h" in out and "256 x tpu_v3" in out


def test_table6_uses_the_top_4000_labels():
    from configs.paper import table6

    config = table6.get_config()
    assert config.selection.methods == ("same", "uniform", "reverse")
    assert all(config.selection[m].top_k == 4000 for m in config.selection.methods)


def test_amoeba_dry_run_states_sharded_memory(tmp_path, capsys):
    out = _dry_run("table4.py:pets", tmp_path / "w", capsys)
    assert "pretrain/entire_source                           250000   2048   5.12e+08     3.81e+20" in out
    assert "pretrain: sharded train state 7.81 GiB in all, 46.5 MiB per device over 256 devices" in out
    one_host = _dry_run(
        "table4.py:pets", tmp_path / "w", capsys, "--config.hardware.accelerator=h100", "--config.hardware.devices=8"
    )
    assert "per device over 8 devices (of 80 GiB" in one_host


def test_dry_run_marks_complete_stages(tmp_path, capsys):
    ws = launch_main.Workspace(str(tmp_path))
    os.makedirs(os.path.dirname(ws.marker("prepare")))
    open(ws.marker("prepare"), "w").write("{}")
    p = dryrun.plan(table3.get_config("pets"), str(tmp_path), ("prepare", "pretrain_source"))
    assert p["stages"] == [
        {"stage": "prepare", "status": "complete (skipped)"},
        {"stage": "pretrain_source", "status": "to run"},
    ]
    assert [r["run"] for r in p["runs"]] == ["pretrain/entire_source"]
