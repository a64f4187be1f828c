"""Importance weights w(y) = Pt(y) / Ps(y) (Ngiam et al. 2018, section 3.3).

Pt(y) is the mean over TARGET images of softmax(logits / T) of the source model, computed by one
sharded forward pass; target labels are never read (this module does not accept them). Ps(y) is
the fraction of source examples that carry label y.

Multi-label sources (JFT: about 1.26 labels per image). Ps(y) = n_y / N with n_y the number of
examples CARRYING y and N the number of examples, so sum(Ps) > 1; this is the paper's definition
(the share of images that show y) and keeps w comparable with the single-label case.
Two per-example rules follow from the labels' weights:

- the example's importance weight (written as `image/weight`): `"max"` (default: the weight of its
  most over-represented-in-target label, which is also the rate it is sampled at), `"mean"`, or
  `"first"` (its first listed label's weight);
- its attribution for planning: every example is attributed to exactly ONE label, the one among its
  labels with the largest w (ties: the smallest label index), so attributed counts sum to N and a
  per-label plan applies to disjoint sets of examples. Plans record both raw and attributed counts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from data import atomic

EXAMPLE_WEIGHT_RULES = ("max", "mean", "first")
_MAX_IN_FLIGHT = 3  # forward passes dispatched ahead of the host reading their sums


@functools.lru_cache(maxsize=4)
def _masked_sums_program(apply_fn: Callable[[Any, Any], Any], num_labels: int, temperature: float) -> Callable:
    """The jitted per-batch sums, built once per (apply_fn, num_labels, temperature): a second pass
    with the same model function reuses the compiled program instead of tracing a new closure."""
    import jax
    import jax.numpy as jnp

    from trainer.programs import forward_compiler_options

    @functools.partial(jax.jit, compiler_options=forward_compiler_options())
    def masked_sums(variables, images, mask):
        logits = apply_fn(variables, images).astype(jnp.float32)
        if logits.shape[-1] != num_labels:
            raise ValueError(f"model gives {logits.shape[-1]} logits, expected num_labels={num_labels}")
        probs = jax.nn.softmax(logits / temperature, axis=-1)
        weights = mask.astype(jnp.float32)
        return jnp.sum(probs * weights[:, None], axis=0), jnp.sum(weights)

    return masked_sums


def target_label_distribution(
    apply_fn: Callable[[Any, Any], Any],
    variables: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    num_labels: int,
    temperature: float = 2.0,
    mesh: Any = None,
) -> np.ndarray:
    """Pt: masked mean over target images of softmax(apply_fn(variables, images) / temperature).

    `batches` yields this process's part of each global batch (`image`, `mask`; padded examples have
    mask False). The batch is sharded over the mesh's "data" axis (all devices of all processes by
    default); the jitted step sums over the GLOBAL batch, so its replicated result is the same on
    every process and so is the returned Pt. Sums are accumulated in float64 on the host.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if mesh is None:
        mesh = Mesh(np.array(jax.devices()), ("data",))
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    variables = jax.device_put(variables, replicated)
    local_devices = int(np.prod(mesh.devices.shape)) // jax.process_count()

    masked_sums = _masked_sums_program(apply_fn, int(num_labels), float(temperature))
    total = np.zeros(num_labels, np.float64)
    count = 0.0
    pending: list = []  # device results not yet read; reading one is a host sync, so only old ones are

    def read_oldest() -> None:
        nonlocal count
        sums, n = jax.device_get(pending.pop(0))
        total[:] += np.asarray(sums, np.float64)
        count += float(n)

    for batch in batches:
        images = np.asarray(batch["image"], np.float32)
        mask = np.asarray(batch["mask"], bool)
        pad = (-images.shape[0]) % local_devices  # device shards must be equal: pad, masked out
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            mask = np.concatenate([mask, np.zeros(pad, bool)])
        pending.append(
            masked_sums(
                variables,
                jax.make_array_from_process_local_data(data_sharding, images),
                jax.make_array_from_process_local_data(data_sharding, mask),
            )
        )
        if len(pending) > _MAX_IN_FLIGHT:  # waits only when the device is this many batches behind
            read_oldest()
    while pending:
        read_oldest()
    if count == 0:
        raise ValueError("no unmasked target images: Pt is undefined")
    return total / count


