"""launch.concurrent: a stage's independent runs in pinned worker processes give the same results,
bit for bit and in the same order, as the same runs one after another."""

import hashlib
import json
import os
import subprocess
import sys
import time

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


def _two_steps_digest() -> str:
    """The parameters after two train steps of the demo's Pt ConvNet (two convolutions a stage, 32 px),
    the trainer's own programs, as a digest: at this size XLA's CPU code splits ops over its threads."""
    from configs.models import small_cnn
    from models.registry import build_model
    from trainer import config as config_lib
    from trainer import programs

    model_config = small_cnn.get_config()
    model_config.image_size, model_config.stage_filters, model_config.convs_per_stage = 32, (16, 32, 64), 2
    model_config.num_classes = 64
    config = config_lib.pretrain_config()
    config.global_batch_size, config.image_size, config.optimizer, config.parallelism = 32, 32, "adam", "jit"
    progs = programs.programs_for(config, build_model(model_config), 100, 1)
    runner = progs.runner
    state = runner.put_state(
        jax.device_get(progs.make_state(progs.init_variables(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)))
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 64, 32)
    batch = runner.put_batch(
        {
            "image": rng.integers(0, 256, (32, 32, 32, 3)).astype(np.uint8),
            "label": labels.astype(np.int32),
            "labels": np.eye(64, dtype=np.float32)[labels],
            "weight": np.ones(32, np.float32),
        }
    )
    for _ in range(2):
        state, _ = runner.step(state, batch)
    leaves = jax.device_get(jax.tree.leaves(state.params))
    return hashlib.sha256(b"".join(np.asarray(leaf).tobytes() for leaf in leaves)).hexdigest()


def _wait_for_cores(cores: int, timeout_s: float = 20.0) -> int:
    """The cores this process may use, once they are `cores` or `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while len(os.sched_getaffinity(0)) < cores and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(os.sched_getaffinity(0))


def _digest_once_lent_every_core(lent: bool) -> str | None:
    """The digest from a worker whose pair has ended, once it has been lent the idle core."""
    if not lent:
        return None
    assert _wait_for_cores(len(os.sched_getaffinity(os.getppid()))) > 1
    return _two_steps_digest()


def _digests_in_and_beside() -> list[str | None]:
    """In process; in two workers side by side; in a worker lent the other's core once it ended."""
    lent = concurrent.run_all(_digest_once_lent_every_core, [(False,), (True,)], 2)[1]
    return [_two_steps_digest(), *concurrent.run_all(_two_steps_digest, [(), ()], 2), lent]


def _in_fresh_process(function: str, pin: int | None = None) -> list[str]:
    """`function`'s digests from a fresh interpreter with XLA's default CPU flags (the suite's fast-compile
    flags turn off the optimisations under which ops split over threads), optionally pinned from the
    start, as the workers were before they started JAX first."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-c", f"import json, tests.test_concurrent as t; print(json.dumps(t.{function}()))"],
        preexec_fn=None if pin is None else (lambda: os.sched_setaffinity(0, {pin})),
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    result = json.loads(done.stdout.splitlines()[-1])
    return result if isinstance(result, list) else [result]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores: on one, every run has one thread")
def test_a_pinned_worker_computes_with_the_threads_of_a_run_on_every_core():
    in_process, *side_by_side = _in_fresh_process("_digests_in_and_beside")
    assert side_by_side == [in_process, in_process, in_process]
    # A process that starts JAX already pinned (the workers before this fix) gets a one-thread pool and
    # other floats: the comparison above means something on this machine.
    assert _in_fresh_process("_two_steps_digest", pin=min(os.sched_getaffinity(0))) != [in_process]


def test_workers_are_pinned_to_a_share_of_the_cores_each_and_results_keep_order():
    shares = [list(share) for share in concurrent.core_shares(sorted(os.sched_getaffinity(0)), 2)]
    results = concurrent.run_all(_where, [(i,) for i in range(4)], 2)
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert os.getpid() not in {r[1] for r in results}
    # The first three start while a run is still waiting, so nothing is lent yet; the last may have
    # been lent the other worker's cores by the time it looks.
    assert all(r[2] in shares for r in results[:3])
    assert any(set(share) <= set(results[3][2]) for share in shares)
    share_of = {pid: tuple(cores) for _, pid, cores in results[:3]}
    distinct = {tuple(share) for share in shares}
    assert len(share_of) <= 2 and len(set(share_of.values())) == min(len(share_of), len(distinct))  # a share each
    assert concurrent.run_all(_where, [(7,)], 2)[0][1] == os.getpid()  # a single run stays in-process


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to lend one")
def test_the_last_run_is_lent_the_cores_of_finished_workers():
    usable = sorted(os.sched_getaffinity(0))
    cores = len(usable)
    # Three runs on two workers: the first ends at once and its worker starts the third, so nothing is
    # lent while a run is still waiting; the second then outlives the third and gets every core.
    calls = [(cores, 0.0), (cores, 20.0), (cores, 0.0)]
    short, long, third = concurrent.run_all(_wait_for_cores, calls, 2)
    assert {short, third} <= {len(share) for share in concurrent.core_shares(usable, 2)}
    assert long == cores


def test_core_shares_split_the_cores_between_workers():
    assert concurrent.core_shares([0, 1], 2) == [(0,), (1,)]
    assert concurrent.core_shares([0, 1, 2, 3, 4, 5, 6, 7], 2) == [(0, 2, 4, 6), (1, 3, 5, 7)]
    assert concurrent.core_shares([0, 1, 2], 2) == [(0, 2), (1,)]
    assert concurrent.core_shares([0, 1], 3) == [(0,), (1,), (0,)]  # more workers than cores


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
