"""Building blocks shared by the models, with the TF/Keras/Slim conventions Flax does not default to.

TF-Slim and Keras use BatchNorm epsilon 1e-3, convolutions without bias, and average pooling that
excludes padding from the divisor; Flax's defaults (epsilon 1e-5, bias on, count_include_pad=True)
would silently change the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPSILON = 1e-3

Dtype = Any


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(name: str) -> Dtype:
    """Maps a config string ("float32" | "bfloat16") to a JAX dtype."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def scaled_filters(filters: int, multiplier: float, min_filters: int = 8) -> int:
    """Filters of a conv under a width multiplier; exact at 1.0, never below `min_filters` otherwise."""
    if multiplier == 1.0:
        return filters
    return max(min_filters, int(filters * multiplier))


def batch_norm(
    train: bool,
    *,
    momentum: float,
    use_scale: bool,
    dtype: Dtype,
    name: str | None = None,
    axis_name: str | None = None,
) -> nn.BatchNorm:
    """BatchNorm with TF's epsilon; running statistics update only when training.

    `axis_name` (a pmap axis; None or "" = none) makes training-mode batch statistics the mean over
    every device on that axis (cross-device / sync BatchNorm). It is used only when training, so
    evaluation (running averages, no collective) also runs outside that pmap.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        axis_name=(axis_name or None) if train else None,
        momentum=momentum,
        epsilon=BN_EPSILON,
        use_scale=use_scale,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def avg_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: str) -> jax.Array:
    """Average pool that, like TF, divides by the number of real (unpadded) pixels in each window."""
    return nn.avg_pool(x, tuple(window), tuple(strides), padding=padding, count_include_pad=False)


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm -> optional ReLU: the unit Inception-v3 is made of."""

    filters: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    bn_scale: bool = False
    bn_momentum: float = 0.9997
    relu: bool = True
    dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm (see `batch_norm`)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(
            self.filters,
            self.kernel,
            strides=self.strides,
            padding=self.padding,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="conv",
        )(x)
        x = batch_norm(
            train,
            momentum=self.bn_momentum,
            use_scale=self.bn_scale,
            dtype=self.dtype,
            name="bn",
            axis_name=self.bn_axis_name,
        )(x)
        return nn.relu(x) if self.relu else x
