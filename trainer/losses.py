"""Classification losses for single- and multi-label sources, with label smoothing and example weights.

Targets come from the batch's multi-hot `labels` [B, K] (single-label data is the one-hot case).
Softmax: the target distribution is the multi-hot row normalised to sum 1, then smoothed,
(1 - eps) * t + eps / K. Sigmoid: independent per-label binary cross-entropy, targets smoothed towards
1/2, summed over labels. Each example's loss is multiplied by its importance weight (selected shards)
and averaged over the batch, so the weighted objective is an unbiased estimate of the reweighted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def soft_targets(labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Normalised multi-hot targets, smoothed; rows without labels stay uniform-smoothed zeros."""
    labels = labels.astype(jnp.float32)
    total = jnp.sum(labels, axis=-1, keepdims=True)
    targets = labels / jnp.maximum(total, 1.0)
    num_classes = labels.shape[-1]
    return (1.0 - label_smoothing) * targets + label_smoothing / num_classes


MULTI_LABEL_LOSSES = ("softmax", "sigmoid")


def per_example_loss(logits: jax.Array, labels: jax.Array, *, kind: str, label_smoothing: float) -> jax.Array:
    """Loss per example [B] in float32 for `kind` 'softmax' or 'sigmoid'."""
    logits = logits.astype(jnp.float32)
    if kind == "softmax":
        return optax.softmax_cross_entropy(logits, soft_targets(labels, label_smoothing))
    if kind == "sigmoid":
        targets = labels.astype(jnp.float32) * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)
    raise ValueError(f"multi_label_loss must be one of {MULTI_LABEL_LOSSES}, got {kind!r}")


def weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """mean(w * values) over the batch (not normalised by sum(w): keeps the estimate unbiased)."""
    if weights is None:
        return jnp.mean(values)
    return jnp.mean(values * weights.astype(jnp.float32))


def info_nce(queries: jax.Array, keys: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """MoCo's contrastive loss with the batch's other keys as negatives: per-example cross-entropy of
    softmax(q_i . k_j / T) over j against j = i (q, k L2-normalised), and whether i was the arg-max."""
    q = queries.astype(jnp.float32)
    k = keys.astype(jnp.float32)
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
    logits = q @ k.T / temperature
    own = jnp.arange(q.shape[0])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, own)
    return loss, jnp.argmax(logits, axis=-1) == own


def top1_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1.0 where the arg-max class is one of the example's labels (multi-hot), else 0.0."""
    predicted = jnp.argmax(logits, axis=-1)
    return jnp.take_along_axis(labels, predicted[:, None], axis=-1)[:, 0].astype(jnp.float32) > 0
