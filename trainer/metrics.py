"""Observability: TensorBoard scalars, a one-line progress report with ETA, and the NaN/Inf guard."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TypeVar

import jax
from etils import epath

T = TypeVar("T")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stops and its last checkpoint is the last good state."""


def check_finite(step: int, metrics: dict[str, float], last_checkpoint: int | None) -> None:
    loss = metrics["loss"]
    if not math.isfinite(loss):
        kept = f"checkpoint at step {last_checkpoint} kept" if last_checkpoint is not None else "no checkpoint yet"
        raise NonFiniteLossError(
            f"loss is {loss} at step {step} (grad_norm {metrics.get('grad_norm')}); stopping, {kept}. "
            "Lower the learning rate, add warm-up, or check the input data."
        )


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_line(
    stage: str,
    step: int,
    total: int,
    loss: float,
    lr: float,
    images_per_s: float,
    eta_s: float,
    input_wait: float = 0.0,
) -> str:
    """`[stage] step 120/1000 loss 2.31 lr 0.05 img/s 410 input wait 3% eta 2m10s`; `input_wait` is
    the fraction of the window's wall time the loop spent blocked on the input iterator."""
    return (
        f"[{stage}] step {step}/{total} loss {loss:.4g} lr {lr:.3g} "
        f"img/s {images_per_s:.0f} input wait {100 * input_wait:.0f}% eta {format_duration(eta_s)}"
    )


class _EpathWriterFactory:
    """tensorboardX's writer for URLs through etils.epath (its own GCS writer needs google-cloud-storage)."""

    def open(self, path: str):
        return epath.Path(path).open("wb")

    def directory_check(self, path: str) -> None:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


class MetricsWriter:
    """Scalars to `workdir/tb` (TensorBoard event files), written by process 0 only."""

    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter, record_writer

            for scheme in ("gs", "s3"):  # event files on a bucket go through the project's path layer
                record_writer.register_writer_factory(scheme, _EpathWriterFactory())
            self._writer = SummaryWriter(logdir)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class WindowTimer:
    """Wall time, time blocked on the input, and metric sums since the last report."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0
        self.input_wait_s = 0.0
        self.sums: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def next_input(self, iterator: Iterator[T]) -> T:
        """`next(iterator)`, timed: the loop is idle (nothing new to dispatch) for exactly this long."""
        start = time.perf_counter()
        item = next(iterator)
        self.input_wait_s += time.perf_counter() - start
        return item

    def add(self, metrics: dict[str, float]) -> None:
        self.steps += 1
        self.last = metrics
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        """Window means; the learning rate is the latest value (a schedule, not a noisy metric)."""
        means = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        if "learning_rate" in self.last:
            means["learning_rate"] = self.last["learning_rate"]
        return means

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def input_wait_fraction(self) -> float:
        """Share of the window's wall time spent waiting for input: near 0 when the pipeline keeps
        up, near 1 when the accelerator starves."""
        elapsed = self.elapsed()
        return min(self.input_wait_s / elapsed, 1.0) if elapsed > 0 else 0.0
