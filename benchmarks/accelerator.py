"""The accelerator figures in one table, each row with its peer measured in the same run.

    benchmarks/accelerator.sh               # one GPU/TPU chip, under 8 minutes
    benchmarks/accelerator.sh --cpu_smoke   # the same code at tiny sizes on CPU (tests/test_benchmarks.py)

Rows (full mode; `--cpu_smoke` shrinks every size and swaps the models for small ones):
  1. peak: a large bf16 matrix product (8192^3), TFLOP/s. It is the denominator of every MFU.
  2. ours: Inception-v3 bf16 train step at 299 px, batch 128 and 256, through the trainer's own
     programs (`trainer.programs.programs_for`: jit, donated state, EMA, label smoothing), on one
     device-resident batch. MFU = model FLOPs per step / step time / peak, with model FLOPs = 3 x
     the forward pass's FLOPs from XLA's cost analysis (backward = 2 x forward; recomputation and
     the optimiser are not model FLOPs).
  3. peer: Keras 3 `InceptionV3` on the JAX backend with the `mixed_bfloat16` policy, the same SGD
     settings, `train_on_batch` on the same batch, timed in blocks alternating with row 2.
  4. ours: AmoebaNet-B (6 cells, F=256) bf16 train step at 299 px, batch 64 (fits one chip without
     remat); its peer is the matrix-product peak (there is no Keras AmoebaNet).
  5. ours: the importance-weights forward pass (`selection.weights.target_label_distribution`,
     host batches in, Pt out) against the bare jitted forward pass on a device-resident batch.
  6. input wait: `trainer.train.train` on a synthetic JPEG shard set through the real grain
     pipeline (`--workers` processes); the trainer's own input wait fraction and img/s, against the
     train step's img/s on a device-resident batch (row 2).

Prints a Markdown table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, cast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything that differs between the accelerator run and the CPU smoke run."""

    model: dict  # overrides of configs/models/inception_v3 for rows 2, 5, 6
    amoeba: dict  # overrides of configs/models/amoeba_net_b for row 4
    image_size: int
    batches: tuple[int, ...]
    amoeba_batch: int
    num_classes: int
    matmul_n: int
    steps: int  # timed steps per train-step row
    block: int  # steps per alternating block (ours / Keras)
    warmup: int
    forward_batch: int
    forward_batches: int
    input_steps: int
    input_records: int
    keras_model: str  # "InceptionV3" or "tiny" (a two-conv Keras CNN for the smoke run)


FULL = Sizes(
    model={"name": "inception_v3"},
    amoeba={"num_cells": 6, "filters": 256},
    image_size=299,
    batches=(128, 256),
    amoeba_batch=64,
    num_classes=1000,
    matmul_n=8192,
    steps=30,
    block=10,
    warmup=2,
    forward_batch=256,
    forward_batches=20,
    input_steps=60,
    input_records=2048,
    keras_model="InceptionV3",
)
SMOKE = Sizes(
    model={"name": "small_cnn", "width_multiplier": 0.25},
    amoeba={"num_cells": 3, "filters": 8, "width_multiplier": 0.25, "drop_path_keep_prob": 1.0},
    image_size=32,
    batches=(2, 4),
    amoeba_batch=2,
    num_classes=10,
    matmul_n=128,
    steps=2,
    block=1,
    warmup=1,
    forward_batch=4,
    forward_batches=2,
    input_steps=4,
    input_records=16,
    keras_model="tiny",
)


def _model_config(base: str, overrides: dict, sizes: Sizes, dtype: str):
    import importlib

    name = overrides.get("name", base)
    config = importlib.import_module(f"configs.models.{name}").get_config()
    for key, value in overrides.items():
        config[key] = value
    config.num_classes, config.image_size, config.dtype = sizes.num_classes, sizes.image_size, dtype
    return config


def _trainer_config(sizes: Sizes, batch: int, dtype: str):
    from trainer import config as config_lib

    config = config_lib.pretrain_config()
    config.global_batch_size, config.image_size, config.compute_dtype = batch, sizes.image_size, dtype
    config.aux_loss_weight = 0.0  # Keras's InceptionV3 has no auxiliary head
    return config


