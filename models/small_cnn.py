"""A small VGG-style ConvNet: the fast model for end-to-end tests and quick CPU experiments.

Not a paper model. Inception-v3 compiles for tens of seconds on CPU even at width 0.125, and its
checkpoints hold hundreds of arrays; this network has the same interface (`stage_*` blocks, a
`head` classifier the fine-tuner swaps, {"logits", "features"} outputs, sync-BatchNorm and remat
switches) and compiles in about a second, so the whole pipeline can be tested in seconds. The same
role as `_ResNet1` in Flax's ImageNet example.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import ConvBN, Dtype, scaled_filters


def block_names(num_stages: int) -> list[str]:
    """Top-level parameter groups in network order."""
    return [f"stage_{i}" for i in range(num_stages)] + ["head"]


class _Stage(nn.Module):
    """`convs` 3x3 conv-BN-ReLU units, then 2x2 max pooling."""

    filters: int
    convs: int
    bn_momentum: float
    dtype: Dtype
    bn_axis_name: str | None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.convs):
            x = ConvBN(
                self.filters,
                (3, 3),
                bn_momentum=self.bn_momentum,
                dtype=self.dtype,
                bn_axis_name=self.bn_axis_name,
                name=f"ConvBN_{i}",
            )(x, train)
        return nn.max_pool(x, (2, 2), (2, 2), padding="SAME")


class SmallCNN(nn.Module):
    """Stages of 3x3 convs with pooling, global average pool, dropout, dense head."""

    num_classes: int = 10
    stage_filters: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 1
    width_multiplier: float = 1.0
    bn_momentum: float = 0.9
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    remat: bool = False
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, progress: object = None) -> dict[str, jax.Array]:
        """`progress` is accepted like every model's and ignored (no drop-path)."""
        del progress
        stage = nn.remat(_Stage, static_argnums=(2,)) if self.remat else _Stage
        x = images.astype(self.dtype)
        for i, filters in enumerate(self.stage_filters):
            x = stage(
                scaled_filters(filters, self.width_multiplier),
                self.convs_per_stage,
                self.bn_momentum,
                self.dtype,
                self.bn_axis_name or None,
                name=f"stage_{i}",
            )(x, train)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return {"logits": logits.astype(jnp.float32), "features": features}
