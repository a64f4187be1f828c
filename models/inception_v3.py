"""Inception-v3 (Szegedy et al. 2016) in the TF-Slim / Keras layout.

Blocks are named as in Slim (`stem`, `Mixed_5b` ... `Mixed_7c`), the classifier is `head` and the
auxiliary classifier `aux_head`, so per-block parameter counts and fine-tuning head swaps are a
dictionary lookup. Inside a block the convolutions are numbered in the order Keras creates them
(`ConvBN_0`, `ConvBN_1`, ...), which is what `models.keras_import` relies on.

Any input from 75 px up works: the network is convolutional up to a global average pool. The
auxiliary head keeps its 5x5 conv at every resolution (so checkpoints move between resolutions):
below 5x5 its input is zero-padded to 5x5, above it the conv output is averaged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import ConvBN, Dtype, avg_pool, max_pool, scaled_filters

MIN_IMAGE_SIZE = 75
FEATURE_DIM = 2048
BLOCK_NAMES = (
    "stem",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)


class _Block(nn.Module):
    """Common conv settings for every block; subclasses define the branches."""

    width_multiplier: float = 1.0
    bn_scale: bool = False
    bn_momentum: float = 0.9997
    dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None

    def conv(
        self, x: jax.Array, filters: int, kernel: tuple[int, int], train: bool, strides: int = 1, padding: str = "SAME"
    ) -> jax.Array:
        return ConvBN(
            scaled_filters(filters, self.width_multiplier),
            kernel,
            strides=(strides, strides),
            padding=padding,
            bn_scale=self.bn_scale,
            bn_momentum=self.bn_momentum,
            dtype=self.dtype,
            bn_axis_name=self.bn_axis_name,
        )(x, train)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return max_pool(x, (3, 3), (2, 2))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    return avg_pool(x, (3, 3), (1, 1), padding="SAME")


class Stem(_Block):
    """299x299x3 -> 35x35x192."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.conv(x, 32, (3, 3), train, strides=2, padding="VALID")
        x = self.conv(x, 32, (3, 3), train, padding="VALID")
        x = self.conv(x, 64, (3, 3), train)
        x = _max_pool_3x3_s2(x)
        x = self.conv(x, 80, (1, 1), train, padding="VALID")
        x = self.conv(x, 192, (3, 3), train, padding="VALID")
        return _max_pool_3x3_s2(x)


