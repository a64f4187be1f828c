"""Train-step throughput of Inception-v3 under the trainer's real step (pmap or jit), in images/s.

    python benchmarks/train_step.py --width=0.25 --image_size=75 --batch=32 --parallelism=jit --steps=10
    python benchmarks/train_step.py --width=1.0 --image_size=299 --batch=128 --dtype=bfloat16   # on a GPU/TPU

Times `--steps` steps after one warm-up (compile) step; prints one JSON line. `--fake_devices=N`
splits the CPU into N XLA devices (set before JAX is imported).
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
    parser.add_argument("--fake_devices", type=int, default=0)
    args = parser.parse_args()
    if args.fake_devices:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.fake_devices}"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs.models.inception_v3 import get_config
    from models.registry import build_model
    from trainer import config as config_lib, optim, schedules
    from trainer.parallel import PMAP_AXIS, make_runner
    from trainer.state import create_state
    from trainer.step import make_train_step

    model_config = get_config()
    model_config.width_multiplier, model_config.num_classes, model_config.dtype = args.width, args.num_classes, args.dtype
    model_config.image_size = args.image_size
    model = build_model(model_config)
    config = config_lib.pretrain_config()
    config.parallelism, config.global_batch_size, config.compute_dtype = args.parallelism, args.batch, args.dtype
    schedule = schedules.warmup_cosine(0.1, 10, 1000)
    tx = optim.build_optimizer(config, schedule)
    dummy = jnp.zeros((1, args.image_size, args.image_size, 3))
    started = time.perf_counter()
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), dummy, train=False))()
    state = create_state(variables, tx, jax.random.PRNGKey(1), config.ema_decay > 0)
    runner = make_runner(args.parallelism, lambda axis: make_train_step(model, config, tx, schedule, axis), jax.eval_shape(lambda: state), False)
    state = runner.put_state(jax.device_get(state))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.num_classes, args.batch)
    batch = runner.put_batch({
        "image": rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32),
        "label": labels.astype(np.int32),
        "labels": np.eye(args.num_classes, dtype=np.float32)[labels],
        "weight": np.ones(args.batch, np.float32),
    })
    state, metrics = runner.step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = runner.step(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - started) / args.steps
    print(json.dumps({
        "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "width": args.width,
        "image_size": args.image_size, "batch": args.batch, "parallelism": args.parallelism, "dtype": args.dtype,
        "params": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
        "init_and_compile_s": round(compile_s, 1), "step_s": round(step_s, 4), "images_per_s": round(args.batch / step_s, 1),
    }))


if __name__ == "__main__":
    main()