def importance_weights(
    pt: np.ndarray, label_counts: np.ndarray, num_examples: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Ps, w, excluded): Ps = count / N, w = Pt / Ps; labels with no source example are excluded (w = 0).

    N is the number of source EXAMPLES, so for a multi-label source Ps sums to more than 1.
    """
    pt = np.asarray(pt, np.float64)
    counts = np.asarray(label_counts, np.float64)
    if pt.shape != counts.shape:
        raise ValueError(f"pt has shape {pt.shape}, label_counts {counts.shape}")
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    ps = counts / float(num_examples)
    excluded = counts <= 0
    w = np.divide(pt, ps, out=np.zeros_like(pt), where=~excluded)
    return ps, w, excluded


@dataclasses.dataclass(frozen=True)
class ImportanceWeights:
    """Pt, Ps and w per source label, computed ONCE (the weights stage) and read by every later stage.

    Plans, written records and the report take w from here rather than recomputing it from Pt, so
    they cannot disagree on N (the number of source examples, not the sum of label counts).
    """

    label_names: list[str]
    pt: np.ndarray
    ps: np.ndarray
    w: np.ndarray
    excluded: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def compute(
        cls, label_names: Sequence[str], pt: np.ndarray, label_counts: np.ndarray, num_examples: int
    ) -> ImportanceWeights:
        """w = Pt / Ps with Ps = count / num_examples (`importance_weights`)."""
        ps, w, excluded = importance_weights(pt, label_counts, num_examples)
        names = list(label_names)
        return cls(names, np.asarray(pt, np.float64), ps, w, [names[i] for i in np.flatnonzero(excluded)])

    def to_json(self) -> dict:
        return {
            "label_names": self.label_names,
            "pt": self.pt.tolist(),
            "ps": self.ps.tolist(),
            "w": self.w.tolist(),
            "excluded": self.excluded,
        }

    def write(self, path: str) -> None:
        atomic.write_json(path, self.to_json())

    @classmethod
    def read(cls, path: str) -> ImportanceWeights:
        raw = atomic.read_json(path)
        arrays = {k: np.asarray(raw[k], np.float64) for k in ("pt", "ps", "w")}
        return cls(list(raw["label_names"]), excluded=list(raw.get("excluded", [])), **arrays)


def _segments(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Example index of every label entry of a CSR label list, and each example's label count."""
    lengths = np.diff(offsets)
    return np.repeat(np.arange(len(lengths)), lengths), lengths


@functools.lru_cache(maxsize=4)
def _preference(label_weights: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Labels by w descending, then index, and each label's place in that order (read-only). Cached:
    a write attributes every shard's examples under the same weights, and this sort of all labels
    cost more than the attribution itself (18k labels, 2.5 ms, twice per shard)."""
    w = np.frombuffer(label_weights, np.float64)
    preference = np.lexsort((np.arange(len(w)), -w))
    rank = np.empty(len(w), np.int64)
    rank[preference] = np.arange(len(w))
    preference.flags.writeable = rank.flags.writeable = False
    return preference, rank


def attribute_examples(offsets: np.ndarray, labels: np.ndarray, label_weights: np.ndarray) -> np.ndarray:
    """Label each example is attributed to for planning: its label of largest w (ties: smallest index).

    `labels[offsets[i]:offsets[i+1]]` are example i's labels. Examples without labels get -1.
    """
    offsets = np.asarray(offsets, np.int64)
    has = offsets[1:] > offsets[:-1]
    attributed = np.full(len(offsets) - 1, -1, np.int64)
    if has.any():
        preference, rank = _preference(np.asarray(label_weights, np.float64).tobytes())
        # Per example, the best-ranked of its labels: one linear pass (segments are contiguous).
        attributed[has] = preference[np.minimum.reduceat(rank[labels], offsets[:-1][has])]
    return attributed


def example_weights(
    offsets: np.ndarray, labels: np.ndarray, label_weights: np.ndarray, rule: str = "max"
) -> np.ndarray:
    """Per-example importance weight from its labels' weights: "max", "mean" or "first" (see module doc)."""
    if rule not in EXAMPLE_WEIGHT_RULES:
        raise ValueError(f"unknown example weight rule {rule!r}; known: {EXAMPLE_WEIGHT_RULES}")
    owner, lengths = _segments(offsets)
    entry = np.asarray(label_weights, np.float64)[labels]
    result: np.ndarray = np.zeros(len(lengths), np.float64)
    has = lengths > 0
    if rule == "max":
        np.maximum.at(result, owner, entry)  # weights are >= 0, so 0 is a neutral start
    elif rule == "mean":
        result = np.bincount(owner, weights=entry, minlength=len(lengths))
        result[has] = result[has] / lengths[has]
    else:
        result[has] = entry[offsets[:-1][has]]
    return result
