"""Writes a selected dataset: evenly sized, globally shuffled, weighted TFRecord shards + manifest.

Work is split BY SHARD across processes (source shard s belongs to process s % P, output shard k to
the process whose contiguous block holds k), every random choice is seeded by the seed and a
shard/label/position, never by the process, so any process count writes the same bytes. The
sampling and ordering rules are `selection.allocation`'s; the write's inputs (`make_job`), the
global allocation (`global_allocation`), one source shard's selection (`select_shard`) and the
manifest (`finish`) are shared with the Beam pipeline (`selection.beam_write`), which writes the
same bytes.

Phases (each resumable: a phase output that exists is complete, it was written atomically):

0. scan: per owned source shard, the labels and ids of its records (a label index, no image
   decoded; cached under `label_index_dir`, so a persistent dir makes later writes read the image
   bytes only once); every example is attributed to one label (`selection.weights`), and the
   shard's attributed label counts (or, for an example plan, its copies) go to a small summary file.
1. select + spill: once every summary exists, each process computes the same global allocation:
   the plan's exact integer draws per label (`LabelPlan.draws`), spread over shards by a
   multivariate hypergeometric (without replacement) or multinomial (with replacement) draw seeded
   by (seed, label). Within a shard a (seed, shard)-seeded generator picks the examples: for each
   label the k examples with the smallest random keys (without replacement) or k uniform draws
   (with replacement). Copy number g (shards in order, records in order) goes to output position
   pi(g), pi a seeded Feistel bijection of [0, total): a global shuffle with O(1) state. The copies
   of the shard, sorted by position, are spilled framed, with their `image/weight`.
2. assemble: output shard k holds positions [start_k, end_k) (sizes differ by at most one); it is
   gathered from every spill file (one contiguous range each), ordered by position and written
   atomically. Process 0 writes the manifest once every output shard exists, then removes the
   spill files.

Processes see each other's files through the shared output directory and wait for them by polling
(no other barrier needed; a shared filesystem is required for P > 1, as for the output itself).
Memory: the plan, the allocation (non-zero (shard, label) counts), one shard's selected records, and
the owned shards' label index up to `KEEP_SCANS_BYTES`, kept from phase 0 for phase 1.

`image/weight` is added by appending a serialized Example holding only that feature to the source
record: protobuf merges repeated message fields, so the parsed record is the source record plus the
weight, without decoding or re-encoding the image. A `label_remap` (a coarser label set, e.g. Huh et
al.'s merged labels) is applied the same way: the appended `image/label` replaces the source's (a map
entry parsed later wins), and the manifest carries the coarse label names and counts, so training on
the shard set trains a head over the coarse labels.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

from data import atomic, manifest, paths, records
from selection import allocation, huh_subsets
from selection import plan as plan_lib
from selection import weights as weights_lib

SHARD_NAME = "selected-{:05d}-of-{:05d}.tfrecord"
CONFIG_NAME = "write_config.json"


@dataclasses.dataclass(frozen=True)
class ShardScan:
    """Labels (CSR) and ids of one source shard's records, in record order, and the records' spans
    in the file (`records.record_spans`: a later read checks them at once instead of walking)."""

    offsets: np.ndarray
    labels: np.ndarray
    id_offsets: np.ndarray
    id_blob: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    @property
    def num_records(self) -> int:
        return len(self.offsets) - 1

    def ids(self) -> list[bytes]:
        blob = self.id_blob.tobytes()
        return [blob[a:b] for a, b in zip(self.id_offsets[:-1], self.id_offsets[1:], strict=True)]

    @property
    def spans(self) -> records.Spans:
        return self.starts, self.lengths

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, field.name).nbytes for field in dataclasses.fields(self))


def scan_shard(path: str) -> ShardScan:
    """Labels, ids and spans of every record (CRC checked; the image bytes are not decoded)."""
    offsets, labels, id_offsets, ids = [0], [], [0], []
    proto = records.example_proto()
    buf = epath.Path(path).read_bytes()
    starts, lengths = records.record_spans(buf, path)
    for index, data in enumerate(records.records_at(buf, (starts, lengths), path)):
        proto.ParseFromString(data)
        feature = proto.features.feature
        if "image/label" not in feature or "image/id" not in feature:
            raise records.CorruptRecordError(path, index, "missing image/label or image/id")
        labels.extend(feature["image/label"].int64_list.value)
        offsets.append(len(labels))
        ids.append(feature["image/id"].bytes_list.value[0])
        id_offsets.append(id_offsets[-1] + len(ids[-1]))
    return ShardScan(
        offsets=np.array(offsets, np.int64),
        labels=np.array(labels, np.int64),
        id_offsets=np.array(id_offsets, np.int64),
        id_blob=np.frombuffer(b"".join(ids), np.uint8),
        starts=starts,
        lengths=lengths,
    )


def _load_scan(path: str, sha: str, index_dir: str) -> ShardScan:
    """The shard's scan from the label index cache, written there first when absent. v3: the fields as
    consecutive .npy arrays in one file (loaded twice per shard per write; an .npz cost twice as much)."""
    cache = os.path.join(index_dir, f"{os.path.basename(path)}.{sha[:16]}.v3.npy")
    fields = [f.name for f in dataclasses.fields(ShardScan)]
    if epath.Path(cache).exists():
        with epath.Path(cache).open("rb") as handle:
            return ShardScan(**{name: np.lib.format.read_array(handle) for name in fields})
    scan = scan_shard(path)
    with atomic.open_write(cache) as handle:
        for name in fields:
            np.lib.format.write_array(handle, getattr(scan, name))
    return scan


# ----------------------------------------------------------------------------------------------
# The write's inputs, allocation and per-shard selection (shared with selection.beam_write)


Scanned = tuple[ShardScan, np.ndarray]  # a shard's scan and its records' attributed labels (`Job.scanned`)


@dataclasses.dataclass
class Job:
    """Everything every process (or Beam worker) derives identically from the inputs."""

    source: manifest.ShardSet
    shas: list[str]
    label_plan: plan_lib.LabelPlan | None
    example_plan: Mapping[bytes, int] | None
    label_weights: np.ndarray
    rule: str
    seed: int
    records_per_shard: int
    out_dir: str
    fingerprint: str
    index_dir: str
    remap: huh_subsets.LabelRemap | None = None

    @property
    def work(self) -> str:
        """Scratch dir of this write (summaries, spills, default label index); removed when done."""
        return os.path.join(self.out_dir, f"_work-{self.fingerprint[:16]}")

    @property
    def config_path(self) -> str:
        return os.path.join(self.out_dir, CONFIG_NAME)

    @property
    def num_labels(self) -> int:
        return len(self.label_weights)

    def summary_path(self, s: int) -> str:
        return os.path.join(self.work, f"summary-{s:05d}.npz")

    def spill_paths(self, s: int) -> tuple[str, str, str]:
        """Spilled framed records; their output positions (row 0, then `Allocation.total`, above every
        position) and byte offsets (row 1) as one .npy, memory-mapped by readers; the shard's
        statistics (.npz, written last: the spill is complete when it exists)."""
        stem = os.path.join(self.work, f"framed-{s:05d}")  # not `spill-`: those held unframed records
        return f"{stem}.bin", f"{stem}.index.npy", f"{stem}.stats.npz"

    def scan(self, s: int) -> ShardScan:
        return _load_scan(self.source.files[s], self.shas[s], self.index_dir)

    def attributed(self, scan: ShardScan) -> np.ndarray:
        return weights_lib.attribute_examples(scan.offsets, scan.labels, self.label_weights)

    def scanned(self, s: int) -> Scanned:
        scan = self.scan(s)
        return scan, self.attributed(scan)

    def summary(self, s: int, scanned: Scanned | None = None) -> tuple[np.ndarray, np.ndarray] | int:
        """Source shard s's input to the allocation: attributed (labels, counts), or its copies for
        an example plan. `scanned`: `Job.scanned(s)`, when the caller has it."""
        scan, attributed = scanned or self.scanned(s)
        if self.label_plan is not None:
            return allocation.shard_summary(attributed)
        assert self.example_plan is not None  # a job has a label plan or an example plan
        return int(allocation.example_copies(scan.ids(), self.example_plan).sum())

    def output_paths(self, num_out: int) -> list[str]:
        return [os.path.join(self.out_dir, SHARD_NAME.format(k, num_out)) for k in range(num_out)]


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The global allocation: what every source shard contributes and where output shards split."""

    coo: np.ndarray | None  # [shard; label; draws] in shard order (label plans only)
    totals: np.ndarray  # copies per source shard
    realised_plan: plan_lib.LabelPlan | None
    sizes: np.ndarray  # records per output shard
    bounds: np.ndarray  # output shard k holds positions [bounds[k], bounds[k + 1])

    @property
    def total(self) -> int:
        return int(self.totals.sum())

    @property
    def bases(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.totals)])

    @property
    def with_replacement(self) -> bool:
        return self.realised_plan.with_replacement if self.realised_plan is not None else False


