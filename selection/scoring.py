"""Streaming, sharded passes over the source: per-example scores on disk, then top-N or a threshold.

The example-level methods (domain classifier, k-means filtering, random) score every source example.
At JFT scale the source's features alone are terabytes, so nothing here holds the whole source:

- `score_source`: source shard s belongs to process s % P; each process streams its shards' records
  (one record decoded at a time, batches of `batch_size` images forwarded), and writes per shard
  `scores-<s>.npz` (scores, example ids, images forwarded) atomically. A shard whose file exists is
  skipped, so a killed pass resumes; every process then waits for all files (shared filesystem).
- `label_feature_sums`: the same pass accumulating per-label feature sums (Cui et al.'s class means);
  a shard file holds only the labels present in that shard.
- `select_examples`: the N best examples (largest or smallest score; ties broken by example id, so
  the result does not depend on the shard or process count) by a bounded merge, shard by shard:
  memory is O(N + one shard); or every example past a threshold. The result is the writer's example
  plan (id -> 1 copy), so every method ends in the same kind of selected shard set.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from etils import epath

from data import atomic, augment, manifest, paths, records

SCORE_NAME = "scores-{:05d}.npz"
SUMS_NAME = "label_sums-{:05d}.npz"

# images float32 [B, H, W, 3] in [-1, 1] (None when the scorer needs no pixels), ids -> scores [B]
ScoreFn = Callable[[np.ndarray | None, list[bytes]], np.ndarray]
# images -> features [B, D]
FeatureFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ShardScores:
    """Scores and ids of one source shard's records, in record order."""

    scores: np.ndarray
    id_offsets: np.ndarray
    id_blob: np.ndarray
    forwarded: int

    def ids(self) -> list[bytes]:
        blob = self.id_blob.tobytes()
        return [blob[a:b] for a, b in zip(self.id_offsets[:-1], self.id_offsets[1:], strict=True)]


def load_scores(path: str) -> ShardScores:
    with paths.np_load(path) as z:
        return ShardScores(z["scores"], z["id_offsets"], z["id_blob"], int(z["forwarded"]))


def _pack_ids(ids: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in ids], dtype=np.int64)]).astype(np.int64)
    return offsets, np.frombuffer(b"".join(ids), np.uint8)


def _examples(path: str) -> Iterator[tuple[bytes, bytes, list[int]]]:
    """(image bytes, id, labels) of each record, streamed (no whole shard in memory)."""
    proto = records.example_proto()
    for index, data in enumerate(records.iter_records(path)):
        proto.ParseFromString(data)
        feature = proto.features.feature
        if "image/id" not in feature or "image/encoded" not in feature:
            raise records.CorruptRecordError(path, index, "missing image/encoded or image/id")
        yield (
            feature["image/encoded"].bytes_list.value[0],
            feature["image/id"].bytes_list.value[0],
            list(feature["image/label"].int64_list.value),
        )


_DECODE_THREADS = 8  # PIL decodes and resizes outside the GIL: a batch's images in parallel


def _batches(path: str, image_size: int, batch_size: int, decode: bool) -> Iterator[tuple[np.ndarray | None, list]]:
    """(float images or None, [(id, labels)]) batches of one shard, in record order."""
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:

        def finish(encoded: list[bytes], meta: list) -> tuple[np.ndarray | None, list]:
            if not decode:
                return None, meta
            images = list(pool.map(lambda data: augment.eval_image(data, image_size), encoded))
            return augment.to_float(np.stack(images)), meta

        encoded, meta = [], []
        for image, example_id, labels in _examples(path):
            if decode:
                encoded.append(image)
            meta.append((example_id, labels))
            if len(meta) == batch_size:
                yield finish(encoded, meta)
                encoded, meta = [], []
        if meta:
            yield finish(encoded, meta)


