"""Model card: parameter counts, per-block counts, feature dimension and FLOPs, without allocating weights.

    python -m models.card --config=configs/models/inception_v3.py [--config.image_size=331] [--json]

Everything is computed on abstract values (`jax.eval_shape`); FLOPs come from XLA's cost analysis
of the lowered (unoptimised) inference graph for one image, so even the 557M AmoebaNet is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from models.registry import ModelOutputs, block_names, build_model


def _count(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def _per_block(params: Any, order: list[str]) -> dict[str, int]:
    unknown = set(params) - set(order)
    if unknown:
        raise ValueError(f"parameter groups missing from the block order: {sorted(unknown)}")
    return {name: _count(params[name]) for name in order if name in params}


def model_card(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Counts and costs of the model `config` describes, at `config.image_size`, for one image."""
    model = build_model(config)
    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)

    def forward(v: Any, x: jax.Array) -> ModelOutputs:
        return cast(ModelOutputs, model.apply(v, x, train=False))

    outputs = jax.eval_shape(forward, variables, images)
    cost = jax.jit(forward).lower(variables, images).cost_analysis()
    if isinstance(cost, list):  # older jax returned one dict per computation
        cost = cost[0]
    if cost is None:
        raise RuntimeError(f"{jax.default_backend()}: XLA gave no cost analysis for {config.name}")
    return {
        "name": config.name,
        "image_size": config.image_size,
        "num_classes": config.num_classes,
        "params": _count(variables["params"]),
        "batch_stats": _count(variables.get("batch_stats", {})),
        "feature_dim": int(outputs["features"].shape[-1]),
        "flops": float(cost["flops"]),
        "per_block": _per_block(variables["params"], block_names(config)),
    }


def format_card(card: dict[str, Any]) -> str:
    """A human-readable table of `model_card`'s output."""
    lines = [
        f"model        {card['name']} @ {card['image_size']}px, {card['num_classes']} classes",
        f"params       {card['params']:,} trainable (+{card['batch_stats']:,} BN statistics)",
        f"feature_dim  {card['feature_dim']}",
        f"flops        {card['flops']:,.0f} per image (inference)",
        "per block:",
    ]
    lines += [f"  {name:<20} {count:>14,}" for name, count in card["per_block"].items()]
    return "\n".join(lines)


def main() -> None:
    """The command line; its flags are defined here so that importing this module (launch's dry run
    does) defines none."""
    config_flag = config_flags.DEFINE_config_file("config", None, "Model config file (configs/models/<name>.py).")
    json_flag = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
    flags.mark_flag_as_required("config")

    def run(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        card = model_card(config_flag.value)
        print(json.dumps(card) if json_flag.value else format_card(card))

    app.run(run)


if __name__ == "__main__":
    main()