def global_allocation(job: Job, summaries: list) -> Allocation:
    """The allocation from every source shard's `Job.summary`, in shard order."""
    if job.label_plan is None:
        coo, totals, realised = None, np.array(summaries, np.int64).reshape(-1), None
    else:
        coo, totals, realised = allocation.plan_allocation(job.label_plan, summaries, job.seed)
    sizes, bounds = allocation.output_bounds(int(totals.sum()), job.records_per_shard)
    return Allocation(coo, totals, realised, sizes, bounds)


@dataclasses.dataclass
class SelectedShard:
    """One source shard's copies, sorted by output position, as framed weighted records, concatenated."""

    positions: np.ndarray
    blob: bytes  # `records.frame_record` of each copy's weighted record, in position order
    offsets: np.ndarray  # copy i is blob[offsets[i]:offsets[i + 1]]
    stats: dict[str, np.ndarray]  # `allocation.shard_stats`

    @property
    def framed(self) -> list[bytes]:
        """Each copy's framed record."""
        bounds = self.offsets.tolist()
        return list(map(self.blob.__getitem__, map(slice, bounds[:-1], bounds[1:])))


def select_shard(job: Job, alloc: Allocation, s: int, scanned: Scanned | None = None) -> SelectedShard:
    """Source shard s's copies under the allocation: which records, how often, at which positions.
    `scanned`: `Job.scanned(s)`, when the caller kept it."""
    scan, attributed = scanned or job.scanned(s)
    if job.label_plan is not None:
        assert alloc.coo is not None  # computed for every label plan
        copies = allocation.shard_copies(
            alloc.coo, s, attributed, job.num_labels, seed=job.seed, with_replacement=alloc.with_replacement
        )
    else:
        assert job.example_plan is not None  # a job has a label plan or an example plan
        copies = allocation.example_copies(scan.ids(), job.example_plan)
    if int(copies.sum()) != int(alloc.totals[s]):
        raise AssertionError(f"shard {s}: {copies.sum()} copies, allocation says {alloc.totals[s]}")
    weight = weights_lib.example_weights(scan.offsets, scan.labels, job.label_weights, job.rule)
    record_of_copy, positions = allocation.copy_positions(copies, int(alloc.bases[s]), alloc.total, job.seed)
    indices = np.flatnonzero(copies)
    if job.remap is None:  # one suffix per distinct weight
        distinct, suffix_of = np.unique(weight[indices], return_inverse=True)
        distinct_suffixes = [allocation.weight_suffix(w) for w in distinct.tolist()]
        suffixes = [distinct_suffixes[j] for j in suffix_of.reshape(-1).tolist()]
    else:
        remap = job.remap
        suffixes = [
            allocation.weight_suffix(weight[i], remap.record_labels(scan.labels[scan.offsets[i] : scan.offsets[i + 1]]))
            for i in indices.tolist()
        ]
    which = np.searchsorted(indices, record_of_copy)  # copy -> its record's place in `indices`
    blob, offsets = records.framed_with_suffixes(job.source.files[s], indices, scan.spans, suffixes, which)
    return SelectedShard(
        positions,
        blob,
        offsets,
        allocation.shard_stats(
            attributed,
            scan.offsets,
            scan.labels,
            copies,
            job.num_labels,
            None if job.remap is None else job.remap.index,
        ),
    )


