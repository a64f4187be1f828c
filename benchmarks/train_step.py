"""Train-step throughput of Inception-v3 under the trainer's own programs (pmap or jit), in images/s.

    python benchmarks/train_step.py --width=0.25 --image_size=75 --batch=32 --parallelism=jit --steps=10
    python benchmarks/train_step.py --width=1.0 --image_size=299 --batch=128 --dtype=bfloat16   # on a GPU/TPU

Times `--steps` steps after `--warmup` warm-up steps (the first compiles); prints one JSON line.
`--fake_devices=N` splits the CPU into N XLA devices (set before JAX is imported).

`--keras_peer` (width 1.0 only) also times the peer in the same process on the same batch: Keras 3's
`keras.applications.InceptionV3(weights=None)` on the JAX backend, `model.train_on_batch` with the
same SGD settings (momentum, Nesterov, weight decay, weight EMA, label smoothing), the same warm-up
and step counts. Both are compiled first, then timed in alternating blocks of `--block` steps (so a
load change on a shared host hits both); prints its JSON line and the ratio ours/keras of images/s.

    python benchmarks/train_step.py --width=1.0 --image_size=75 --batch=16 --num_classes=25 \
        --steps=15 --warmup=2 --keras_peer
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image_size", type=int, default=75)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--parallelism", choices=("jit", "pmap"), default="jit")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing (the first compiles)")
    parser.add_argument("--fake_devices", type=int, default=0)
    parser.add_argument("--block", type=int, default=5, help="with --keras_peer: steps per alternating timed block")
    parser.add_argument(
        "--keras_peer", action="store_true", help="also time Keras 3 InceptionV3 train_on_batch (JAX backend)"
    )
    args = parser.parse_args()
    if args.keras_peer and (args.width != 1.0 or args.parallelism != "jit" or args.fake_devices > 1):
        parser.error("--keras_peer compares single-device jit at --width=1.0 (Keras has no width multiplier)")
    if args.keras_peer:
        os.environ["KERAS_BACKEND"] = "jax"  # must be set before keras is first imported
    if args.fake_devices:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.fake_devices}"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax
    import numpy as np

    from configs.models.inception_v3 import get_config
    from models.registry import build_model
    from trainer import config as config_lib
    from trainer import programs

    model_config = get_config()
    model_config.width_multiplier, model_config.num_classes, model_config.dtype = (
        args.width,
        args.num_classes,
        args.dtype,
    )
    model_config.image_size = args.image_size
    model = build_model(model_config)
    config = config_lib.pretrain_config()
    config.parallelism, config.global_batch_size, config.compute_dtype = args.parallelism, args.batch, args.dtype
    config.image_size = args.image_size
    started, started_cpu = time.perf_counter(), time.process_time()
    # The trainer's own programs, in the order trainer.train.fit uses them: the step compiling in the
    # background (for the first batch's shapes) while initialisation compiles cheaply and runs, the
    # step jitted with donated state; init, state creation and the first steps' compile are timed.
    progs = programs.programs_for(config, model, 1000, 10)
    runner = progs.runner
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.num_classes, args.batch)
    batch = runner.put_batch(
        {
            "image": rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32),
            "label": labels.astype(np.int32),
            "labels": np.eye(args.num_classes, dtype=np.float32)[labels],
            "weight": np.ones(args.batch, np.float32),
        }
    )
    compiled = programs.compile_step_ahead(progs, batch)
    variables = progs.init_variables(jax.random.PRNGKey(0))
    state = runner.put_state(jax.device_get(progs.make_state(variables, jax.random.PRNGKey(1))))
    compiled()
    for _ in range(max(1, args.warmup)):
        state, metrics = runner.step(state, batch)
    jax.block_until_ready(metrics)
    compile_s, compile_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    carry = {"state": state}

    def ours(steps: int) -> None:
        for _ in range(steps):
            carry["state"], metrics = runner.step(carry["state"], batch)
        jax.block_until_ready(metrics)

    timed = {"ours": ours}
    if args.keras_peer:
        images = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
        timed["keras"], peer_info = keras_peer(args, config, images, np.eye(args.num_classes, dtype=np.float32)[labels])
    blocks, cpu = interleave(timed, args.steps, args.block if args.keras_peer else args.steps)
    results = {}
    for name in timed:
        step_s = sum(b for b in blocks[name]) / len(blocks[name])
        results[name] = {
            "init_and_compile_s": round(compile_s if name == "ours" else peer_info["init_and_compile_s"], 1),
            "init_and_compile_cpu_s": round(
                compile_cpu_s if name == "ours" else peer_info["init_and_compile_cpu_s"], 1
            ),
            "step_s": round(step_s, 4),
            "block_step_s": [round(b, 3) for b in blocks[name]],
            "images_per_s": round(args.batch / step_s, 1),
            "cpu_s_per_step": round(cpu[name] / args.steps, 3),
        }
    print(
        json.dumps(
            {
                "device": jax.devices()[0].device_kind,
                "devices": jax.device_count(),
                "width": args.width,
                "image_size": args.image_size,
                "batch": args.batch,
                "parallelism": args.parallelism,
                "dtype": args.dtype,
                "params": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
                "warmup": args.warmup,
                "steps": args.steps,
                **results["ours"],
            }
        ),
        flush=True,
    )
    if args.keras_peer:
        print(json.dumps({**peer_info, **results["keras"]}), flush=True)
        ours_s, keras_s = results["ours"]["step_s"], results["keras"]["step_s"]
        print(
            f"ratio ours/keras (images/s): {keras_s / ours_s:.2f} "
            f"(median over blocks {np.median(blocks['keras']) / np.median(blocks['ours']):.2f}; "
            f"CPU-seconds per step keras/ours {cpu['keras'] / cpu['ours']:.2f})"
        )


def interleave(timed: dict, steps: int, block: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Runs each `timed[name](n)` for `steps` steps in alternating blocks of `block` (a, b, a, b, ...), so
    that a load change on a shared host hits every contender; returns (seconds per step of each block,
    CPU-seconds in total) per name."""
    blocks: dict[str, list[float]] = {name: [] for name in timed}
    cpu = {name: 0.0 for name in timed}
    done = 0
    while done < steps:
        n = min(block, steps - done)
        for name, run in timed.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            run(n)
            blocks[name].append((time.perf_counter() - wall0) / n)
            cpu[name] += time.process_time() - cpu0
        done += n
    return blocks, cpu


