"""The one train step, written once; `parallel` runs it under `jax.pmap` or `jax.jit` over a Mesh.

Under pmap the step sees its device's share of the batch and averages gradients, metrics and
BatchNorm statistics over `axis_name`; under jit it sees the global batch and XLA inserts the
collectives. With the same data and seed both give the same parameters (dropout masks aside: the
per-device key is fold_in(step_key, device index) under pmap, one global draw under jit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from data import augment
from models.registry import ModelOutputs
from trainer import losses
from trainer.state import TrainState, ema_decay_at, update_ema

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _images(batch: Batch, key: str) -> jax.Array:
    """The batch's images as the models take them: uint8 ones (the training pipeline's, a quarter of
    the bytes to move to the device) mapped to float32 [-1, 1] here, on the device."""
    images = batch[key]
    return augment.to_float(images) if images.dtype == jnp.uint8 else images


def _freeze_backbone(params: dict) -> dict:
    return {k: v if k == "head" else jax.tree.map(jax.lax.stop_gradient, v) for k, v in params.items()}


def make_train_step(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    schedule: Callable,
    axis_name: str | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Returns step(state, batch) -> (state, metrics); `axis_name` set means "inside pmap"."""
    kind = config.multi_label_loss
    smoothing = float(config.label_smoothing)
    aux_weight = float(config.aux_loss_weight)
    ema_decay = float(config.ema_decay)
    frozen = bool(config.freeze_backbone)
    use_weights = bool(config.use_example_weights)
    contrastive = config.get("objective", "supervised") == "contrastive"
    temperature = float(config.get("contrastive_temperature", 0.2))

    def mean_over_devices(tree):
        return jax.lax.pmean(tree, axis_name) if axis_name else tree

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        key = jax.random.fold_in(state.rng, state.step)
        if axis_name:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        dropout_key, drop_path_key = jax.random.split(key)
        weights = batch.get("weight") if use_weights else None

        def loss_fn(params):
            variables = {"params": _freeze_backbone(params) if frozen else params, "batch_stats": state.batch_stats}
            rngs = {"dropout": dropout_key, "drop_path": drop_path_key}
            if frozen:
                outputs = model.apply(variables, _images(batch, "image"), train=False, rngs=rngs)
                new_stats = state.batch_stats
            else:
                outputs, updates = model.apply(
                    variables, _images(batch, "image"), train=True, rngs=rngs, mutable=["batch_stats"]
                )
                new_stats = updates.get("batch_stats", state.batch_stats)
            outputs = cast(ModelOutputs, outputs)
            if contrastive:  # keys: the momentum encoder (the weight EMA) on the second view
                key_variables = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
                key_outputs = cast(ModelOutputs, model.apply(key_variables, _images(batch, "image2"), train=False))
                keys = jax.lax.stop_gradient(key_outputs["logits"])
                per_pair, hit = losses.info_nce(outputs["logits"], keys, temperature)
                return losses.weighted_mean(per_pair, weights), (hit.astype(jnp.float32), new_stats)
            per_example = losses.per_example_loss(
                outputs["logits"], batch["labels"], kind=kind, label_smoothing=smoothing
            )
            loss = losses.weighted_mean(per_example, weights)
            if aux_weight and "aux_logits" in outputs:
                aux = losses.per_example_loss(
                    outputs["aux_logits"], batch["labels"], kind=kind, label_smoothing=smoothing
                )
                loss = loss + aux_weight * losses.weighted_mean(aux, weights)
            return loss, (losses.top1_correct(outputs["logits"], batch["labels"]).astype(jnp.float32), new_stats)

        (loss, (correct, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = mean_over_devices(grads)
        new_stats = mean_over_devices(new_stats)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
        if ema_decay:
            decay = ema_decay_at(ema_decay, state.step)
            new_state = new_state.replace(
                ema_params=update_ema(state.ema_params, params, decay),
                ema_batch_stats=update_ema(state.ema_batch_stats, new_stats, decay),
            )
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(correct),  # contrastive: the own key ranked first
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        }
        return new_state, mean_over_devices(metrics)

    return step
