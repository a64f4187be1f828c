"""The jitted programs of a training run, built once per process for each distinct program.

A job trains many runs that differ only in seed, data or initial weights (fine-tuning seeds times
pre-training choices, sweep grid points). Building the step anew for each run re-traces the model
every time (seconds for Inception-v3) and, without a warm persistent cache, recompiles it (tens of
seconds on CPU). Runs whose programs are identical (same model, same step-relevant config, same
schedule length) share one `Programs` here, so after the first run jax's own caches serve them.
Seeds are arguments of the programs, not constants baked into them, for the same reason.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from trainer import optim, schedules
from trainer.parallel import make_runner
from trainer.state import TrainState, create_state
from trainer.step import make_train_step

# Trainer config fields that never reach a compiled program: the host-side loop, the input pipeline,
# and durations (resolved into total/warm-up steps) and BatchNorm momentum (resolved into the model).
HOST_SIDE_FIELDS = frozenset(
    {
        "seed",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "log_every_steps",
        "eval_batch_size",
        "worker_count",
        "init_from_ema",
        "reinit_head",
        "eval_with_ema",
        "augment",
        "flip",
        "min_crop_area",
        "steps",
        "epochs",
        "warmup_steps",
        "warmup_epochs",
        "bn_momentum",
    }
)
_CACHE_SIZE = 8  # distinct programs kept per process (a sweep visits many; each holds executables)
# Programs that run once per run. The fusion emitters off: Inception-v3's init then compiles in 7.6-8.1
# CPU-s instead of 10.5-11.3 (75 px, full width), to the same bits and in the same time to run.
_CHEAP_CPU_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
# Convolutions and matmuls on XLA's Eigen kernels instead of YNNPACK (jax 0.10's default on CPU; Keras's
# step uses it). The train step takes it at large images: a profile of Inception-v3's step at 299 px,
# batch 8 put half its op time in YNNPACK's convolution kernel gradients (the 80 -> 192 3x3 stem conv's:
# 1,520 ms against 156 ms on Eigen); the step took 5.47 CPU-s against Keras's 6.98. At 75 px YNNPACK's
# step is faster at both widths measured (full width: 0.99 against 1.03 CPU-s per step; the demo's width
# 0.25: 0.131 against 0.158, and a shorter compile), so small images keep it; at 299 px width 0.25 the
# two are even in CPU-s (1.32 / 1.36). Forward-only programs (evaluation, the importance-weights pass)
# are faster on Eigen at every size measured: 299 px 1.52x (width 0.25: 1.20x), 75 px 1.33x (1.07x).
_EIGEN_CPU_COMPILE = {"xla_cpu_experimental_ynn_fusion_type": ""}
_EIGEN_FROM_IMAGE_SIZE = 150  # px; between the measured 75 (YNNPACK) and 299 (Eigen)


@dataclasses.dataclass(frozen=True)
class Programs:
    """What `fit` runs: init, state creation (optimiser included), and the parallel step."""

    init_variables: Callable[[jax.Array], dict]  # key -> variables
    make_state: Callable[[dict, jax.Array], TrainState]  # (variables, key) -> state
    abstract_state: Any
    runner: Any  # trainer.parallel.JitRunner | PmapRunner


def step_config_key(config: ml_collections.ConfigDict) -> str:
    """The part of a trainer config that the compiled programs depend on, as a canonical string."""
    fields = {k: v for k, v in config.to_dict().items() if k not in HOST_SIDE_FIELDS}
    return json.dumps(fields, sort_keys=True, default=str)


def programs_for(config: ml_collections.ConfigDict, model: nn.Module, total_steps: int, warmup_steps: int) -> Programs:
    """The run's programs, shared with every earlier run in this process that needs the same ones."""
    return _build(model, step_config_key(config), int(total_steps), int(warmup_steps))


def compile_step_ahead(programs: Programs, batch: Any) -> Callable[[], None]:
    """Starts compiling the run's train step for `batch`'s shapes in a background thread; returns
    `wait()`, which blocks until that is done (raising its error, if any). Call `wait()` before the
    first step: that call then finds the executable in jax's caches.

    Why: XLA's compile of the step runs on one core with the GIL released for most of its 20-30 s
    (Inception-v3 on CPU), and a run's initialisation (its own compile and the RNG run, or a
    checkpoint restore) is another 10-15 s; on two cores the two overlap instead of adding up."""
    failure: list[BaseException] = []

    def compile_() -> None:
        try:
            programs.runner.compile(programs.abstract_state, batch)
        except BaseException as err:  # re-raised by wait(), in the caller's thread
            failure.append(err)

    thread = threading.Thread(target=compile_, name="compile-step", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failure:
            raise failure[0]

    return wait


def _compile_run_once(jitted: Any, *example_args: Any) -> Callable:
    """Compiles a program that runs once per run (initialisation, state creation) without XLA's
    expensive CPU optimisations: Inception-v3's init (hundreds of RNG ops) then compiles 2-3x faster
    (width 0.25: 8.8 s vs 19.6 s on 2 cores, BENCHMARKS.md), and its single execution does not notice;
    state creation (full width) goes from 1.4-1.6 to 0.4-0.5 CPU-s. The compile happens at the first
    call (so that `compile_step_ahead` can overlap it with the step's). Other backends compile as usual."""
    if jax.default_backend() != "cpu":
        return jitted
    compiled = functools.cache(lambda: jitted.lower(*example_args).compile(compiler_options=_CHEAP_CPU_COMPILE))
    return lambda *args: compiled()(*args)


def _step_compiler_options(image_size: int) -> dict[str, Any] | None:
    """XLA options for the train step: Eigen convolutions on CPU from `_EIGEN_FROM_IMAGE_SIZE` px."""
    if jax.default_backend() == "cpu" and image_size >= _EIGEN_FROM_IMAGE_SIZE:
        return _EIGEN_CPU_COMPILE
    return None


def forward_compiler_options() -> dict[str, Any] | None:
    """XLA options for forward-only model programs (evaluation, importance weights, scoring features):
    Eigen convolutions on CPU at every image size (measured faster, see `_EIGEN_CPU_COMPILE`)."""
    return _EIGEN_CPU_COMPILE if jax.default_backend() == "cpu" else None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _build(model: nn.Module, config_key: str, total_steps: int, warmup_steps: int) -> Programs:
    config = ml_collections.ConfigDict(json.loads(config_key))
    schedule = schedules.warmup_cosine(
        float(config.learning_rate), warmup_steps, total_steps, float(config.end_learning_rate)
    )
    tx = optim.build_optimizer(config, schedule)
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    use_ema = float(config.ema_decay) > 0
    key_shape = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    init = jax.jit(lambda key: model.init({"params": key, "dropout": key}, dummy, train=False))
    make_state_jitted = jax.jit(lambda variables, key: create_state(variables, tx, key, use_ema))
    abstract_variables = jax.eval_shape(init, key_shape)
    abstract = jax.eval_shape(make_state_jitted, abstract_variables, key_shape)
    init_variables = _compile_run_once(init, key_shape)
    make_state = _compile_run_once(make_state_jitted, abstract_variables, key_shape)
    runner = make_runner(
        config.parallelism,
        lambda axis_name: make_train_step(model, config, tx, schedule, axis_name),
        abstract,
        bool(config.fsdp),
        int(config.fsdp_min_size),
        _step_compiler_options(int(config.image_size)),
    )
    return Programs(init_variables, make_state, abstract, runner)
