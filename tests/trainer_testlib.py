"""Shared by the trainer tests: a small CNN with the models' interface, shard sets and an in-memory
iterator. The CNN follows the real models' contract (dict output with logits/features/aux_logits,
a "head" and an "aux_head" submodule, batch_stats, dropout) at a size that compiles in seconds."""

from __future__ import annotations

import io
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from data import manifest, records


class SmallCNN(nn.Module):
    num_classes: int = 4
    width: int = 8
    aux_head: bool = False
    dropout_rate: float = 0.0
    bn_momentum: float = 0.9
    bn_axis_name: str | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        x = images.astype(self.dtype)
        for i, stride in enumerate((2, 2)):
            x = nn.Conv(
                self.width * (i + 1),
                (3, 3),
                strides=(stride, stride),
                use_bias=False,
                dtype=self.dtype,
                name=f"conv{i}",
            )(x)
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=1e-3,
                axis_name=(self.bn_axis_name or None) if train else None,
                dtype=self.dtype,
                name=f"bn{i}",
            )(x)
            x = nn.relu(x)
        outputs = {}
        if self.aux_head and (train or self.is_initializing()):
            aux = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
            aux_logits = nn.Dense(self.num_classes, name="aux_head")(aux)
            if train:
                outputs["aux_logits"] = aux_logits
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
        outputs["logits"] = nn.Dense(self.num_classes, name="head")(h).astype(jnp.float32)
        outputs["features"] = features
        return outputs


def class_image(label: int, rng: np.random.RandomState, size: int = 20) -> bytes:
    """A noisy image whose dominant colour channel and brightness encode the class (learnable)."""
    base = np.full((size, size, 3), 60, np.float32)
    base[..., label % 3] = 120 + 60 * (label // 3)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(
    directory: str, n: int, num_classes: int = 4, *, num_shards: int = 2, seed: int = 0, size: int = 20
) -> str:
    """n single-label examples over `num_shards` shards, manifest last."""
    rng = np.random.RandomState(seed)
    os.makedirs(directory, exist_ok=True)
    files, counts = [], []
    labels = [int(i % num_classes) for i in range(n)]
    for s in range(num_shards):
        path = os.path.join(directory, f"shard-{s:05d}-of-{num_shards:05d}.tfrecord")
        ids = range(s, n, num_shards)
        counts.append(
            records.write_tfrecord(
                path,
                [
                    records.encode_example(
                        records.Example(class_image(labels[i], rng, size), (labels[i],), f"id{i}".encode(), None)
                    )
                    for i in ids
                ],
            )
        )
        files.append(path)
    label_counts = [labels.count(k) for k in range(num_classes)]
    manifest.write_manifest(directory, files, counts, [f"c{k}" for k in range(num_classes)], label_counts)
    return directory


class MemoryIterator:
    """Cycles through fixed arrays in order; get_state/set_state like grain's iterators."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        num_classes: int,
        weights: np.ndarray | None = None,
    ):
        self.images, self.labels, self.batch_size, self.num_classes = images, labels, batch_size, num_classes
        self.weights = np.ones(len(labels), np.float32) if weights is None else weights
        self.position = 0

    def __iter__(self) -> MemoryIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx = np.arange(self.position, self.position + self.batch_size) % len(self.labels)
        self.position += self.batch_size
        y = self.labels[idx]
        return {
            "image": self.images[idx],
            "label": y.astype(np.int32),
            "labels": np.eye(self.num_classes, dtype=np.float32)[y],
            "weight": self.weights[idx],
        }

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])


def random_data(n: int = 64, size: int = 16, num_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, num_classes, n)
    images = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    images[np.arange(n), :, :, labels % 3] += 0.5  # a learnable signal
    return images, labels


def tiny_config(config, **overrides):
    """Shrinks a trainer config to test size."""
    config.global_batch_size = 16
    config.image_size = 16
    config.log_every_steps = 5
    config.checkpoint_every_steps = 5
    config.eval_batch_size = 16
    for key, value in overrides.items():
        config[key] = value
    return config