def keras_peer(args, config, images, one_hot, build=None):
    """Keras 3 InceptionV3 (JAX backend) with `--warmup` `train_on_batch` calls done: (run(steps), info).

    `build(input_shape, classes)` replaces the Keras model (the accelerator benchmark's CPU smoke mode
    passes a tiny one); by default it is `keras.applications.InceptionV3(weights=None)`."""
    import jax
    import keras

    assert keras.backend.backend() == "jax", keras.backend.backend()
    if args.dtype == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    started, started_cpu = time.perf_counter(), time.process_time()
    shape = (args.image_size, args.image_size, 3)
    if build is None:
        model = keras.applications.InceptionV3(weights=None, input_shape=shape, classes=args.num_classes)
    else:
        model = build(shape, args.num_classes)
    ema = float(config.ema_decay)
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=0.1,
            momentum=float(config.momentum),
            nesterov=bool(config.nesterov),
            weight_decay=float(config.weight_decay) or None,
            use_ema=ema > 0,
            ema_momentum=ema or 0.99,
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(config.label_smoothing)),
    )
    x, y = jax.device_put(images), jax.device_put(one_hot)
    for _ in range(max(1, args.warmup)):
        model.train_on_batch(x, y)  # returns host numbers: every call is synchronous
    compile_s, compile_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu

    def run(steps: int) -> None:
        for _ in range(steps):
            model.train_on_batch(x, y)

    return run, {
        "peer": f"keras {keras.__version__} {model.name} train_on_batch ({keras.backend.backend()} backend)",
        "image_size": args.image_size,
        "batch": args.batch,
        "dtype": args.dtype,
        "params": int(model.count_params()),
        "warmup": args.warmup,
        "steps": args.steps,
        "init_and_compile_s": compile_s,
        "init_and_compile_cpu_s": compile_cpu_s,  # on a loaded host the figure to compare
    }


if __name__ == "__main__":
    main()