def _fingerprint(
    source_dir: str, label_plan, example_plan, label_weights, seed, records_per_shard, rule, remap=None
) -> str:
    digest = hashlib.sha256()
    digest.update(epath.Path(source_dir, manifest.MANIFEST_NAME).read_bytes())
    digest.update(json.dumps([int(seed), int(records_per_shard), rule]).encode())
    if label_plan is not None:
        digest.update(json.dumps([label_plan.matcher, label_plan.with_replacement]).encode())
        for array in (label_plan.planned, label_plan.count, label_plan.weight):
            digest.update(np.ascontiguousarray(array, np.float64).tobytes())
    else:
        for key in sorted(example_plan):
            digest.update(len(key).to_bytes(4, "little") + key + int(example_plan[key]).to_bytes(8, "little"))
    digest.update(np.ascontiguousarray(label_weights, np.float64).tobytes())
    if remap is not None:
        digest.update(json.dumps(remap.names).encode() + np.ascontiguousarray(remap.index, np.int64).tobytes())
    return digest.hexdigest()


def make_job(
    source_dir: str,
    plan: plan_lib.LabelPlan | np.ndarray | Mapping[bytes, int],
    out_dir: str,
    *,
    records_per_shard: int,
    seed: int,
    example_weight_rule: str = "max",
    label_weights: np.ndarray | None = None,
    label_index_dir: str | None = None,
    label_remap: huh_subsets.LabelRemap | None = None,
) -> Job:
    """Validates a write's inputs (see `write_selected`) and refuses an `out_dir` that holds a
    partial write of another plan/seed/source."""
    if records_per_shard <= 0:
        raise ValueError(f"records_per_shard must be positive, got {records_per_shard}")
    if example_weight_rule not in weights_lib.EXAMPLE_WEIGHT_RULES:
        raise ValueError(f"unknown example_weight_rule {example_weight_rule!r}")
    source = manifest.load_manifest(source_dir, verify=False)
    raw_manifest = atomic.read_json(os.path.join(source_dir, manifest.MANIFEST_NAME))
    shas = [entry["sha256"] for entry in raw_manifest["files"]]

    label_plan, example_plan = None, None
    if isinstance(plan, plan_lib.LabelPlan):
        label_plan = plan
    elif isinstance(plan, np.ndarray):
        label_plan = plan_lib.from_planned(source.label_names, np.asarray(source.label_counts), plan)
    else:
        example_plan = plan
    if label_plan is not None and len(label_plan.count) != source.num_labels:
        raise ValueError(f"plan has {len(label_plan.count)} labels, the source {source.num_labels}")
    if label_weights is None:
        use_plan_w = label_plan is not None and label_plan.matcher != "given"
        label_weights = label_plan.weight if label_plan is not None and use_plan_w else np.ones(source.num_labels)
    label_weights = np.asarray(label_weights, np.float64)

    if label_remap is not None and len(label_remap.index) != source.num_labels:
        raise ValueError(f"label_remap maps {len(label_remap.index)} labels, the source has {source.num_labels}")
    fingerprint = _fingerprint(
        source_dir, label_plan, example_plan, label_weights, seed, records_per_shard, example_weight_rule, label_remap
    )
    config_path = os.path.join(out_dir, CONFIG_NAME)
    if epath.Path(config_path).exists() and atomic.read_json(config_path)["fingerprint"] != fingerprint:
        raise ValueError(f"{out_dir} holds a write of a different plan/seed/source; remove it to restart")
    work = os.path.join(out_dir, f"_work-{fingerprint[:16]}")
    return Job(
        source,
        shas,
        label_plan,
        example_plan,
        label_weights,
        example_weight_rule,
        int(seed),
        int(records_per_shard),
        out_dir,
        fingerprint,
        label_index_dir or os.path.join(work, "index"),
        label_remap,
    )


