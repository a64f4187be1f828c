"""Optimisers as the papers and the tensorflow/tpu recipes define them.

SGD (optionally Nesterov) with the learning rate applied after momentum, as TF's MomentumOptimizer
does; TF1 RMSProp (mean square starts at 1, the learning-rate-scaled step lives in the momentum
buffer, epsilon inside the square root), which optax's `rmsprop` does not reproduce; weight decay as
L2 on the gradient or decoupled (lr * wd * w, after momentum); an optional frozen backbone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


class Tf1RmsPropState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # optax's name for it (ScaleByRmsState); shadows tuple.count
    mean_square: Any
    momentum: Any


def scale_by_tf1_rmsprop(
    learning_rate: Callable, decay: float = 0.9, momentum: float = 0.9, epsilon: float = 1.0
) -> optax.GradientTransformation:
    """TF1 `tf.train.RMSPropOptimizer`: ms <- decay*ms + (1-decay)*g^2 (ms starts at 1);
    mom <- momentum*mom + lr_t * g / sqrt(ms + eps); the returned update is +mom (negate afterwards)."""

    def init_fn(params):
        return Tf1RmsPropState(
            count=jnp.zeros([], jnp.int32),
            mean_square=jax.tree.map(jnp.ones_like, params),
            momentum=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(updates, state, params=None):
        del params
        lr = learning_rate(state.count)
        ms = jax.tree.map(lambda s, g: decay * s + (1.0 - decay) * jnp.square(g), state.mean_square, updates)
        mom = jax.tree.map(
            lambda m, g, s: momentum * m + lr * g * jax.lax.rsqrt(s + epsilon), state.momentum, updates, ms
        )
        return mom, Tf1RmsPropState(count=optax.safe_increment(state.count), mean_square=ms, momentum=mom)

    return optax.GradientTransformation(init_fn, update_fn)


def decay_mask(params: Any) -> Any:
    """Weight decay on kernels only (ndim > 1): not on biases or BatchNorm scale/offset."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def trainable_labels(params: Any, freeze_backbone: bool) -> Any:
    """'train' / 'frozen' per parameter; with a frozen backbone only params['head'] trains."""
    if not freeze_backbone:
        return _fill(params, "train")
    return {k: _fill(v, "train" if k == "head" else "frozen") for k, v in params.items()}


def _fill(tree: Any, value: str) -> Any:
    """`tree` with every leaf replaced by `value`."""
    return jax.tree.map(lambda _: value, tree)


OPTIMIZERS = ("sgd", "rmsprop", "adam")
WEIGHT_DECAY_MODES = ("l2", "decoupled")


def build_optimizer(config: ml_collections.ConfigDict, schedule: Callable) -> optax.GradientTransformation:
    """The optimiser named by `config.optimizer` with the configured weight decay, over all params
    (or over params['head'] only when `config.freeze_backbone`)."""
    wd = float(config.weight_decay)
    if config.weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {config.weight_decay_mode!r}")
    l2 = [optax.add_decayed_weights(wd, decay_mask)] if wd and config.weight_decay_mode == "l2" else []
    decoupled = wd and config.weight_decay_mode == "decoupled"
    if config.optimizer == "sgd":
        parts = [
            *l2,
            optax.trace(decay=float(config.momentum), nesterov=bool(config.nesterov)),
            *([optax.add_decayed_weights(wd, decay_mask)] if decoupled else []),
            optax.scale_by_learning_rate(schedule),
        ]
    elif config.optimizer == "rmsprop":
        parts = [
            *l2,
            scale_by_tf1_rmsprop(
                schedule, float(config.rmsprop_decay), float(config.momentum), float(config.rmsprop_epsilon)
            ),
            *([optax.add_decayed_weights(lambda count: wd * schedule(count), decay_mask)] if decoupled else []),
            optax.scale(-1.0),
        ]
    elif config.optimizer == "adam":  # short CPU demos learn far faster with it than with SGD
        parts = [
            *l2,
            optax.scale_by_adam(),
            *([optax.add_decayed_weights(wd, decay_mask)] if decoupled else []),
            optax.scale_by_learning_rate(schedule),
        ]
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    tx = optax.chain(*parts)
    if config.freeze_backbone:
        tx = optax.multi_transform(
            {"train": tx, "frozen": optax.set_to_zero()},
            lambda params: trainable_labels(params, True),
        )
    return tx
