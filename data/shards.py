"""The one shard-set writer: TFRecord shards, each written atomically, then the manifest last.

Converters (`data.prepare`, and `data.beam_prepare` through the pieces below), the embedded corpus
(`data.embedded`) and the fine-tuning sweep's train/val split (`trainer.sweep`) all write their
shard sets here, so the file names, the resume rule, the dataset card's label counts and "complete
exactly when the manifest exists" are decided once. A caller supplies the records of shard k
(serialized `tf.train.Example` bytes with their labels); which examples go in which shard stays
the caller's choice.

Resumable and multi-process: process p writes shards p, p + P, ... (a disjoint part), each followed by
a small `<shard>.json` (record and label counts, sha256, images skipped as unreadable); with
`resume`, a shard with that file is done and skipped when the job runs again. After `barrier`,
process 0 writes the manifest from those files and removes them; every process then returns the
loaded shard set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from etils import epath

from data import atomic, manifest, records
from data import hierarchy as hierarchy_lib

_SIDECAR = ".json"  # `<shard>.json`: a finished shard's counts and sha256 (resume, manifest)

ShardRecords = Callable[[int], Iterable[tuple[bytes, Sequence[int]]]]


def shard_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def no_barrier(name: str) -> None:
    """Single-process default: nothing to wait for."""


def write_shard_set(
    out_dir: str,
    shard_records: ShardRecords,
    *,
    num_shards: int,
    label_names: Sequence[str],
    prefix: str,
    hierarchy: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
    resume: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    barrier: Callable[[str], None] = no_barrier,
) -> manifest.ShardSet:
    """Writes shards `prefix-0000k-of-0000n.tfrecord` holding `shard_records(k)`, then the manifest.

    Process 0 first removes the manifest (a set being rewritten must not look complete) and every
    `prefix-*` file that is not a shard of this set (left by a run with another shard count); without
    `resume` also the finished shards of an earlier run, so every shard is written again.
    """
    names = [shard_name(prefix, shard, num_shards) for shard in range(num_shards)]
    epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
    if process_index == 0:
        epath.Path(out_dir, manifest.MANIFEST_NAME).unlink(missing_ok=True)
        remove_stale_shards(out_dir, names if resume else [], prefix)
    for shard in range(process_index, num_shards, process_count):
        path = os.path.join(out_dir, names[shard])
        if shard_done(path) is not None:
            continue  # finished by an earlier run
        counts = np.zeros(len(label_names), np.int64)

        def counted(shard: int = shard, counts: np.ndarray = counts) -> Iterator[bytes]:
            for data, labels in shard_records(shard):
                for label in labels:
                    counts[label] += 1
                yield data

        finish_shard(path, records.write_tfrecord(path, counted()), counts)
    barrier(f"shards of {out_dir} written")
    if process_index == 0:
        write_manifest(out_dir, names, read_done(out_dir, names), label_names, hierarchy, extra)
    barrier(f"manifest of {out_dir} written")
    return manifest.load_manifest(out_dir, verify=False)


def remove_stale_shards(out_dir: str, names: Sequence[str], prefix: str = "data") -> None:
    """Removes `prefix-*` shard, count and temp files not of `names` (a run with another shard count;
    its manifest never listed them)."""
    for stale in epath.Path(out_dir).glob(f"{prefix}-*.tfrecord*"):
        if stale.name.split(".tmp")[0].removesuffix(_SIDECAR) not in names:
            stale.unlink()


def finish_shard(path: str, written: int, label_counts: np.ndarray, bad: list | None = None) -> dict:
    """Records a written shard as done: its `<shard>.json` (record and label counts, sha256, and the
    images skipped as unreadable), what the manifest is later written from."""
    done = {
        "records": int(written),
        "label_counts": np.asarray(label_counts, np.int64).tolist(),
        "sha256": manifest.sha256_file(path),
        "bad": list(bad or []),
    }
    atomic.write_json(path + _SIDECAR, done)
    return done


def shard_done(path: str) -> dict | None:
    """The `<shard>.json` of a finished shard, or None when the shard still has to be written."""
    return atomic.read_json(path + _SIDECAR) if epath.Path(path + _SIDECAR).exists() else None


def read_done(out_dir: str, names: Sequence[str]) -> list[dict]:
    """Every shard's `<shard>.json`; all shards must be finished."""
    done = [shard_done(os.path.join(out_dir, name)) for name in names]
    missing = [name for name, d in zip(names, done, strict=True) if d is None]
    if missing:
        raise AssertionError(f"{out_dir}: {len(missing)} shard(s) not written, e.g. {missing[0]}")
    return [d for d in done if d is not None]


def write_manifest(
    out_dir: str,
    names: Sequence[str],
    done: list[dict],
    label_names: Sequence[str],
    hierarchy: dict[str, list[str]] | None,
    extra: dict[str, Any] | None,
) -> None:
    """The manifest (written last) from every shard's `read_done` record; then the `.json` files and
    any temp file of a killed writer go."""
    label_counts = np.zeros(len(label_names), np.int64)
    for d in done:
        label_counts += d["label_counts"]
    if hierarchy:
        hierarchy_lib.validate(hierarchy)
    manifest.write_manifest(
        out_dir,
        [os.path.join(out_dir, name) for name in names],
        [d["records"] for d in done],
        list(label_names),
        label_counts.tolist(),
        hierarchy,
        extra,
        sha256s=[d["sha256"] for d in done],
    )
    for name in names:  # the manifest now holds what they recorded
        epath.Path(out_dir, name + _SIDECAR).unlink()
    listed = set(names)
    for entry in epath.Path(out_dir).iterdir():  # temp files of writers killed before their rename
        if ".tmp" in entry.name and entry.name.split(".tmp")[0].removesuffix(_SIDECAR) in listed:
            entry.unlink()
