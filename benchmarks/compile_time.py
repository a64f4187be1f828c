"""Compile time of a training run's programs (Inception-v3), ours against the plain-jit peer.

    python benchmarks/compile_time.py --width=0.25 --image_size=75 --batch=32

A CPU job compiles before it trains: per distinct model an initialisation program and a train step.
Ours is `trainer.programs.programs_for` (initialisation compiled without XLA's expensive CPU passes);
the peer is the same init function under a plain `jax.jit` with default options, compiled in the same
process. Also timed: the train step's compile (first call) and its steady-state step time. Prints
one JSON line with both init compile times and their ratio. Run it in a fresh process without a
persistent compilation cache (a warm cache would hide the compiles).
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
    parser.add_argument("--num_classes", type=int, default=25)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs.models.inception_v3 import get_config
    from models.registry import build_model
    from trainer import config as config_lib
    from trainer import programs

    model_config = get_config()
    model_config.width_multiplier, model_config.num_classes, model_config.image_size = (
        args.width,
        args.num_classes,
        args.image_size,
    )
    config = config_lib.finetune_config()
    config.optimizer, config.image_size, config.global_batch_size = "adam", args.image_size, args.batch
    model = build_model(model_config)
    key = jax.random.PRNGKey(0)

    start = time.perf_counter()
    ours = programs.programs_for(config, model, 100, 10)
    variables = jax.block_until_ready(ours.init_variables(key))
    ours_init_s = time.perf_counter() - start

    dummy = jnp.zeros((1, args.image_size, args.image_size, 3), jnp.float32)
    start = time.perf_counter()
    peer = jax.jit(lambda k: model.init({"params": k, "dropout": k}, dummy, train=False))
    jax.block_until_ready(peer(key))
    peer_init_s = time.perf_counter() - start

    state = ours.runner.put_state(ours.make_state(variables, key))
    labels = np.arange(args.batch) % args.num_classes
    batch = ours.runner.put_batch(
        {
            "image": np.zeros((args.batch, args.image_size, args.image_size, 3), np.float32),
            "label": labels.astype(np.int32),
            "labels": np.eye(args.num_classes, dtype=np.float32)[labels],
            "weight": np.ones(args.batch, np.float32),
        }
    )
    start = time.perf_counter()
    state, metrics = ours.runner.step(state, batch)
    jax.block_until_ready(metrics)
    step_compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = ours.runner.step(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / args.steps
    print(
        json.dumps(
            {
                "model": f"inception_v3 width {args.width} at {args.image_size} px, batch {args.batch}",
                "backend": jax.default_backend(),
                "init_compile_s_ours": round(ours_init_s, 1),
                "init_compile_s_plain_jit": round(peer_init_s, 1),
                "ratio_plain_over_ours": round(peer_init_s / ours_init_s, 2),
                "train_step_first_call_s": round(step_compile_s, 1),
                "train_step_ms": round(step_s * 1000, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
