"""Initialising from another run (`init_from`): fine-tuning, sequential pre-training, continuing on a
filtered subset. Separate from resuming: it reads another work dir's weights and starts at step 0."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from trainer import checkpoint

HEADS = ("head", "aux_head")


def _shapes(tree: Any) -> Any:
    return jax.tree.map(np.shape, tree)


REINIT_HEAD_CHOICES = ("auto", "always", "never")


def merge_pretrained(fresh: dict, loaded: dict, reinit_head: str) -> tuple[dict, list[str]]:
    """Backbone from `loaded`, heads fresh when `reinit_head` is "always" or ("auto" and their shapes
    differ). Returns (variables, names of re-initialised heads). Backbone shapes must match."""
    if reinit_head not in REINIT_HEAD_CHOICES:
        raise ValueError(f"reinit_head must be one of {REINIT_HEAD_CHOICES}, got {reinit_head!r}")
    fresh_params, loaded_params = fresh["params"], loaded["params"]
    reinit = []
    for name in HEADS:
        if name not in fresh_params:
            continue
        differs = name not in loaded_params or _shapes(fresh_params[name]) != _shapes(loaded_params[name])
        if reinit_head == "always" or (reinit_head == "auto" and differs):
            reinit.append(name)
        elif differs:
            raise ValueError(f"init_from: '{name}' shapes differ and reinit_head='never'")
    out = {}
    for collection in ("params", "batch_stats"):
        merged = {}
        for name, value in fresh.get(collection, {}).items():
            if name in reinit:
                merged[name] = value
                continue
            source = loaded.get(collection, {}).get(name)
            if source is None or _shapes(source) != _shapes(value):
                raise ValueError(f"init_from: {collection}['{name}'] is missing or has other shapes in the source run")
            merged[name] = jax.tree.map(lambda new, old: np.asarray(old, dtype=np.asarray(new).dtype), value, source)
        out[collection] = merged
    return out, reinit


def load_pretrained(init_from: str, fresh: dict, config: ml_collections.ConfigDict) -> tuple[dict, list[str]]:
    """Reads `init_from`'s latest checkpoint and merges it into the freshly initialised variables."""
    loaded = checkpoint.load_variables(init_from, use_ema=bool(config.init_from_ema))
    return merge_pretrained(fresh, loaded, config.reinit_head)
