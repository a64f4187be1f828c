"""Model registry: a config's `name` picks the model class; the rest of the config sets its fields."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import ml_collections

from models import amoeba_net, inception_v3, small_cnn
from models.amoeba_net import STEM_FILTERS, AmoebaNet
from models.genotypes import GENOTYPES
from models.inception_v3 import InceptionV3
from models.layers import resolve_dtype, scaled_filters
from models.small_cnn import SmallCNN

# What every model returns: "logits", "features" and, with an auxiliary head, "aux_logits". Flax
# types `Module.apply` as returning Any or (Any, variables), so callers cast its result to this.
ModelOutputs = dict[str, jax.Array]


def _common(config: ml_collections.ConfigDict) -> dict:
    """Fields every model takes the same way."""
    return dict(
        num_classes=config.num_classes,
        bn_momentum=config.bn_momentum,
        dropout_rate=config.dropout_rate,
        dtype=resolve_dtype(config.dtype),
        remat=config.remat,
        bn_axis_name=config.get("bn_axis_name") or None,
    )


def _inception_v3(config: ml_collections.ConfigDict) -> nn.Module:
    return InceptionV3(
        width_multiplier=config.width_multiplier, aux_head=config.aux_head, bn_scale=config.bn_scale, **_common(config)
    )


def _amoeba_net(config: ml_collections.ConfigDict) -> nn.Module:
    filters = config.filters
    if config.width_multiplier != 1.0:
        filters = max(4, round(config.filters * config.width_multiplier / 4) * 4)
    return AmoebaNet(
        genotype=GENOTYPES[config.name],
        num_cells=config.num_cells,
        filters=filters,
        stem_filters=scaled_filters(STEM_FILTERS, config.width_multiplier),
        aux_head=config.aux_head,
        aux_scale=config.aux_scale,
        drop_path_keep_prob=config.drop_path_keep_prob,
        **_common(config),
    )


def _small_cnn(config: ml_collections.ConfigDict) -> nn.Module:
    if config.aux_head:
        raise ValueError("small_cnn has no auxiliary head; set model.aux_head=False")
    return SmallCNN(
        stage_filters=tuple(config.stage_filters),
        convs_per_stage=config.convs_per_stage,
        width_multiplier=config.width_multiplier,
        **_common(config),
    )


_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict], nn.Module]] = {
    "inception_v3": _inception_v3,
    **{name: _amoeba_net for name in GENOTYPES},  # amoeba_net_a/b/d share one builder
    "small_cnn": _small_cnn,
}


def min_image_size(name: str) -> int:
    """Smallest input resolution the model takes (Inception-v3's VALID convolutions need 75 px)."""
    return inception_v3.MIN_IMAGE_SIZE if name == "inception_v3" else 1


def model_names() -> list[str]:
    """Names a model config may use."""
    return sorted(_BUILDERS)


def block_names(config: ml_collections.ConfigDict) -> list[str]:
    """Names of the model's top-level parameter groups in network order (aux_head included)."""
    if config.name == "inception_v3":
        names = list(inception_v3.BLOCK_NAMES)
        return names[: names.index("Mixed_6e") + 1] + ["aux_head"] + names[names.index("Mixed_7a") :] + ["head"]
    if config.name in GENOTYPES:
        return amoeba_net.block_names(config.num_cells)
    if config.name == "small_cnn":
        return small_cnn.block_names(len(config.stage_filters))
    raise ValueError(f"unknown model {config.name!r}; known: {model_names()}")


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """Builds the Flax module a model config names (see configs/models/)."""
    if config.name not in _BUILDERS:
        raise ValueError(f"unknown model {config.name!r}; known: {model_names()}")
    return _BUILDERS[config.name](config)