def peak_matmul(n: int, dtype: Any, seconds: float = 2.0) -> float:
    """FLOP/s of an n x n x n matrix product in `dtype` (the MFU denominator), best of 3 timings."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dtype))
    jax.block_until_ready(matmul(a, b))
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 4 or calls < 2:
        jax.block_until_ready(matmul(a, b))
        calls += 1
    reps = max(1, int(calls * (seconds / 3) / (time.perf_counter() - start)))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = None
        for _ in range(reps):
            out = matmul(a, b)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / reps)
    return 2.0 * n**3 / best


def forward_flops(model: Any, variables: Any, batch: int, image_size: int) -> float:
    """FLOPs of one inference forward pass over `batch` images, from XLA's cost analysis."""
    import jax
    import jax.numpy as jnp

    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"]).lower(variables, images)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    if cost is None:
        raise RuntimeError(f"{jax.default_backend()}: XLA gave no cost analysis")
    return float(cost["flops"])


def _synthetic_batch(rng: Any, batch: int, image_size: int, num_classes: int) -> dict:
    import numpy as np

    labels = rng.integers(0, num_classes, batch)
    return {
        "image": rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(np.float32),
        "label": labels.astype(np.int32),
        "labels": np.eye(num_classes, dtype=np.float32)[labels],
        "weight": np.ones(batch, np.float32),
    }


def ours_train_step(model: Any, config: Any, sizes: Sizes, batch_host: dict) -> tuple[Callable[[int], None], dict]:
    """The trainer's programs for `model`, warmed up: (run(steps), info)."""
    import jax

    from trainer import programs

    started = time.perf_counter()
    progs = programs.programs_for(config, model, 1000, 10)
    variables = progs.init_variables(jax.random.PRNGKey(0))
    state = progs.runner.put_state(jax.device_get(progs.make_state(variables, jax.random.PRNGKey(1))))
    batch = progs.runner.put_batch(batch_host)
    carry = {"state": state}

    def run(steps: int) -> None:
        metrics = None
        for _ in range(steps):
            carry["state"], metrics = progs.runner.step(carry["state"], batch)
        jax.block_until_ready(metrics)

    run(sizes.warmup)
    params = int(sum(x.size for x in jax.tree.leaves(variables["params"])))
    flops = 3.0 * forward_flops(model, variables, batch_host["image"].shape[0], sizes.image_size)
    return run, {"init_and_compile_s": time.perf_counter() - started, "params": params, "model_flops": flops}


def _tiny_keras(shape: tuple[int, ...], classes: int) -> Any:
    import keras

    return keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Conv2D(8, 3, strides=2, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, activation="softmax"),
        ],
        name="tiny_cnn",
    )


def train_step_rows(sizes: Sizes, dtype: str, peak: float) -> list[dict]:
    """Rows 2 and 3: ours and the Keras peer at each batch, timed in alternating blocks."""
    import numpy as np

    from benchmarks.train_step import interleave, keras_peer
    from models.registry import build_model

    rows = []
    model = build_model(_model_config("inception_v3", sizes.model, sizes, dtype))
    for batch in sizes.batches:
        rng = np.random.default_rng(batch)
        batch_host = _synthetic_batch(rng, batch, sizes.image_size, sizes.num_classes)
        config = _trainer_config(sizes, batch, dtype)
        ours_run, ours = ours_train_step(model, config, sizes, batch_host)
        peer_args = argparse.Namespace(
            dtype=dtype,
            image_size=sizes.image_size,
            num_classes=sizes.num_classes,
            warmup=sizes.warmup,
            steps=sizes.steps,
            batch=batch,
        )
        build = _tiny_keras if sizes.keras_model == "tiny" else None
        keras_run, peer = keras_peer(peer_args, config, batch_host["image"], batch_host["labels"], build)
        blocks, _ = interleave({"ours": ours_run, "keras": keras_run}, sizes.steps, sizes.block)
        ours_s, keras_s = float(np.mean(blocks["ours"])), float(np.mean(blocks["keras"]))
        same_model = sizes.keras_model == "InceptionV3"
        rows.append(
            {
                "row": f"ours: {sizes.model['name']} {dtype} train step",
                "batch": batch,
                "images_per_s": batch / ours_s,
                "step_ms": 1000 * ours_s,
                "model_tflop_per_step": ours["model_flops"] / 1e12,
                "mfu": ours["model_flops"] / ours_s / peak,
                "compile_s": ours["init_and_compile_s"],
                "peer": "keras row below",
                "ratio": keras_s / ours_s,
                "params": ours["params"],
            }
        )
        rows.append(
            {
                "row": f"peer: {peer['peer']}, {'mixed_bfloat16' if dtype == 'bfloat16' else dtype}",
                "batch": batch,
                "images_per_s": batch / keras_s,
                "step_ms": 1000 * keras_s,
                # Keras's InceptionV3 is the same network (no dropout FLOPs to speak of): same model FLOPs.
                "mfu": ours["model_flops"] / keras_s / peak if same_model else None,
                "compile_s": peer["init_and_compile_s"],
                "params": peer["params"],
            }
        )
    return rows