def start(job: Job) -> None:
    """Claims `out_dir` for this write (its fingerprint file; called by one process only)."""
    epath.Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    if not epath.Path(job.config_path).exists():
        atomic.write_json(
            job.config_path, {"fingerprint": job.fingerprint, "source_dir": paths.resolve(job.source.directory)}
        )


def finish(job: Job, alloc: Allocation, stats: list[dict[str, np.ndarray]], sha256s: list[str] | None = None) -> None:
    """Writes the manifest (last: the shard set is complete from then on), then removes the scratch dir
    and any temp file a killed write left.

    `stats`: every source shard's `SelectedShard.stats`; `sha256s`: of the output shards when the
    caller has them (otherwise read back from disk).
    """
    out_names = job.source.label_names if job.remap is None else job.remap.names
    draws, unique, label_copies = (
        np.sum([st[key] for st in stats], axis=0, dtype=np.int64) if stats else np.zeros(size, np.int64)
        for key, size in (("draws", job.num_labels), ("unique", job.num_labels), ("label_copies", len(out_names)))
    )
    realised_plan = alloc.realised_plan
    extra = {
        "fingerprint": job.fingerprint,
        "seed": job.seed,
        "records_per_shard": job.records_per_shard,
        "example_weight_rule": job.rule,
        "source_dir": paths.resolve(job.source.directory),
        "source_records": job.source.num_records,
        "total_copies": alloc.total,
        "unique_examples": int(unique.sum()),
        "realised": {"draws": draws.tolist(), "unique": unique.tolist()},
    }
    if realised_plan is not None:
        extra["plan"] = {
            **realised_plan.summary(),
            "count": realised_plan.count.tolist(),
            "raw_count": realised_plan.raw_count.tolist(),
            "planned": realised_plan.planned.tolist(),
            "expected_unique": realised_plan.unique.tolist(),
        }
    else:
        extra["plan"] = {"matcher": "examples", "size": alloc.total}
    if job.remap is not None:
        extra["label_remap"] = {"source_label_names": job.source.label_names, "index": job.remap.index.tolist()}
    manifest.write_manifest(
        job.out_dir,
        job.output_paths(len(alloc.sizes)),
        [int(n) for n in alloc.sizes],
        out_names,
        np.asarray(label_copies).tolist(),
        hierarchy=job.source.hierarchy,
        extra=extra,
        sha256s=sha256s if sha256s is not None else _sha256s(job.output_paths(len(alloc.sizes))),
    )
    for entry in epath.Path(job.out_dir).iterdir():  # temp files of writes killed before their rename
        if entry.name.startswith(SHARD_NAME.split("-")[0]) and ".tmp" in entry.name:
            entry.unlink()
    if epath.Path(job.work).exists():
        paths.remove_tree(job.work)


