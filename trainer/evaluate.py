"""Evaluation of a trained work dir: top-1 and mean per-class accuracy, and penultimate features.

Batches come from `data.pipeline.eval_batches`, which pads each process's last batches and marks
the padding in `mask`; sums over the global (mesh-sharded) batch then count every example exactly
once across devices and processes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from data import manifest
from models.registry import ModelOutputs
from trainer import checkpoint
from trainer.parallel import DATA_AXIS, data_mesh
from trainer.programs import forward_compiler_options
from trainer.train import prepare_model_config


def _put(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _fetch(x: jax.Array) -> np.ndarray:
    """A replicated global array's value on this process."""
    return np.asarray(x.addressable_data(0))


def accuracy_from_counts(correct: np.ndarray, count: np.ndarray) -> dict[str, float]:
    """top-1 over all examples, and the mean over classes that have examples of per-class accuracy."""
    present = count > 0
    return {
        "top1": float(correct.sum() / max(count.sum(), 1)),
        "mean_per_class": float(np.mean(correct[present] / count[present])) if present.any() else 0.0,
        "num_examples": int(count.sum()),
    }


def _place(variables: Mapping[str, Any]) -> tuple[Any, NamedSharding, NamedSharding]:
    """Variables replicated over the data mesh, plus the batch and replicated shardings."""
    mesh = data_mesh()
    replicated = NamedSharding(mesh, P())
    return jax.device_put(variables, replicated), NamedSharding(mesh, P(DATA_AXIS)), replicated


# Programs are cached per (model, ...) so that evaluating many runs of one job traces the model once.
@functools.lru_cache(maxsize=8)
def _counts_program(model: nn.Module, num_classes: int):
    """(variables, batch) -> per-class (correct, count) over the batch's unmasked examples."""

    @functools.partial(jax.jit, compiler_options=forward_compiler_options())
    def counts(variables, batch):
        logits = cast(ModelOutputs, model.apply(variables, batch["image"], train=False))["logits"]
        predicted = jnp.argmax(logits, axis=-1)
        hit = jnp.take_along_axis(batch["labels"], predicted[:, None], axis=-1)[:, 0] > 0
        valid = batch["mask"].astype(jnp.int32)
        classes = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.int32) * valid[:, None]
        return jnp.sum(classes * hit[:, None], axis=0), jnp.sum(classes, axis=0)

    return counts


@functools.lru_cache(maxsize=8)
def _features_program(model: nn.Module, replicated: NamedSharding):
    """(variables, batch) -> (features, mask, label), gathered onto every device."""

    @functools.partial(jax.jit, compiler_options=forward_compiler_options())
    def forward(variables, batch):
        features = cast(ModelOutputs, model.apply(variables, batch["image"], train=False))["features"]
        gathered = (features.astype(jnp.float32), batch["mask"], batch["label"])
        return jax.lax.with_sharding_constraint(gathered, replicated)

    return forward


def evaluate_batches(
    model: nn.Module, variables: Mapping[str, Any], batches: Iterable[dict[str, np.ndarray]], num_classes: int
) -> dict[str, float]:
    """Accuracy of `variables` over `batches` (with `mask`); a class is an example's first label, a
    prediction is correct when it is any of the example's labels."""
    variables, batch_sharding, _ = _place(variables)
    counts = _counts_program(model, num_classes)
    correct = np.zeros(num_classes, np.int64)
    count = np.zeros(num_classes, np.int64)
    for batch in batches:
        c, n = counts(variables, _put(batch, batch_sharding))
        correct += _fetch(c)
        count += _fetch(n)
    return accuracy_from_counts(correct, count)


def features_of_batches(
    model: nn.Module, variables: Mapping[str, Any], batches: Iterable[dict[str, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and first labels of every real (unmasked) example, in order."""
    variables, batch_sharding, replicated = _place(variables)
    forward = _features_program(model, replicated)
    feats, labels = [], []
    for batch in batches:
        features, mask, label = (_fetch(x) for x in forward(variables, _put(batch, batch_sharding)))
        feats.append(features[mask])
        labels.append(label[mask])
    return np.concatenate(feats), np.concatenate(labels)


def _setup(config, model_config, workdir, data_dir):
    from data import pipeline
    from models.registry import build_model

    shards = manifest.load_manifest(data_dir, verify=False)
    model_config = prepare_model_config(
        config, model_config, num_classes=shards.num_labels, num_records=shards.num_records
    )
    model = build_model(model_config)
    variables = checkpoint.load_variables(workdir, use_ema=bool(config.eval_with_ema))
    batches = pipeline.eval_batches(
        data_dir,
        global_batch_size=int(config.eval_batch_size),
        image_size=int(config.image_size),
        num_classes=shards.num_labels,
    )
    return model, variables, batches, shards.num_labels


def evaluate(
    config: ml_collections.ConfigDict, *, model_config: ml_collections.ConfigDict, workdir: str, data_dir: str
) -> dict:
    """top1, mean_per_class, num_examples of `workdir`'s latest weights (EMA if eval_with_ema) on `data_dir`."""
    model, variables, batches, num_classes = _setup(config, model_config, workdir, data_dir)
    return evaluate_batches(model, variables, batches, num_classes)


def extract_features(
    config: ml_collections.ConfigDict, *, model_config: ml_collections.ConfigDict, workdir: str, data_dir: str
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D], labels [N]) of every example in `data_dir`, for linear probes and selection."""
    model, variables, batches, _ = _setup(config, model_config, workdir, data_dir)
    return features_of_batches(model, variables, batches)
