"""The train state: everything a step reads and writes, and everything a checkpoint must hold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step, weights, BatchNorm statistics, optimiser state, weight EMA and the base RNG key.

    `ema_params`/`ema_batch_stats` are empty dicts when the EMA is off (ema_decay == 0), so a
    disabled EMA costs no memory. `rng` is the run's base key; step t uses fold_in(rng, t).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any
    rng: jax.Array

    if TYPE_CHECKING:  # added by flax.struct.dataclass at run time, invisible to the type checker

        def replace(self, **updates: Any) -> TrainState: ...


def create_state(variables: dict, tx: optax.GradientTransformation, rng: jax.Array, use_ema: bool) -> TrainState:
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731 (distinct buffers from params)
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=copy(params) if use_ema else {},
        ema_batch_stats=copy(batch_stats) if use_ema else {},
        rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
    )


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """TF's ExponentialMovingAverage with num_updates: min(decay, (1 + t) / (10 + t)), so the average
    is not dominated by the random initial weights early in training."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def update_ema(ema: Any, new: Any, decay: jax.Array) -> Any:
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, new)


def eval_variables(state: TrainState, use_ema: bool) -> dict:
    """The variables to evaluate or export: EMA ones when asked and present."""
    if use_ema and state.ema_params:
        return {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
    return {"params": state.params, "batch_stats": state.batch_stats}
