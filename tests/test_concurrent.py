"""launch.concurrent: a stage's independent runs in pinned worker processes give the same results,
in the same order, as the same runs one after another."""

import os

import jax
import numpy as np
import pytest

from launch import concurrent


def _where(i: int) -> tuple[int, int, list[int]]:
    return i, os.getpid(), sorted(os.sched_getaffinity(0))


def _fails(i: int) -> int:
    if i == 1:
        raise RuntimeError("run 1 failed")
    return i


def _train(workdir: str, seed: int) -> dict:
    """A real (small) training run: the trainer's loop, checkpoints and final.json."""
    from tests.trainer_testlib import MemoryIterator, SmallCNN, random_data, tiny_config
    from trainer import checkpoint
    from trainer import config as config_lib
    from trainer.train import fit

    images, labels = random_data(64)
    result = fit(
        tiny_config(config_lib.finetune_config(), seed=seed, warmup_steps=1),
        model=SmallCNN(dropout_rate=0.3),
        make_iterator=lambda: MemoryIterator(images, labels, 16, 4),
        total_steps=5,
        warmup_steps=1,
        workdir=workdir,
    )
    params = checkpoint.load_variables(workdir, use_ema=False)["params"]
    return {"loss": result["loss"], "kernel": np.asarray(params["head"]["kernel"]).tolist()}


def test_workers_are_pinned_one_per_core_and_results_keep_order():
    cores = sorted(os.sched_getaffinity(0))
    results = concurrent.run_all(_where, [(i,) for i in range(4)], 2)
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert os.getpid() not in {r[1] for r in results}
    assert all(len(r[2]) == 1 and r[2][0] in cores for r in results)
    core_of = {pid: core[0] for _, pid, core in results}
    assert len(core_of) <= 2 and len(set(core_of.values())) == min(len(core_of), len(cores))  # a core each
    assert concurrent.run_all(_where, [(7,)], 2)[0][1] == os.getpid()  # a single run stays in-process


def test_a_failed_run_raises_its_error():
    with pytest.raises(RuntimeError, match="run 1 failed"):
        concurrent.run_all(_fails, [(0,), (1,), (2,)], 2)


@pytest.mark.slow
def test_runs_side_by_side_write_what_they_write_one_after_another(tmp_path):
    calls = [(str(tmp_path / f"seq{seed}"), seed) for seed in (0, 1)]
    sequential = concurrent.run_all(_train, calls, 1)
    side_by_side = concurrent.run_all(_train, [(str(tmp_path / f"par{seed}"), seed) for seed in (0, 1)], 2)
    assert side_by_side == sequential
    assert sequential[0] != sequential[1]  # the seeds differ, so the comparison means something


def test_resolve_workers():
    cores = len(os.sched_getaffinity(0))
    assert jax.default_backend() == "cpu"
    assert concurrent.resolve_workers(0, 10) == min(cores, 10)
    assert concurrent.resolve_workers(0, 1) == 1
    assert concurrent.resolve_workers(3, 2) == 2
    with pytest.raises(ValueError, match="concurrent_runs"):
        concurrent.resolve_workers(-1, 2)
