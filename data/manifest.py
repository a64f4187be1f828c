"""JSON manifest of a shard set: which files, how many records, their sha256, and the dataset card.

A shard set is complete exactly when its manifest exists (the manifest is written last, atomically),
so a stage that finds a manifest can skip, and a reader never takes a half-written set as whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

from etils import epath

from data import atomic

MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match the files on disk."""


@dataclasses.dataclass
class ShardSet:
    """A loaded manifest: absolute shard paths plus the dataset card."""

    directory: str
    files: list[str]
    record_counts: list[int]
    label_names: list[str]
    label_counts: list[int]
    hierarchy: dict[str, list[str]]
    extra: dict[str, Any]

    @property
    def num_records(self) -> int:
        return sum(self.record_counts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with epath.Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(
    directory: str,
    files: list[str],
    record_counts: list[int],
    label_names: list[str],
    label_counts: list[int],
    hierarchy: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
    sha256s: list[str] | None = None,
) -> str:
    """Writes `directory/manifest.json` for shards already on disk; returns its path.

    `sha256s`: the shards' digests when the writer computed them as it wrote (a distributed writer
    does, so the manifest step does not read the whole set back); otherwise read from disk.
    """
    if len(label_counts) != len(label_names):  # a count belongs to each name, and to nothing else
        raise ValueError(f"{directory}: {len(label_counts)} label counts for {len(label_names)} label names")
    if sha256s is None:
        sha256s = [sha256_file(f) for f in files]
    entries = [
        {"file": os.path.basename(f), "records": int(n), "sha256": sha}
        for f, n, sha in zip(files, record_counts, sha256s, strict=True)
    ]
    path = os.path.join(directory, MANIFEST_NAME)
    atomic.write_json(
        path,
        {
            "files": entries,
            "num_records": int(sum(record_counts)),
            "label_names": list(label_names),
            "label_counts": [int(c) for c in label_counts],
            "hierarchy": hierarchy or {},
            "extra": extra or {},
        },
    )
    return path


def load_manifest(directory: str, verify: bool = True) -> ShardSet:
    """Loads a shard set; with `verify`, refuses it when a file's sha256 or presence is off."""
    path = os.path.join(directory, MANIFEST_NAME)
    if not epath.Path(path).exists():
        raise ManifestError(f"no manifest at {path}: the shard set is missing or incomplete")
    try:
        raw = atomic.read_json(path)
        files = [os.path.join(directory, e["file"]) for e in raw["files"]]
        counts = [int(e["records"]) for e in raw["files"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ManifestError(f"{path}: malformed manifest ({err})") from err
    if verify:
        for entry, file in zip(raw["files"], files, strict=True):
            if not epath.Path(file).exists():
                raise ManifestError(f"{path}: listed shard {file} does not exist")
            if sha256_file(file) != entry["sha256"]:
                raise ManifestError(f"{path}: sha256 of {file} does not match the manifest")
    return ShardSet(
        directory=directory,
        files=files,
        record_counts=counts,
        label_names=list(raw.get("label_names", [])),
        label_counts=[int(c) for c in raw.get("label_counts", [])],
        hierarchy=dict(raw.get("hierarchy", {})),
        extra=dict(raw.get("extra", {})),
    )