def amoeba_row(sizes: Sizes, dtype: str, peak: float) -> dict:
    """Row 4: AmoebaNet-B's train step; its peer is the matrix-product peak (MFU)."""
    import numpy as np

    from benchmarks.train_step import interleave
    from models.registry import build_model

    config = _trainer_config(sizes, sizes.amoeba_batch, dtype)
    model = build_model(_model_config("amoeba_net_b", {"name": "amoeba_net_b", **sizes.amoeba}, sizes, dtype))
    batch_host = _synthetic_batch(np.random.default_rng(0), sizes.amoeba_batch, sizes.image_size, sizes.num_classes)
    run, info = ours_train_step(model, config, sizes, batch_host)
    blocks, _ = interleave({"ours": run}, sizes.steps, sizes.block)
    step_s = float(np.mean(blocks["ours"]))
    cells = f"N={sizes.amoeba['num_cells']}, F={sizes.amoeba['filters']}"
    return {
        "row": f"ours: amoeba_net_b ({cells}) {dtype} train step",
        "batch": sizes.amoeba_batch,
        "images_per_s": sizes.amoeba_batch / step_s,
        "step_ms": 1000 * step_s,
        "model_tflop_per_step": info["model_flops"] / 1e12,
        "mfu": info["model_flops"] / step_s / peak,
        "compile_s": info["init_and_compile_s"],
        "peer": "matmul peak (MFU)",
        "params": info["params"],
    }


