"""Building blocks shared by the models, with the TF/Keras/Slim conventions Flax does not default to.

TF-Slim and Keras use BatchNorm epsilon 1e-3, convolutions without bias, and average pooling that
excludes padding from the divisor; Flax's defaults (epsilon 1e-5, bias on, count_include_pad=True)
would silently change the numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

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


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
    """VALID max pool over NHWC `x`: the values and gradients of `nn.max_pool(x, window, strides,
    "VALID")`, bit for bit (ties: the window's first maximum in row-major order takes the gradient),
    from strided slices instead of a reduce-window.

    Why: XLA lowers the reduce-window's gradient through a variadic reduce-window that records every
    window's arg-max with four int32 iotas, then scatters; on CPU that was 10-11% of Inception-v3's
    train step (op time, 75 and 299 px). Here the forward is the maximum of the window's strided
    slices, and the backward picks each window's first maximal tap and pads the incoming gradient
    back, all elementwise fusions: 3-4.5x less CPU than the reduce-window pair (BENCHMARKS.md).
    """
    return _max_pool(x, tuple(window), tuple(strides))


def _window_taps(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> list[jax.Array]:
    """The strided slice of `x` that each window position (row-major) sees, one per output pixel."""
    (n, h, w, c), (sh, sw) = x.shape, strides
    oh, ow = (h - window[0]) // sh + 1, (w - window[1]) // sw + 1
    return [
        lax.slice(x, (0, dy, dx, 0), (n, dy + (oh - 1) * sh + 1, dx + (ow - 1) * sw + 1, c), (1, sh, sw, 1))
        for dy in range(window[0])
        for dx in range(window[1])
    ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
    return functools.reduce(jnp.maximum, _window_taps(x, window, strides))


def _max_pool_fwd(x, window, strides):
    out = _max_pool(x, window, strides)
    return out, (x, out)


def _max_pool_bwd(window, strides, residuals, g):
    x, out = residuals
    taps = _window_taps(x, window, strides)
    index = jnp.int8 if len(taps) <= 127 else jnp.int32
    first = jnp.zeros(out.shape, index)  # each window's first maximal tap
    for k in reversed(range(len(taps))):
        first = jnp.where(taps[k] == out, index(k), first)
    (_, h, w, _), (oh, ow), (sh, sw) = x.shape, out.shape[1:3], strides
    zero = jnp.zeros((), g.dtype)
    dx = jnp.zeros_like(x)
    # Taps in reverse: an input pixel that is the maximum of several windows sums their gradients in
    # the windows' row-major order, as XLA's scatter does, so the float sums match bit for bit.
    for k in reversed(range(len(taps))):
        dy, dxx = divmod(k, window[1])
        rows = (dy, h - dy - (oh - 1) * sh - 1, sh - 1)
        cols = (dxx, w - dxx - (ow - 1) * sw - 1, sw - 1)
        dx = dx + lax.pad(jnp.where(first == k, g, zero), zero, [(0, 0, 0), rows, cols, (0, 0, 0)])
    return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


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
