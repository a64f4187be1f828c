"""Copies a Keras 3 `keras.applications.InceptionV3` into this package's Inception-v3 variables.

Used to check our layout against an independent implementation (random init, `weights=None`)
and to start from Keras's ImageNet weights when they are at hand. Keras is imported by the caller.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from models.inception_v3 import BLOCK_NAMES

# Convolutions per block, in Keras's creation order (= our ConvBN_i numbering).
CONVS_PER_BLOCK = {
    "stem": 5, "Mixed_5b": 7, "Mixed_5c": 7, "Mixed_5d": 7, "Mixed_6a": 4, "Mixed_6b": 10, "Mixed_6c": 10,
    "Mixed_6d": 10, "Mixed_6e": 10, "Mixed_7a": 6, "Mixed_7b": 9, "Mixed_7c": 9,
}  # fmt: skip


def _creation_index(name: str) -> int:
    match = re.search(r"_(\d+)$", name)
    return int(match.group(1)) if match else 0


def _layers_of_type(model: Any, class_name: str) -> list[Any]:
    layers = [layer for layer in model.layers if type(layer).__name__ == class_name]
    return sorted(layers, key=lambda layer: _creation_index(layer.name))


def variables_from_keras(model: Any) -> dict[str, dict[str, Any]]:
    """Returns {"params", "batch_stats"} for `InceptionV3(bn_scale=False, aux_head=False)` at width 1.0."""
    convs = _layers_of_type(model, "Conv2D")
    norms = _layers_of_type(model, "BatchNormalization")
    dense = _layers_of_type(model, "Dense")
    expected = sum(CONVS_PER_BLOCK.values())
    if len(convs) != expected or len(norms) != expected or len(dense) != 1:
        raise ValueError(f"not a Keras InceptionV3 with top: {len(convs)} convs, {len(dense)} dense layers")
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    position = 0
    for block in BLOCK_NAMES:
        params[block], stats[block] = {}, {}
        for i in range(CONVS_PER_BLOCK[block]):
            conv, norm = convs[position], norms[position]
            position += 1
            if norm.scale:
                raise ValueError("Keras InceptionV3 BatchNorm is expected to have scale=False")
            unit = f"ConvBN_{i}"
            params[block][unit] = {
                "conv": {"kernel": np.asarray(conv.kernel)},
                "bn": {"bias": np.asarray(norm.beta)},
            }
            stats[block][unit] = {"bn": {"mean": np.asarray(norm.moving_mean), "var": np.asarray(norm.moving_variance)}}
    params["head"] = {"kernel": np.asarray(dense[0].kernel), "bias": np.asarray(dense[0].bias)}
    return {"params": params, "batch_stats": stats}
