"""The training loop: resumable, exact, observable. `train` reads shard sets; `fit` is the loop itself.

Resuming and initialising are different things: a work dir with checkpoints always resumes from its
latest one (model, optimiser, EMA, step and input-iterator state, so the continuation is exactly the
run that was not interrupted); `init_from` only seeds a fresh run's weights from another run. A run
whose `final.json` exists is finished and returns at once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from data import atomic, manifest
from trainer import metrics as metrics_lib
from trainer import programs as programs_lib
from trainer import schedules, warm_start
from trainer.checkpoint import Checkpointer
from trainer.parallel import PMAP_AXIS

if TYPE_CHECKING:  # imported lazily at run time (grain)
    from data.pipeline import StatefulIterator

FINAL_NAME = "final.json"
_MAX_IN_FLIGHT = 3  # train steps the host may dispatch ahead of the device
_PREFETCH = 2  # batches on the devices ahead of the step that takes them


class _Preemption:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None  # the SIGTERM handler to restore

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals to the caller
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def any_process(self) -> bool:
        """All processes must stop at the same step, so the flag is OR-ed across hosts."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))


def fit(
    config: ml_collections.ConfigDict,
    *,
    model: nn.Module,
    make_iterator: Callable[[], StatefulIterator],
    total_steps: int,
    warmup_steps: int,
    workdir: str,
    init_from: str | None = None,
    stage_name: str = "train",
) -> dict[str, Any]:
    """Trains `model` for `total_steps` on batches from `make_iterator()` (which must offer
    get_state/set_state); checkpoints, logs and writes `workdir/final.json`; returns its metrics."""
    from data.pipeline import Prefetcher

    final_path = os.path.join(workdir, FINAL_NAME)
    if epath.Path(final_path).exists():
        return atomic.read_json(final_path)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    programs = programs_lib.programs_for(config, model, total_steps, warmup_steps)
    init_key, state_key = jax.random.split(jax.random.PRNGKey(int(config.seed)))
    runner, abstract = programs.runner, programs.abstract_state
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, every_steps=config.checkpoint_every_steps)
    # Batches are read, stacked and put on the devices in a background thread, `_PREFETCH` ahead.
    iterator = Prefetcher(make_iterator(), size=_PREFETCH, transform=runner.put_batch)
    latest = ckpt.latest_step()
    if latest is not None:
        restored, iterator_state = ckpt.restore(latest, runner.restore_target(abstract))
        iterator.set_state(iterator_state)
    first_batch = iterator.peek() if latest is None or latest < total_steps else None
    # The step compiles in the background while the state is initialised (or put on the devices).
    compiled = programs_lib.compile_step_ahead(programs, first_batch) if first_batch is not None else None
    if latest is not None:
        state = runner.put_restored(restored)
        logging.info("%s: resumed from step %d", stage_name, latest)
    else:
        variables = programs.init_variables(init_key)
        if init_from:
            variables, reinit = warm_start.load_pretrained(init_from, jax.device_get(variables), config)
            print(f"[{stage_name}] initialised from {init_from}; re-initialised heads: {reinit or 'none'}", flush=True)
        state = runner.put_state(programs.make_state(variables, state_key))
    if compiled is not None:
        compiled()
    step = int(latest or 0)
    global_batch = int(config.global_batch_size)
    writer = metrics_lib.MetricsWriter(os.path.join(workdir, "tb"))
    window = metrics_lib.WindowTimer()
    last_saved = latest
    last_means: dict[str, float] = {}
    run_start = time.perf_counter()
    # Steps dispatched whose metrics the host has not read yet. Reading them is a host sync, so it
    # happens once per log/checkpoint boundary (one transfer), not per step: the device never idles
    # waiting for the host to look at a loss. The NaN guard still names the first bad step, and no
    # checkpoint is written before the steps leading to it were checked.
    pending: list[tuple[int, dict]] = []

    def consume() -> None:
        for (done_step, _), values in zip(pending, runner.metrics([m for _, m in pending]), strict=True):
            metrics_lib.check_finite(done_step, values, last_saved)
            window.add(values)
        pending.clear()

    try:
        with _Preemption() as preemption:
            while step < total_steps:
                batch = window.next_input(iterator)
                state, device_metrics = runner.step(state, batch)
                step += 1
                pending.append((step, device_metrics))
                if len(pending) > _MAX_IN_FLIGHT:
                    # Bound the steps (and their batches) queued ahead of the device. This waits only
                    # when the device is already _MAX_IN_FLIGHT steps behind, so it never starves it.
                    jax.block_until_ready(pending[-_MAX_IN_FLIGHT - 1][1])
                stop = preemption.any_process()
                log_now = step % int(config.log_every_steps) == 0 or step == total_steps
                save_now = ckpt.due(step) or step == total_steps or stop
                if not (log_now or save_now):
                    continue
                consume()
                if log_now:
                    last_means = _report(stage_name, step, total_steps, window, global_batch, writer)
                if save_now:
                    ckpt.save(step, runner.host_state(state), iterator.get_state())
                    last_saved = step
                if stop:
                    ckpt.wait()
                    print(f"[{stage_name}] SIGTERM: checkpoint saved at step {step}; exiting", flush=True)
                    raise SystemExit(128 + signal.SIGTERM)
        ckpt.wait()
    finally:
        iterator.close()
        writer.close()
        ckpt.close()
    result = {
        "stage": stage_name,
        "steps": step,
        "global_batch_size": global_batch,
        "wall_s": time.perf_counter() - run_start,
        **last_means,
    }
    atomic.write_json(final_path, result)
    return result