def forward_rows(sizes: Sizes, dtype: str, peak: float) -> list[dict]:
    """Row 5: the importance-weights pass (host batches in, Pt out) against the bare jitted forward."""
    import jax
    import numpy as np

    from models.registry import ModelOutputs, build_model
    from selection import weights

    model = build_model(_model_config("inception_v3", sizes.model, sizes, dtype))
    image_shape = (sizes.forward_batch, sizes.image_size, sizes.image_size, 3)
    variables = jax.jit(lambda k: model.init(k, np.zeros((1, *image_shape[1:]), np.float32)))(jax.random.PRNGKey(0))
    images = np.random.default_rng(0).uniform(-1, 1, image_shape).astype(np.float32)
    host_batches = [{"image": images, "mask": np.ones(sizes.forward_batch, bool)}] * sizes.forward_batches

    def apply_fn(v, x):
        return cast(ModelOutputs, model.apply(v, x, train=False))["logits"]

    def pt_pass() -> None:
        weights.target_label_distribution(apply_fn, variables, host_batches, num_labels=sizes.num_classes)

    bare = jax.jit(apply_fn)
    device_images = jax.device_put(images)

    def bare_pass() -> None:
        out = None
        for _ in range(sizes.forward_batches):
            out = bare(variables, device_images)
        jax.block_until_ready(out)

    pt_pass()  # compile both
    bare_pass()
    flops = forward_flops(model, variables, sizes.forward_batch, sizes.image_size) * sizes.forward_batches
    times: dict[str, list[float]] = {"pt": [], "bare": []}
    for _ in range(3):  # alternate
        for name, fn in (("pt", pt_pass), ("bare", bare_pass)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    pt_s, bare_s = float(np.median(times["pt"])), float(np.median(times["bare"]))
    count = sizes.forward_batch * sizes.forward_batches
    return [
        {
            "row": f"ours: importance-weights forward pass ({sizes.model['name']}, {dtype})",
            "batch": sizes.forward_batch,
            "images_per_s": count / pt_s,
            "mfu": flops / pt_s / peak,
            "peer": "bare forward row below",
            "ratio": bare_s / pt_s,
        },
        {
            "row": "peer: bare jitted forward pass, device-resident batch",
            "batch": sizes.forward_batch,
            "images_per_s": count / bare_s,
            "mfu": flops / bare_s / peak,
        },
    ]


def input_wait_row(sizes: Sizes, dtype: str, workers: int, step_images_per_s: float) -> dict:
    """Row 6: the trainer's own input wait on real JPEG shards through grain."""
    from benchmarks.input_pipeline import build
    from trainer import train

    batch = sizes.batches[0]
    config = _trainer_config(sizes, batch, dtype)
    config.steps, config.warmup_steps = sizes.input_steps, 1
    config.log_every_steps = sizes.input_steps // 2  # the last window excludes the compile
    config.checkpoint_every_steps = 10 * sizes.input_steps
    config.worker_count = workers
    with tempfile.TemporaryDirectory() as tmp:
        shards = build(os.path.join(tmp, "shards"), sizes.input_records, num_labels=sizes.num_classes)
        result = train.train(
            config,
            model_config=_model_config("inception_v3", sizes.model, sizes, dtype),
            train_dir=shards,
            workdir=os.path.join(tmp, "run"),
            stage_name="accelerator/input_wait",
        )
    return {
        "row": f"input wait: trainer on JPEG shards, grain {workers} workers",
        "batch": batch,
        "images_per_s": result["images_per_s"],
        "step_ms": 1000 * result["step_time_s"],
        "input_wait": result["input_wait_fraction"],
        "peer": "device-resident batch (row 2)",
        "ratio": result["images_per_s"] / step_images_per_s,
    }


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def table(rows: list[dict]) -> str:
    header = (
        "| row | batch | img/s | step ms | model TFLOP/step | MFU | input wait | compile s | ratio ours/peer |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        mfu = r.get("mfu")
        wait = r.get("input_wait")
        lines.append(
            f"| {r['row']} | {r.get('batch', '')} | {_cell(r.get('images_per_s'), '.1f')} "
            f"| {_cell(r.get('step_ms'), '.1f')} | {_cell(r.get('model_tflop_per_step'), '.3g')} "
            f"| {'' if mfu is None else f'{100 * mfu:.1f}%'} | {'' if wait is None else f'{100 * wait:.1f}%'} "
            f"| {_cell(r.get('compile_s'), '.1f')} | {_cell(r.get('ratio'), '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu_smoke", action="store_true", help="tiny sizes on CPU: checks the logic, not speed")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--workers", type=int, default=0, help="grain workers for row 6 (0: cores - 2)")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=["train", "amoeba", "forward", "input"],
        choices=["train", "amoeba", "forward", "input"],
        help="rows after the matmul peak (which always runs)",
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.cpu_smoke else FULL
    if args.cpu_smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["KERAS_BACKEND"] = "jax"  # before keras is first imported
    sys.path.insert(0, ROOT)

    import jax
    import jax.numpy as jnp

    started = time.perf_counter()
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} ({jax.default_backend()}), {jax.device_count()} device(s); jax {jax.__version__}"
    )
    rows: list[dict] = []
    peak = peak_matmul(sizes.matmul_n, jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    n = sizes.matmul_n
    rows.append({"row": f"peak: {n}x{n}x{n} {args.dtype} matmul, TFLOP/s = {peak / 1e12:.3g}", "mfu": 1.0})
    step_images_per_s = None
    for name in args.rows:
        phase = time.perf_counter()
        if name == "train":
            new = train_step_rows(sizes, args.dtype, peak)
            step_images_per_s = new[0]["images_per_s"]
        elif name == "amoeba":
            new = [amoeba_row(sizes, args.dtype, peak)]
        elif name == "forward":
            new = forward_rows(sizes, args.dtype, peak)
        else:  # input
            workers = args.workers or max(1, (os.cpu_count() or 2) - 2)
            if step_images_per_s is None:
                step_images_per_s = train_step_rows(sizes, args.dtype, peak)[0]["images_per_s"]
            new = [input_wait_row(sizes, args.dtype, workers, step_images_per_s)]
        rows.extend(new)
        print(f"[{name}: {time.perf_counter() - phase:.0f} s]", flush=True)
    print(table(rows))
    print(f"total: {time.perf_counter() - started:.0f} s")
    print(json.dumps({"device": device.device_kind, "peak_flops": peak, "rows": rows}))


if __name__ == "__main__":
    main()