def _sha256s(files: list[str]) -> list[str]:
    """The files' digests, read and hashed by threads (hashlib and reads release the GIL: the cores
    and the reads overlap)."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(manifest.sha256_file, files))


def is_complete(job: Job) -> bool:
    return epath.Path(job.out_dir, manifest.MANIFEST_NAME).exists()


# ----------------------------------------------------------------------------------------------
# The in-process writer


KEEP_SCANS_BYTES = 512 << 20  # scans kept in memory from the scan phase for the spill phase, at most


def _phase_scan(job: Job, owned: list[int], background: atomic.Background) -> dict[int, Scanned]:
    """Writes the owned shards' summaries; returns their scans, as many as `KEEP_SCANS_BYTES` holds
    (the spill phase would load and attribute them again: 0.13 s for 2M records)."""
    kept: dict[int, Scanned] = {}
    kept_bytes = 0
    for s in owned:
        if epath.Path(job.summary_path(s)).exists():
            continue
        scanned = job.scanned(s)
        size = scanned[0].nbytes + scanned[1].nbytes
        if kept_bytes + size <= KEEP_SCANS_BYTES:
            kept[s], kept_bytes = scanned, kept_bytes + size
        summary = job.summary(s, scanned)
        if isinstance(summary, tuple):  # a label plan's (labels, counts)
            background.submit(atomic.write_npz, job.summary_path(s), labels=summary[0], counts=summary[1])
        else:
            background.submit(atomic.write_npz, job.summary_path(s), total=np.array(summary))
    return kept


def _load_summaries(job: Job, num_shards: int) -> list:
    summaries = []
    for s in range(num_shards):
        with paths.np_load(job.summary_path(s)) as z:
            summaries.append((z["labels"], z["counts"]) if job.label_plan is not None else int(z["total"]))
    return summaries


def _phase_spill(
    job: Job, alloc: Allocation, s: int, background: atomic.Background, scanned: Scanned | None
) -> dict[str, np.ndarray] | None:
    """Spills source shard s's copies (unless a complete spill exists); returns its statistics when
    computed here (the manifest's writer then need not read them back)."""
    if epath.Path(job.spill_paths(s)[2]).exists():
        return None
    selected = select_shard(job, alloc, s, scanned)
    index = np.empty((2, len(selected.positions) + 1), np.int64)
    index[0, :-1], index[0, -1] = selected.positions, alloc.total
    index[1] = selected.offsets
    background.submit(_write_spill, job.spill_paths(s), selected.blob, index, selected.stats)
    return selected.stats


def _write_spill(spill_paths: tuple[str, str, str], blob: bytes, index: np.ndarray, stats: dict) -> None:
    """The spill's files in order: the statistics last, so a spill whose statistics exist is whole."""
    blob_path, index_path, stats_path = spill_paths
    atomic.write_bytes(blob_path, blob)
    atomic.write_npy(index_path, index)
    atomic.write_npz(stats_path, **stats)


def _phase_assemble(
    job: Job, k: int, bounds: np.ndarray, spills: list[np.ndarray], path: str, background: atomic.Background
) -> None:
    """Output shard k from the spills (`spills[s]`: source shard s's memory-mapped index): one
    contiguous range of each, read and joined, then its framed records sliced out in position order
    and written at once (one slice per record)."""
    start, end = int(bounds[k]), int(bounds[k + 1])
    none = np.zeros(0, np.int64)
    positions, begins, ends = [none], [none], [none]  # begins, ends: each record's span in the joined chunks
    chunks: list[bytes] = []
    size = 0
    for s, index in enumerate(spills):
        lo, hi = np.searchsorted(index[0], [start, end])  # binary search: touches a few pages only
        if lo == hi:
            continue
        positions.append(np.array(index[0, lo:hi]))
        offsets = np.array(index[1, lo : hi + 1])
        with epath.Path(job.spill_paths(s)[0]).open("rb") as handle:
            handle.seek(int(offsets[0]))
            chunks.append(handle.read(int(offsets[-1] - offsets[0])))
        offsets += size - offsets[0]
        begins.append(offsets[:-1])
        ends.append(offsets[1:])
        size += len(chunks[-1])
    order = np.argsort(np.concatenate(positions))
    if len(order) != end - start:
        raise AssertionError(f"output shard {k}: gathered {len(order)} records, expected {end - start}")
    whole = b"".join(chunks)
    cuts = map(slice, np.concatenate(begins)[order].tolist(), np.concatenate(ends)[order].tolist())
    background.submit(atomic.write_bytes, path, b"".join(map(whole.__getitem__, cuts)))


def write_selected(
    source_dir: str,
    plan: plan_lib.LabelPlan | np.ndarray | Mapping[bytes, int],
    out_dir: str,
    *,
    records_per_shard: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    example_weight_rule: str = "max",
    label_weights: np.ndarray | None = None,
    label_index_dir: str | None = None,
    label_remap: huh_subsets.LabelRemap | None = None,
    wait_timeout_s: float = 24 * 3600.0,
    local_processes: int = 1,
) -> manifest.ShardSet:
    """Writes the selection `plan` of the shard set at `source_dir` to `out_dir`; returns its manifest.

    `plan`: a `LabelPlan` (re-planned for the attributed counts of a multi-label source), per-label
    planned draws over the source labels (`plan.from_planned`: each label's rate is kept), or
    example id -> copies. Each record gets `image/weight` from `label_weights` (default: the
    LabelPlan's w; 1.0 for other plans) by `example_weight_rule`. Every process calls this with the
    same arguments; all return the manifest. Re-running resumes; a different plan or seed for the
    same `out_dir` is refused while its partial output exists. `label_remap`: the records and the
    manifest get the coarse labels (the plan and its statistics stay over the source labels).
    `local_processes` > 1: this process's share is written by that many worker processes on this
    host, the same bytes (`local_processes()` picks the count for `selection.write_processes`); every
    process of a job must pass the same count.
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    if local_processes < 1:
        raise ValueError(f"local_processes must be >= 1, got {local_processes}")
    arguments: dict[str, Any] = {
        "records_per_shard": records_per_shard,
        "seed": seed,
        "example_weight_rule": example_weight_rule,
        "label_weights": label_weights,
        "label_index_dir": label_index_dir,
        "label_remap": label_remap,
    }
    job = make_job(source_dir, plan, out_dir, **arguments)  # bad input fails here, before any worker starts
    manifest_path = os.path.join(out_dir, manifest.MANIFEST_NAME)
    if is_complete(job):
        return manifest.load_manifest(out_dir, verify=False)
    if local_processes > 1:
        arguments.update(source_dir=source_dir, plan=plan, out_dir=out_dir, wait_timeout_s=wait_timeout_s)
        _run_workers(arguments, process_index, process_count, local_processes)
        return manifest.load_manifest(out_dir, verify=False)
    if process_index == 0:
        start(job)
    num_sources = len(job.source.files)
    owned = list(range(process_index, num_sources, process_count))

    with atomic.Background() as background:  # each phase's files are written while the next is computed
        kept = _phase_scan(job, owned, background)
        background.wait()
        # `until`: in a resumed write whose output shards all exist, process 0 can finish (and remove
        # the scratch files waited for here) before a slower process gets here
        if paths.wait_for([job.summary_path(s) for s in range(num_sources)], wait_timeout_s, until=manifest_path):
            return manifest.load_manifest(out_dir, verify=False)
        alloc = global_allocation(job, _load_summaries(job, num_sources))
        computed = {s: _phase_spill(job, alloc, s, background, kept.pop(s, None)) for s in owned}
        background.wait()
        if paths.wait_for([job.spill_paths(s)[2] for s in range(num_sources)], wait_timeout_s, until=manifest_path):
            return manifest.load_manifest(out_dir, verify=False)

        num_out = len(alloc.sizes)
        out_paths = job.output_paths(num_out)
        mine = range(num_out * process_index // process_count, num_out * (process_index + 1) // process_count)
        todo = [k for k in mine if not epath.Path(out_paths[k]).exists()]
        if todo:
            spills = [paths.np_load(job.spill_paths(s)[1], mmap_mode="r") for s in range(num_sources)]
            for k in todo:
                _phase_assemble(job, k, alloc.bounds, spills, out_paths[k], background)
    paths.wait_for(out_paths, wait_timeout_s)

    if process_index == 0:
        stats = []
        for s in range(num_sources):
            if (mine_stats := computed.get(s)) is None:  # another process's, or spilled by an earlier run
                with paths.np_load(job.spill_paths(s)[2]) as z:
                    mine_stats = {key: z[key] for key in ("draws", "unique", "label_copies")}
            stats.append(mine_stats)
        finish(job, alloc, stats)
    else:
        paths.wait_for([manifest_path], wait_timeout_s)
    return manifest.load_manifest(out_dir, verify=False)


# ----------------------------------------------------------------------------------------------
# Worker processes on one host


LOCAL_PROCESS_RECORDS = 500_000  # auto: at most one worker per this many source records


def local_processes(requested: int, num_records: int, process_count: int) -> int:
    """Worker processes per host for a write (`selection.write_processes`): `requested` when > 0;
    0 (auto) is one per usable core, at most one per `LOCAL_PROCESS_RECORDS` source records (a worker
    costs about 0.5 CPU-s to start, so a small write is faster alone), and 1 in a multi-process job,
    whose processes must all use the same count (their hosts' cores may differ)."""
    if requested < 0:
        raise ValueError(f"write_processes must be >= 0, got {requested}")
    if requested > 0:
        return requested
    if process_count > 1:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), num_records // LOCAL_PROCESS_RECORDS))


_WORKER = "import sys; from selection import write; write._worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))"


def _worker(arguments_path: str, process_index: int, process_count: int) -> None:
    with open(arguments_path, "rb") as handle:
        arguments = pickle.load(handle)
    write_selected(**arguments, process_index=process_index, process_count=process_count)


def _run_workers(arguments: dict, process_index: int, process_count: int, workers: int) -> None:
    """Runs `write_selected(**arguments)` as processes `process_index * workers + i` of
    `process_count * workers`, i < workers: OS processes on this host (the phases are CPU-bound
    Python: threads would share one core), sharing the output dir like any other processes of a write.

    A failed worker stops the others (they would wait for its files) and raises here with its last
    error line, after every worker's stderr is printed. A re-run resumes from the files the workers
    completed.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="write-workers-") as tmp:
        arguments_path = os.path.join(tmp, "arguments.pkl")
        with open(arguments_path, "wb") as handle:
            pickle.dump(arguments, handle)
        log_paths = [os.path.join(tmp, f"worker-{i}.stderr") for i in range(workers)]
        procs: list[subprocess.Popen] = []
        try:
            for i, log_path in enumerate(log_paths):
                command = [sys.executable, "-c", _WORKER, arguments_path, str(process_index * workers + i)]
                with open(log_path, "wb") as log:
                    procs.append(subprocess.Popen([*command, str(process_count * workers)], stderr=log, env=env))
            while not any(proc.poll() not in (None, 0) for proc in procs) and any(p.poll() is None for p in procs):
                time.sleep(0.02)
        finally:
            stopped = [proc.poll() is None for proc in procs]  # still running: stopped here
            for proc, stop in zip(procs, stopped, strict=True):
                if stop:
                    proc.kill()
                proc.wait()
        errors = []
        for i, (proc, stop) in enumerate(zip(procs, stopped, strict=True)):
            with open(log_paths[i], "rb") as log:
                text = log.read().decode(errors="replace")
            sys.stderr.write(text)
            if proc.returncode != 0 and not stop:
                errors.append((i, proc.returncode, (text.strip().splitlines() or ["no error output"])[-1]))
        if errors:
            i, code, line = errors[0]
            raise RuntimeError(f"selection write worker {i} of {workers} failed (exit code {code}): {line}")