def _report(
    stage: str,
    step: int,
    total: int,
    window: metrics_lib.WindowTimer,
    global_batch: int,
    writer: metrics_lib.MetricsWriter,
) -> dict[str, float]:
    elapsed = window.elapsed()
    means = window.means()
    step_time = elapsed / max(window.steps, 1)
    means["images_per_s"] = global_batch / step_time if step_time > 0 else 0.0
    means["step_time_s"] = step_time
    means["input_wait_fraction"] = window.input_wait_fraction()
    means["input_wait_s_per_step"] = window.input_wait_s / max(window.steps, 1)
    writer.write(step, {f"train/{k}": v for k, v in means.items()})
    if jax.process_index() == 0:
        line = metrics_lib.progress_line(
            stage,
            step,
            total,
            means["loss"],
            means["learning_rate"],
            means["images_per_s"],
            step_time * (total - step),
            means["input_wait_fraction"],
        )
        print(line, flush=True)
    window.reset()
    return means


def prepare_model_config(
    config: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict, *, num_classes: int, num_records: int
) -> ml_collections.ConfigDict:
    """The model config for this run: classes from the data, the trainer's image size and compute
    dtype, and the resolved BatchNorm momentum (fine-tuning's max(1 - 10/s, 0.9))."""
    model_config = ml_collections.ConfigDict(model_config.to_dict())
    model_config.num_classes = int(num_classes)
    model_config.image_size = int(config.image_size)
    model_config.dtype = config.compute_dtype
    momentum = schedules.resolve_bn_momentum(config, num_records)
    if momentum is not None:
        model_config.bn_momentum = momentum
    if "bn_axis_name" in model_config:  # cross-device BatchNorm under pmap (jit sees the global batch)
        model_config.bn_axis_name = PMAP_AXIS if config.parallelism == "pmap" else ""
    elif config.parallelism == "pmap":
        logging.warning("model has no bn_axis_name: under pmap BatchNorm normalises per device")
    return model_config


def train(
    config: ml_collections.ConfigDict,
    *,
    model_config: ml_collections.ConfigDict,
    train_dir: str,
    workdir: str,
    init_from: str | None = None,
    stage_name: str = "train",
) -> dict[str, Any]:
    """Trains on the shard set in `train_dir` (resuming from `workdir` if it has checkpoints)."""
    from data import pipeline
    from models.registry import build_model

    final_path = os.path.join(workdir, FINAL_NAME)
    if epath.Path(final_path).exists():
        return atomic.read_json(final_path)
    shards = manifest.load_manifest(train_dir, verify=False)
    total, warmup = schedules.resolve_steps(config, shards.num_records)
    contrastive = config.get("objective", "supervised") == "contrastive"
    if contrastive and not (float(config.ema_decay) and config.augment):
        raise ValueError(
            "objective 'contrastive' needs ema_decay > 0 (the weight EMA is the momentum key encoder) and "
            "augment (two views of each image)"
        )
    model_config = prepare_model_config(
        config,
        model_config,
        num_classes=int(config.projection_dim) if contrastive else shards.num_labels,  # the head projects
        num_records=shards.num_records,
    )
    model = build_model(model_config)

    def make_iterator():
        return pipeline.train_iterator(
            train_dir,
            global_batch_size=int(config.global_batch_size),
            image_size=int(config.image_size),
            seed=int(config.seed),
            num_classes=shards.num_labels,
            augment=bool(config.augment),
            flip=bool(config.flip),
            min_crop_area=float(config.min_crop_area),
            worker_count=int(config.worker_count),
            second_view=contrastive,
        )

    return fit(
        config,
        model=model,
        make_iterator=make_iterator,
        total_steps=total,
        warmup_steps=warmup,
        workdir=workdir,
        init_from=init_from,
        stage_name=stage_name,
    )
