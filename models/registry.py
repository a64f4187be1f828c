"""Model registry: a config's `name` picks the model class; the rest of the config sets its fields."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import ml_collections

from models.inception_v3 import InceptionV3
from models.layers import resolve_dtype


def _inception_v3(config: ml_collections.ConfigDict) -> nn.Module:
    return InceptionV3(
        num_classes=config.num_classes,
        width_multiplier=config.width_multiplier,
        aux_head=config.aux_head,
        bn_scale=config.bn_scale,
        bn_momentum=config.bn_momentum,
        dropout_rate=config.dropout_rate,
        dtype=resolve_dtype(config.dtype),
        remat=config.remat,
    )


_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict], nn.Module]] = {
    "inception_v3": _inception_v3,
}


def model_names() -> list[str]:
    """Names a model config may use."""
    return sorted(_BUILDERS)


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """Builds the Flax module a model config names (see configs/models/)."""
    if config.name not in _BUILDERS:
        raise ValueError(f"unknown model {config.name!r}; known: {model_names()}")
    return _BUILDERS[config.name](config)
