"""AmoebaNet (Real et al. 2018) in the tensorflow/tpu `amoeba_net` layout, genotype from models.genotypes.

Layout: stem conv 3x3/2 VALID + BN, two stride-2 reduction "stem cells" at F/4 and F/2, then
`num_cells` normal cells in three stacks with reduction cells before cells int(n/3) and int(2n/3)
(filters double at each); ReLU, global average pool, dropout, dense `head`. Every conv has no
bias; every BatchNorm has gamma and beta (epsilon 1e-3).

Drop-path follows the reference's default ("v1"): every op except `none` is dropped per example
with keep probability 1 - progress * (1 - drop_path_keep_prob), where `progress` in [0, 1] is the
fraction of training done, passed by the trainer at each step (None = the full target rate, as the
reference does without burn-in).

`dil_2_separable_5x5_2` is parsed as the reference parses it: a plain two-layer separable 5x5,
no dilation. The auxiliary head's second conv spans the whole feature map, as in the reference,
so its parameter count depends on the input resolution.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.genotypes import CellSpec, Genotype
from models.layers import Dtype, avg_pool, batch_norm

NUM_REDUCTION_LAYERS = 2
NUM_STEM_CELLS = 2
STEM_FILTERS = 32


def reduction_indices(num_cells: int) -> list[int]:
    """Normal-cell indices preceded by a reduction cell: int(n/3) and int(2n/3)."""
    return [int(k / (NUM_REDUCTION_LAYERS + 1) * num_cells) for k in range(1, NUM_REDUCTION_LAYERS + 1)]


def block_names(num_cells: int) -> list[str]:
    """Top-level parameter groups in network order (for per-block reports)."""
    names = ["stem_conv", "stem_bn"] + [f"stem_cell_{i}" for i in range(NUM_STEM_CELLS)]
    reductions = reduction_indices(num_cells)
    for i in range(num_cells):
        if i in reductions:
            names.append(f"reduction_cell_{reductions.index(i)}")
        names.append(f"cell_{i}")
        if i == reductions[1] - 1:
            names.append("aux_head")
    return names + ["head"]


def drop_path_keep_prob(target_keep_prob: float, progress: Any) -> Any:
    """Keep probability ramped linearly from 1 at the start of training to the target at the end."""
    if progress is None:
        return target_keep_prob
    return 1.0 - jnp.clip(progress, 0.0, 1.0) * (1.0 - target_keep_prob)


def _drop_path(module: nn.Module, x: jax.Array, keep_prob: Any) -> jax.Array:
    """Zeroes whole examples with probability 1 - keep_prob and rescales the rest."""
    keep = jnp.asarray(keep_prob, jnp.float32)
    noise = jax.random.uniform(module.make_rng("drop_path"), (x.shape[0], 1, 1, 1), jnp.float32)
    return x * (jnp.floor(keep + noise) / keep).astype(x.dtype)


class _Unit(nn.Module):
    """Shared settings: BN momentum, compute dtype and the BatchNorm sync axis."""

    bn_momentum: float = 0.9997
    dtype: Dtype = jnp.float32
    bn_axis_name: str | None = None

    def conv(self, x: jax.Array, filters: int, kernel: tuple[int, int], strides=(1, 1), **kwargs: Any) -> jax.Array:
        return nn.Conv(
            filters, kernel, strides=strides, padding="SAME", use_bias=False, dtype=self.dtype,
            param_dtype=jnp.float32, **kwargs,
        )(x)  # fmt: skip

    def bn(self, x: jax.Array, train: bool) -> jax.Array:
        return batch_norm(
            train, momentum=self.bn_momentum, use_scale=True, dtype=self.dtype, axis_name=self.bn_axis_name
        )(x)


class FactorizedReduction(_Unit):
    """Halves the spatial size without dropping pixels: two offset stride-2 1x1 paths, concatenated."""

    filters: int = 32
    stride: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.stride == 1:
            return self.bn(self.conv(x, self.filters, (1, 1)), train)
        path1 = self.conv(x[:, :: self.stride, :: self.stride], self.filters // 2, (1, 1))
        shifted = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))[:, 1:, 1:]
        path2 = self.conv(shifted[:, :: self.stride, :: self.stride], self.filters // 2, (1, 1))
        return self.bn(jnp.concatenate([path1, path2], axis=-1), train)


def _separable_kernel(operation: str) -> int:
    """'separable_3x3_2' -> 3 (the reference reads the digit before the first 'x')."""
    return int(operation.split("x")[0][-1])


def _pool_kernel(operation: str) -> int:
    """'max_pool_3x3' -> 3."""
    return int(operation.split("_")[-1].split("x")[0])


class CellOp(_Unit):
    """One genotype operation applied to one hidden state, plus drop-path."""

    operation: str = "none"
    filters: int = 32
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, keep_prob: Any) -> jax.Array:
        op, f, s = self.operation, self.filters, self.stride
        if "separable" in op:
            last = op.split("_")[-1]
            layers = 1 if "x" in last else int(last)
            k = _separable_kernel(op)
            for layer in range(layers):
                x = nn.relu(x)
                stride = (s, s) if layer == 0 else (1, 1)
                x = self.conv(x, x.shape[-1], (k, k), strides=stride, feature_group_count=x.shape[-1])
                x = self.bn(self.conv(x, f, (1, 1)), train)
        elif op in ("3x3", "1x7_7x1", "1x3_3x1") or op.startswith("dilated_3x3_rate_"):
            reduced = int(3 * f / 8) if op == "1x3_3x1" else int(f / 4)
            bottleneck = reduced >= 1
            inner = reduced if bottleneck else f
            x = nn.relu(x)
            if bottleneck:
                x = nn.relu(self.bn(self.conv(x, inner, (1, 1)), train))
            x = self._conv_operation(x, op, inner, train)
            x = self.bn(x, train)
            if bottleneck:
                x = self.bn(self.conv(nn.relu(x), f, (1, 1)), train)
        elif op in ("none", "1x1"):
            if s > 1 or op == "1x1" or x.shape[-1] != f:
                x = self.bn(self.conv(nn.relu(x), f, (1, 1), strides=(s, s)), train)
        elif "_pool_" in op:
            k = _pool_kernel(op)
            if op.startswith("avg"):
                x = avg_pool(x, (k, k), (s, s), padding="SAME")
            elif op.startswith("max"):
                x = nn.max_pool(x, (k, k), (s, s), padding="SAME")
            else:
                raise ValueError(f"unknown pooling {op!r}")
            if x.shape[-1] != f:
                x = self.bn(self.conv(x, f, (1, 1)), train)
        else:
            raise ValueError(f"unknown operation {op!r}")
        if op != "none" and train and keep_prob is not None:
            x = _drop_path(self, x, keep_prob)
        return x

    def _conv_operation(self, x: jax.Array, op: str, filters: int, train: bool) -> jax.Array:
        s = self.stride
        if op == "3x3":
            return self.conv(x, filters, (3, 3), strides=(s, s))
        if op.startswith("dilated_3x3_rate_"):
            rate = int(op.split("_")[-1])
            return self.conv(x, filters, (3, 3), strides=(s, s), kernel_dilation=(rate, rate))
        first, second = ((1, 7), (7, 1)) if op == "1x7_7x1" else ((1, 3), (3, 1))
        x = self.conv(x, filters, first, strides=(1, s))
        x = nn.relu(self.bn(x, train))
        return self.conv(x, filters, second, strides=(s, 1))


class Cell(_Unit):
    """A normal (stride 1) or reduction (stride 2) cell: two inputs, five pairwise combinations."""

    spec: CellSpec = None  # type: ignore[assignment]  # required; a default because inherited fields have them
    filters: int = 32
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, prev: jax.Array | None, train: bool, keep_prob: Any) -> jax.Array:
        f = self.filters
        common = dict(bn_momentum=self.bn_momentum, dtype=self.dtype, bn_axis_name=self.bn_axis_name)
        if prev is None:
            prev = x
        elif prev.shape[2] != x.shape[2]:
            prev = FactorizedReduction(filters=f, stride=2, name="prev_reduction", **common)(nn.relu(prev), train)
        elif prev.shape[-1] != f:
            prev = self.bn(self.conv(nn.relu(prev), f, (1, 1), name="prev_1x1"), train)
        states = [self.bn(self.conv(nn.relu(x), f, (1, 1), name="base_1x1"), train), prev]
        ops, indices = self.spec.operations, self.spec.hiddenstate_indices
        for i in range(5):
            combined: Any = 0  # a sum of the two branch outputs
            for side, j in (("left", 2 * i), ("right", 2 * i + 1)):
                index = indices[j]
                stride = self.stride if index < 2 else 1
                op = CellOp(operation=ops[j], filters=f, stride=stride, name=f"comb{i}_{side}", **common)
                combined = combined + op(states[index], train, keep_prob)
            states.append(combined)
        final = states[-1]
        outputs = []
        for index, (state, used) in enumerate(zip(states, self.spec.used_hiddenstates, strict=True)):
            if used:
                continue
            if state.shape[2] != final.shape[2] or state.shape[-1] != final.shape[-1]:
                stride = 2 if state.shape[2] != final.shape[2] else 1
                reduce = FactorizedReduction(filters=final.shape[-1], stride=stride, name=f"reduce_{index}", **common)
                state = reduce(state, train)
            outputs.append(state)
        return jnp.concatenate(outputs, axis=-1)


class AuxHead(_Unit):
    """Reference aux head: avg pool 5x5/3 -> 1x1 (128 * scale) -> full-map conv (768 * scale) -> dense."""

    num_classes: int = 1000
    scale: float = 0.4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(x)
        window = (min(5, x.shape[1]), min(5, x.shape[2]))
        x = nn.avg_pool(x, window, (3, 3), padding="VALID")
        x = nn.relu(self.bn(self.conv(x, int(128 * self.scale), (1, 1)), train))
        x = nn.Conv(
            int(768 * self.scale), x.shape[1:3], padding="VALID", use_bias=False, dtype=self.dtype,
            param_dtype=jnp.float32,
        )(x)  # fmt: skip
        x = nn.relu(self.bn(x, train)).reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="logits")(x)


class AmoebaNet(nn.Module):
    """AmoebaNet returning {"logits", "features", and "aux_logits" when aux_head and training}."""

    genotype: Genotype = None  # type: ignore[assignment]  # always given (models/registry.py); None only as the field default
    num_classes: int = 1000
    num_cells: int = 18
    filters: int = 512
    stem_filters: int = STEM_FILTERS
    aux_head: bool = False
    aux_scale: float = 0.4
    drop_path_keep_prob: float = 0.7
    dropout_rate: float = 0.5
    bn_momentum: float = 0.9997
    dtype: Dtype = jnp.float32
    remat: bool = False
    bn_axis_name: str | None = None  # pmap axis for cross-device BatchNorm; None/"" = per device

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, progress: float | jax.Array | None = None
    ) -> dict[str, jax.Array]:
        if self.filters % 4:
            raise ValueError(f"filters must be divisible by 4, got {self.filters}")
        bn_axis_name = self.bn_axis_name or None
        common = dict(bn_momentum=self.bn_momentum, dtype=self.dtype, bn_axis_name=bn_axis_name)
        cell_cls = nn.remat(Cell, static_argnums=(3,)) if self.remat else Cell
        keep_prob = drop_path_keep_prob(self.drop_path_keep_prob, progress) if self.drop_path_keep_prob < 1 else None

        x = images.astype(self.dtype)
        x = nn.Conv(
            self.stem_filters, (3, 3), strides=(2, 2), padding="VALID", use_bias=False, dtype=self.dtype,
            param_dtype=jnp.float32, name="stem_conv",
        )(x)  # fmt: skip
        x = batch_norm(
            train, momentum=self.bn_momentum, use_scale=True, dtype=self.dtype, name="stem_bn", axis_name=bn_axis_name
        )(x)
        outputs_so_far: list[jax.Array | None] = [None, x]
        scale = 1.0 / 2**NUM_STEM_CELLS
        for i in range(NUM_STEM_CELLS):
            cell = cell_cls(spec=self.genotype.reduction, filters=int(self.filters * scale), stride=2,
                            name=f"stem_cell_{i}", **common)  # fmt: skip
            x = cell(x, outputs_so_far[-2], train, keep_prob)
            outputs_so_far.append(x)
            scale *= 2

        reductions = reduction_indices(self.num_cells)
        result: dict[str, jax.Array] = {}
        scale = 1.0
        for i in range(self.num_cells):
            if i in reductions:
                scale *= 2
                cell = cell_cls(spec=self.genotype.reduction, filters=int(self.filters * scale), stride=2,
                                name=f"reduction_cell_{reductions.index(i)}", **common)  # fmt: skip
                x = cell(x, outputs_so_far[-2], train, keep_prob)
                outputs_so_far.append(x)
            cell = cell_cls(spec=self.genotype.normal, filters=int(self.filters * scale), stride=1,
                            name=f"cell_{i}", **common)  # fmt: skip
            x = cell(x, outputs_so_far[-2], train, keep_prob)
            if self.aux_head and i == reductions[1] - 1 and (train or self.is_initializing()):
                aux = AuxHead(num_classes=self.num_classes, scale=self.aux_scale, name="aux_head", **common)(x, train)
                if train:
                    result["aux_logits"] = aux.astype(jnp.float32)
            outputs_so_far.append(x)

        features = jnp.mean(nn.relu(x).astype(jnp.float32), axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        result["logits"] = logits.astype(jnp.float32)
        result["features"] = features
        return result