class InceptionA(_Block):
    """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pool branches."""

    pool_filters: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b0 = self.conv(x, 64, (1, 1), train)
        b1 = self.conv(x, 48, (1, 1), train)
        b1 = self.conv(b1, 64, (5, 5), train)
        b2 = self.conv(x, 64, (1, 1), train)
        b2 = self.conv(b2, 96, (3, 3), train)
        b2 = self.conv(b2, 96, (3, 3), train)
        b3 = self.conv(_avg_pool_3x3(x), self.pool_filters, (1, 1), train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class ReductionA(_Block):
    """Mixed_6a: 35x35 -> 17x17."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b0 = self.conv(x, 384, (3, 3), train, strides=2, padding="VALID")
        b1 = self.conv(x, 64, (1, 1), train)
        b1 = self.conv(b1, 96, (3, 3), train)
        b1 = self.conv(b1, 96, (3, 3), train, strides=2, padding="VALID")
        return jnp.concatenate([b0, b1, _max_pool_3x3_s2(x)], axis=-1)


class InceptionB(_Block):
    """Mixed_6b-6e: factorised 7x7 branches of width `mid_filters`."""

    mid_filters: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = self.mid_filters
        b0 = self.conv(x, 192, (1, 1), train)
        b1 = self.conv(x, c, (1, 1), train)
        b1 = self.conv(b1, c, (1, 7), train)
        b1 = self.conv(b1, 192, (7, 1), train)
        b2 = self.conv(x, c, (1, 1), train)
        b2 = self.conv(b2, c, (7, 1), train)
        b2 = self.conv(b2, c, (1, 7), train)
        b2 = self.conv(b2, c, (7, 1), train)
        b2 = self.conv(b2, 192, (1, 7), train)
        b3 = self.conv(_avg_pool_3x3(x), 192, (1, 1), train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class ReductionB(_Block):
    """Mixed_7a: 17x17 -> 8x8."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b0 = self.conv(x, 192, (1, 1), train)
        b0 = self.conv(b0, 320, (3, 3), train, strides=2, padding="VALID")
        b1 = self.conv(x, 192, (1, 1), train)
        b1 = self.conv(b1, 192, (1, 7), train)
        b1 = self.conv(b1, 192, (7, 1), train)
        b1 = self.conv(b1, 192, (3, 3), train, strides=2, padding="VALID")
        return jnp.concatenate([b0, b1, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
    """Mixed_7b/7c: expanded 1x3/3x1 branches -> 2048 channels."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b0 = self.conv(x, 320, (1, 1), train)
        b1 = self.conv(x, 384, (1, 1), train)
        b1 = jnp.concatenate([self.conv(b1, 384, (1, 3), train), self.conv(b1, 384, (3, 1), train)], axis=-1)
        b2 = self.conv(x, 448, (1, 1), train)
        b2 = self.conv(b2, 384, (3, 3), train)
        b2 = jnp.concatenate([self.conv(b2, 384, (1, 3), train), self.conv(b2, 384, (3, 1), train)], axis=-1)
        b3 = self.conv(_avg_pool_3x3(x), 192, (1, 1), train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class AuxHead(_Block):
    """Slim's auxiliary classifier on Mixed_6e: avg pool 5x5/3 -> 1x1 128 -> 5x5 768 -> logits."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        window = (min(5, x.shape[1]), min(5, x.shape[2]))
        x = nn.avg_pool(x, window, (3, 3), padding="VALID")
        x = self.conv(x, 128, (1, 1), train)
        pad_h, pad_w = max(0, 5 - x.shape[1]), max(0, 5 - x.shape[2])
        if pad_h or pad_w:
            x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        x = self.conv(x, 768, (5, 5), train, padding="VALID")
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="logits")(x)


class InceptionV3(nn.Module):
    """Inception-v3 returning {"logits", "features", and "aux_logits" when aux_head and training}."""

    num_classes: int = 1000
    width_multiplier: float = 1.0
    aux_head: bool = False
    bn_scale: bool = False
    bn_momentum: float = 0.9997
    dropout_rate: float = 0.2
    dtype: Dtype = jnp.float32
    remat: bool = False
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm; None/"" = per device

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, progress: object = None) -> dict[str, jax.Array]:
        """`progress` (fraction of training done) is accepted so a trainer can pass it to any model;
        Inception-v3 has no drop-path and ignores it."""
        del progress
        if min(images.shape[1:3]) < MIN_IMAGE_SIZE:
            raise ValueError(f"Inception-v3 needs inputs of at least {MIN_IMAGE_SIZE} px, got {images.shape}")
        common = dict(
            width_multiplier=self.width_multiplier,
            bn_scale=self.bn_scale,
            bn_momentum=self.bn_momentum,
            dtype=self.dtype,
            bn_axis_name=self.bn_axis_name or None,
        )

        def wrap(cls: type[nn.Module]) -> type[nn.Module]:
            return nn.remat(cls, static_argnums=(2,)) if self.remat else cls

        x = images.astype(self.dtype)
        x = wrap(Stem)(name="stem", **common)(x, train)
        for name, pool_filters in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = wrap(InceptionA)(pool_filters=pool_filters, name=name, **common)(x, train)
        x = wrap(ReductionA)(name="Mixed_6a", **common)(x, train)
        for name, mid in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = wrap(InceptionB)(mid_filters=mid, name=name, **common)(x, train)
        outputs: dict[str, jax.Array] = {}
        if self.aux_head and (train or self.is_initializing()):
            aux = wrap(AuxHead)(num_classes=self.num_classes, name="aux_head", **common)(x, train)
            if train:
                outputs["aux_logits"] = aux.astype(jnp.float32)
        x = wrap(ReductionB)(name="Mixed_7a", **common)(x, train)
        x = wrap(InceptionC)(name="Mixed_7b", **common)(x, train)
        x = wrap(InceptionC)(name="Mixed_7c", **common)(x, train)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        outputs["logits"] = logits.astype(jnp.float32)
        outputs["features"] = features
        return outputs
