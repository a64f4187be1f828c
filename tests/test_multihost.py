"""A whole tiny job under 2 and 3 real jax.distributed processes on localhost gives the 1-process report.

Every process runs `launch.main` on one shared work dir (one CPU device each, gloo collectives):
prepare (rendered by process 0), dedup, pretrain_source, weights, select, pretrain_selected, finetune
(with its grid and validation split), report. The input pipeline hands each process a disjoint part
of every global batch, the same global batches as one process reads, so the reports agree (timing
columns aside).

Sized for the suite's time: 3 processes cover what 4 did at three quarters of the cost (more
processes than the source's 2 shards, so one owns none; splits that do not divide evenly: 50 target
training images, 75 test images, a last partial eval batch), with every batch 12 or a multiple,
which 1, 2 and 3 processes divide; the fine-tuning grid has one point a row, whose validation split
is still carved and written by one process for all (what a bug here once broke), at a third fewer
runs; one checkpoint a run.
"""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from data import manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROCESS = """
import os, sys
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, count, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if count > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{{port}}", num_processes=count, process_id=pid)
from launch import main
argv = ["launch.main", "--config=configs/demo.py:tiny", "--workdir=" + sys.argv[4],
        "--config.finetune.seeds=(0,)", "--config.pretrain.steps=4", "--config.finetune.steps=4",
        "--config.pretrain.checkpoint_every_steps=4", "--config.pretrain.global_batch_size=12",
        "--config.finetune.global_batch_size=12", "--config.pretrain.eval_batch_size=96",
        "--config.finetune.eval_batch_size=96", "--config.weights.batch_size=48",
        "--config.finetune_sweep.learning_rates=(0.001,)",
        "--config.finetune_sweep.random_init_learning_rates=(0.003,)"]
sys.argv = argv
sys.exit(main.main(argv))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _run_job(workdir, count: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device per process
    env["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    env["JAX_COMPILATION_CACHE_DIR"] = str(workdir) + "_cache"
    script, port = _PROCESS.format(root=ROOT), str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(p), str(count), port, str(workdir)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(count)
    ]
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, out[-2000:] + err[-3000:]
    finally:  # a failed or hung process must not leave its peers waiting in a collective for ever
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with open(workdir / "report.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if not k.endswith("_wall_s")} for row in csv.DictReader(handle)]


def _final(workdir) -> dict[str, tuple[float, float]]:
    """(loss, grad norm) at the last step of every training run."""
    out = {}
    for path in sorted(workdir.glob("*/**/final.json")):
        final = json.loads(path.read_text())
        out[str(path.parent.relative_to(workdir))] = (final["loss"], final["grad_norm"])
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one") / "w"
    return workdir, _run_job(workdir, 1)


@pytest.mark.slow
@pytest.mark.parametrize("count", [2, 3])
def test_multi_process_job_gives_the_one_process_report(tmp_path, one_process, count):
    one_dir, one = one_process
    workdir = tmp_path / f"p{count}"
    assert _run_job(workdir, count) == one and len(one) >= 4
    # Not only the (tiny, near-chance) accuracies: training followed the same trajectory ...
    finals, expected = _final(workdir), _final(one_dir)
    assert len(expected) >= 7 and finals.keys() == expected.keys()
    for run, values in expected.items():
        np.testing.assert_allclose(finals[run], values, rtol=1e-4, err_msg=run)  # reduction order
    # ... the weights stage saw the same predictions, and the selected shards hold the same records.
    pt = [np.array(json.loads((d / "weights" / "weights.json").read_text())["pt"]) for d in (workdir, one_dir)]
    np.testing.assert_allclose(pt[0], pt[1], atol=1e-7)
    for method in ("same", "elastic"):
        shards = [manifest.load_manifest(str(d / "selected" / method)) for d in (workdir, one_dir)]
        assert shards[0].record_counts == shards[1].record_counts
        assert shards[0].label_counts == shards[1].label_counts
