"""Near-duplicate removal (Ngiam et al. 2018, sec. 4.1): drop source images that are near-copies
of any target train or test image, judged by cosine similarity of CNN features.

The caller passes `features_fn(images) -> features` (typically the pre-trained model's
penultimate layer, jit-compiled); images arrive as the evaluation pipeline makes them (central
crop, float32 NHWC in [-1, 1]). Target features are held in memory (targets are small); the
source is streamed batch by batch, so memory does not grow with the corpus. Kept records are
copied byte for byte into a new shard set (same shard names), whose manifest carries the report.

Threshold: a source image is removed when its highest cosine similarity to any target image is
>= `threshold`. The paper chose a "conservative" threshold, meaning one that errs towards
removing: false positives cost a few source images, false negatives leak test images into
pre-training. DEFAULT_THRESHOLD = 0.95 removes resized/re-encoded/lightly edited copies under
penultimate CNN features; lower it (0.9, 0.85) to err further towards removal. The report's
`similarity_counts` (how many source images reach 0.80 ... 0.99) shows what a different
threshold would remove, without another pass.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np
from etils import epath

from data import manifest, paths, pipeline, records

DEFAULT_THRESHOLD = 0.95
REPORT_LEVELS = (0.8, 0.85, 0.9, 0.95, 0.99)
MAX_LISTED_IDS = 10_000

FeaturesFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class DedupReport:
    """What removal did; stored under `extra["dedup"]` of the output manifest."""

    threshold: float
    source_records: int
    removed: int
    kept: int
    target_dirs: list[str]
    similarity_counts: dict[str, int]
    removed_ids: list[str]  # the first MAX_LISTED_IDS of them


def _normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32).reshape(len(features), -1)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _feature_batches(shard_dir: str, features_fn: FeaturesFn, image_size: int, batch_size: int, num_classes: int):
    """Yields L2-normalised features of the records in file order (padding dropped)."""
    for batch in pipeline.eval_batches(
        shard_dir,
        global_batch_size=batch_size,
        image_size=image_size,
        num_classes=num_classes,
        process_index=0,
        process_count=1,
    ):
        features = _normalise(features_fn(batch["image"]))
        yield features[batch["mask"]]


def target_features(
    target_dirs: Sequence[str], features_fn: FeaturesFn, *, image_size: int, batch_size: int = 64
) -> np.ndarray:
    """[num target images, D] L2-normalised features of every target shard set."""
    parts = []
    for target in target_dirs:
        num_classes = max(1, manifest.load_manifest(target, verify=False).num_labels)
        parts.extend(_feature_batches(target, features_fn, image_size, batch_size, num_classes))
    if not parts:
        raise ValueError(f"no target images in {list(target_dirs)}")
    return np.concatenate(parts)


def max_similarity(source_features: np.ndarray, targets: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Highest cosine similarity of each (normalised) source row to any (normalised) target row."""
    best = np.full(len(source_features), -np.inf, np.float32)
    for start in range(0, len(targets), chunk):
        best = np.maximum(best, (source_features @ targets[start : start + chunk].T).max(axis=1))
    return best


def remove_near_duplicates(
    source_dir: str,
    target_dirs: Sequence[str],
    out_dir: str,
    *,
    features_fn: FeaturesFn,
    image_size: int,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 64,
    overwrite: bool = False,
) -> DedupReport:
    """Writes `out_dir`: the source shard set minus near-duplicates of the targets; returns the report."""
    done = os.path.join(out_dir, manifest.MANIFEST_NAME)
    if epath.Path(done).exists() and not overwrite:
        return DedupReport(**manifest.load_manifest(out_dir, verify=False).extra["dedup"])
    source = manifest.load_manifest(source_dir)
    targets = target_features(target_dirs, features_fn, image_size=image_size, batch_size=batch_size)
    sims = np.concatenate(
        [
            max_similarity(f, targets)
            for f in _feature_batches(source_dir, features_fn, image_size, batch_size, max(1, source.num_labels))
        ]
    )
    if len(sims) != source.num_records:
        raise RuntimeError(f"{source_dir}: featurised {len(sims)} of {source.num_records} records")
    remove = sims >= threshold

    epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
    files, counts, removed_ids = [], [], []
    label_counts = np.zeros(source.num_labels, np.int64)
    position = 0
    for path in source.files:

        def kept(path=path):
            nonlocal position
            for data in records.iter_records(path):
                drop = remove[position]
                position += 1
                example = records.decode_example(data)
                if drop:
                    if len(removed_ids) < MAX_LISTED_IDS:
                        removed_ids.append(example.example_id.decode(errors="replace"))
                    continue
                for label in example.labels:
                    label_counts[label] += 1
                yield data

        out_path = os.path.join(out_dir, os.path.basename(path))
        counts.append(records.write_tfrecord(out_path, kept()))
        files.append(out_path)
    report = DedupReport(
        threshold=float(threshold),
        source_records=source.num_records,
        removed=int(remove.sum()),
        kept=int(sum(counts)),
        target_dirs=[paths.resolve(t) for t in target_dirs],
        similarity_counts={f"{level:.2f}": int((sims >= level).sum()) for level in REPORT_LEVELS},
        removed_ids=removed_ids,
    )
    manifest.write_manifest(
        out_dir,
        files,
        counts,
        source.label_names,
        label_counts.tolist(),
        source.hierarchy,
        {**source.extra, "dedup": dataclasses.asdict(report)},
    )
    return report
