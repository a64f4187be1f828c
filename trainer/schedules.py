"""Learning-rate schedule and training durations (steps, or epochs of the training records)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int, end: float = 0.0) -> Callable:
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to `end` at `total_steps`.

    The papers' schedule (Ngiam et al., Kornblith et al.); written out rather than taken from optax so
    that its values at the key steps are this file's definition.
    """
    warmup = max(int(warmup_steps), 0)
    decay = max(int(total_steps) - warmup, 1)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = peak * t / max(warmup, 1)
        progress = jnp.clip((t - warmup) / decay, 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(t < warmup, warm, cosine)

    return schedule


def steps_per_epoch(num_records: int, global_batch_size: int) -> int:
    return max(math.ceil(num_records / global_batch_size), 1)


def resolve_steps(config: ml_collections.ConfigDict, num_records: int) -> tuple[int, int]:
    """(total_steps, warmup_steps) from `steps`/`warmup_steps`, or from epochs when those are 0."""
    per_epoch = num_records / config.global_batch_size
    total = int(config.steps) or math.ceil(float(config.epochs) * per_epoch)
    if total <= 0:
        raise ValueError("set config.steps or config.epochs to a positive value")
    warmup = int(config.warmup_steps) or math.ceil(float(config.warmup_epochs) * per_epoch)
    if warmup >= total:
        raise ValueError(f"warm-up ({warmup} steps) must be shorter than training ({total} steps)")
    return total, warmup


def resolve_bn_momentum(config: ml_collections.ConfigDict, num_records: int) -> float | None:
    """BatchNorm momentum: Kornblith et al.'s max(1 - 10/s, 0.9) for "auto"; None keeps the model's."""
    value = config.bn_momentum
    if value == "model":
        return None
    if value == "auto":
        return max(1.0 - 10.0 / steps_per_epoch(num_records, config.global_batch_size), 0.9)
    return float(value)
