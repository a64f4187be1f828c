"""Exact resume: N steps straight == the same command killed (SIGKILL, or SIGTERM = preemption) after a
checkpoint and re-run in the same work dir. Real subprocesses, the real grain pipeline with augmentation,
dropout on, EMA on; this file is also the training script they run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

TOTAL_STEPS = 12
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Slow:
    """Delays each batch so the parent has time to kill the run between checkpoints."""

    def __init__(self, iterator, delay):
        self.iterator, self.delay = iterator, delay

    def __iter__(self):
        return self

    def __next__(self):
        time.sleep(self.delay)
        return next(self.iterator)

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)


def _main(workdir: str, shard_dir: str, delay: float) -> None:
    from data import pipeline
    from tests.trainer_testlib import SmallCNN, tiny_config
    from trainer import config as config_lib
    from trainer.train import fit

    c = tiny_config(
        config_lib.pretrain_config(), ema_decay=0.9, checkpoint_every_steps=3, log_every_steps=3, learning_rate=0.1
    )
    make = lambda: _Slow(  # noqa: E731
        pipeline.train_iterator(shard_dir, global_batch_size=16, image_size=16, seed=3, num_classes=4, augment=True),
        delay,
    )
    fit(
        c,
        model=SmallCNN(dropout_rate=0.3),
        make_iterator=make,
        total_steps=TOTAL_STEPS,
        warmup_steps=2,
        workdir=workdir,
    )


def _start(workdir, shard_dir, delay=0.0):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}  # XLA_FLAGS as conftest set them
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), workdir, shard_dir, str(delay)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _wait_for_checkpoint(proc, ckpt_dir, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isdir(ckpt_dir) and any(name.isdigit() for name in os.listdir(ckpt_dir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before a checkpoint appeared:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    from tests.trainer_testlib import write_shards
    from trainer import checkpoint

    base = tmp_path_factory.mktemp("resume")
    shard_dir = write_shards(str(base / "shards"), 40, 4)
    code, out = _finish(_start(str(base / "straight"), shard_dir))
    assert code == 0, out
    return shard_dir, checkpoint.load_raw_state(str(base / "straight"))


def _assert_same(a, b):
    import jax

    for key in ("params", "batch_stats", "opt_state", "ema_params", "ema_batch_stats", "step"):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6), a[key], b[key]
        )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_kill_and_resume_is_exact(straight, tmp_path, sig):
    from trainer import checkpoint

    shard_dir, reference = straight
    workdir = str(tmp_path / "run")
    proc = _start(workdir, shard_dir, delay=0.4)
    _wait_for_checkpoint(proc, os.path.join(workdir, "checkpoints"))
    proc.send_signal(sig)
    code, out = _finish(proc)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM), out
    assert not os.path.exists(os.path.join(workdir, "final.json"))
    interrupted_at = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    assert 3 <= interrupted_at < TOTAL_STEPS
    if sig == signal.SIGTERM:
        assert f"SIGTERM: checkpoint saved at step {interrupted_at}" in out
    code, out = _finish(_start(workdir, shard_dir))
    assert code == 0, out
    assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in out
    _assert_same(checkpoint.load_raw_state(workdir), reference)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