def _process_split(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    return process_index, process_count


def _sharded_pass(
    source_dir: str,
    out_dir: str,
    name: str,
    per_shard: Callable[[str], dict[str, np.ndarray]],
    process_index: int | None,
    process_count: int | None,
    wait_timeout_s: float,
) -> list[str]:
    """Runs `per_shard(path)` on this process's shards not done yet; waits for every shard's file."""
    pindex, pcount = _process_split(process_index, process_count)
    source = manifest.load_manifest(source_dir, verify=False)
    files = [os.path.join(out_dir, name.format(s)) for s in range(len(source.files))]
    for s in range(pindex, len(source.files), pcount):
        if not epath.Path(files[s]).exists():
            atomic.write_npz(files[s], **per_shard(source.files[s]))
    paths.wait_for(files, wait_timeout_s)
    return files


def score_source(
    source_dir: str,
    score_fn: ScoreFn,
    out_dir: str,
    *,
    image_size: int,
    batch_size: int,
    decode: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    wait_timeout_s: float = 24 * 3600.0,
) -> list[str]:
    """One scoring pass over the source; returns every shard's score file (see the module doc).

    `decode=False` for scorers that read only ids (random selection): no image is decoded or
    forwarded, and the shard's ids are scored in one call.
    """

    def per_shard(path: str) -> dict[str, np.ndarray]:
        scores, ids, forwarded = [], [], 0
        for images, meta in _batches(path, image_size, batch_size if decode else 1 << 62, decode):
            batch_ids = [m[0] for m in meta]
            batch_scores = np.asarray(score_fn(images, batch_ids), np.float64).reshape(-1)
            if batch_scores.shape[0] != len(batch_ids):
                raise ValueError(f"score_fn returned {batch_scores.shape[0]} scores for {len(batch_ids)} examples")
            if np.isnan(batch_scores).any():
                raise ValueError(f"{path}: score_fn returned NaN")
            scores.append(batch_scores)
            ids.extend(batch_ids)
            forwarded += len(batch_ids) if decode else 0
        id_offsets, id_blob = _pack_ids(ids)
        return {
            "scores": np.concatenate(scores) if scores else np.zeros(0),
            "id_offsets": id_offsets,
            "id_blob": id_blob,
            "forwarded": np.array(forwarded, np.int64),
        }

    return _sharded_pass(source_dir, out_dir, SCORE_NAME, per_shard, process_index, process_count, wait_timeout_s)


def images_forwarded(files: list[str]) -> int:
    """Scoring cost of a pass: images forwarded through the scoring model, summed over shards."""
    total = 0
    for path in files:
        with paths.np_load(path) as z:
            total += int(z["forwarded"])
    return total


def label_feature_sums(
    source_dir: str,
    feature_fn: FeatureFn,
    out_dir: str,
    *,
    image_size: int,
    batch_size: int,
    num_labels: int,
    process_index: int | None = None,
    process_count: int | None = None,
    wait_timeout_s: float = 24 * 3600.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-label feature sums [L, D] and example counts [L] over the whole source, and images forwarded.

    An example with several labels adds to each (as `selection.emd_similarity.class_means`).
    Memory: one shard's present labels per file, [L, D] for the reduction.
    """

    def per_shard(path: str) -> dict[str, np.ndarray]:
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        forwarded = 0
        for images, meta in _batches(path, image_size, batch_size, True):
            assert images is not None  # decode=True
            features = np.asarray(feature_fn(images), np.float64)
            forwarded += len(meta)
            for row, (_, labels) in enumerate(meta):
                for label in set(labels):
                    if not 0 <= label < num_labels:
                        raise ValueError(f"{path}: label {label} not in [0, {num_labels})")
                    sums[label] = sums.get(label, 0.0) + features[row]
                    counts[label] = counts.get(label, 0) + 1
        present = np.array(sorted(sums), np.int64)
        dim = len(next(iter(sums.values()))) if sums else 0
        return {
            "labels": present,
            "sums": np.stack([sums[i] for i in present.tolist()]) if sums else np.zeros((0, dim)),
            "counts": np.array([counts[i] for i in present.tolist()], np.int64),
            "forwarded": np.array(forwarded, np.int64),
        }

    files = _sharded_pass(source_dir, out_dir, SUMS_NAME, per_shard, process_index, process_count, wait_timeout_s)
    total_sums: np.ndarray | None = None
    total_counts, forwarded = np.zeros(num_labels, np.int64), 0
    for path in files:
        with paths.np_load(path) as z:
            if len(z["labels"]):
                if total_sums is None:
                    total_sums = np.zeros((num_labels, z["sums"].shape[1]))
                total_sums[z["labels"]] += z["sums"]
                total_counts[z["labels"]] += z["counts"]
            forwarded += int(z["forwarded"])
    if total_sums is None:
        raise ValueError(f"{source_dir}: the source has no labelled examples")
    return total_sums, total_counts, forwarded


def on_local_devices(fn: Callable, variables, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """`fn(variables, images)` jitted over this process's devices (batch split across them), every batch
    padded to one size so it compiles once; returns a host function images -> numpy outputs."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = jax.local_devices()
    mesh = Mesh(np.array(devices), ("data",))
    padded = -(-batch_size // len(devices)) * len(devices)
    variables = jax.device_put(variables, NamedSharding(mesh, P()))
    batch_sharding = NamedSharding(mesh, P("data"))
    from trainer.programs import forward_compiler_options

    jitted = jax.jit(fn, compiler_options=forward_compiler_options())

    def run(images: np.ndarray) -> np.ndarray:
        n = len(images)
        if n > padded:
            raise ValueError(f"batch of {n} images exceeds batch_size {batch_size}")
        full = np.zeros((padded, *images.shape[1:]), np.float32)
        full[:n] = images
        return np.asarray(jitted(variables, jax.device_put(full, batch_sharding)))[:n]

    return run


# ----------------------------------------------------------------------------------------------
# Selection from score files


def _id_keys(scores: ShardScores) -> np.ndarray:
    """Fixed-width byte strings of the ids, for ordering ties (the exact ids are read back later)."""
    return np.array(scores.ids(), dtype=np.bytes_) if len(scores.scores) else np.zeros(0, "S1")


def select_examples(
    files: list[str],
    *,
    size: int | None = None,
    threshold: float | None = None,
    largest: bool = True,
) -> dict[bytes, int]:
    """Example plan {id: 1} of the `size` best examples, or of all with score >= (<=) `threshold`.

    `largest` True keeps the highest scores (p(target | x)), False the lowest (k-means distances).
    Ties at the cut are broken by example id (ascending). Memory: O(size + one shard's scores).
    """
    if (size is None) == (threshold is None):
        raise ValueError("give exactly one of size and threshold")
    if size is not None and size < 0:
        raise ValueError(f"size={size} must be >= 0")
    sign = -1.0 if largest else 1.0  # sort key: smaller is better
    keys = np.zeros(0)
    idkeys = np.zeros(0, "S1")
    shard_of = np.zeros(0, np.int64)
    row_of = np.zeros(0, np.int64)
    total = 0
    for s, path in enumerate(files):
        shard = load_scores(path)
        total += len(shard.scores)
        key = sign * shard.scores
        rows = np.arange(len(key))
        if threshold is not None:
            rows = rows[key <= sign * threshold]
        elif len(keys) == size and size > 0:
            rows = rows[key <= keys[-1]]  # only rows that can enter the current best `size`
        elif size == 0:
            rows = rows[:0]
        if not len(rows):
            continue
        keys = np.concatenate([keys, key[rows]])
        idkeys = np.concatenate([idkeys, _id_keys(shard)[rows]])
        shard_of = np.concatenate([shard_of, np.full(len(rows), s, np.int64)])
        row_of = np.concatenate([row_of, rows])
        order = np.lexsort((idkeys, keys))
        if size is not None:
            order = order[:size]
        keys, idkeys, shard_of, row_of = keys[order], idkeys[order], shard_of[order], row_of[order]
    if size is not None and size > total:
        raise ValueError(f"size={size} exceeds the {total} scored examples")
    plan: dict[bytes, int] = {}
    for s in np.unique(shard_of).tolist():
        ids = load_scores(files[s]).ids()
        for row in row_of[shard_of == s].tolist():
            plan[ids[row]] = 1
    if len(plan) != len(row_of):
        raise ValueError("the selected example ids are not unique across the source")
    return plan
