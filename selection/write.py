"""Writes a selected dataset: evenly sized, globally shuffled, weighted TFRecord shards + manifest.

Work is split BY SHARD across processes (source shard s belongs to process s % P, output shard k to
the process whose contiguous block holds k), every random choice is seeded by the seed and a
shard/label/position, never by the process, so any process count writes the same bytes. The
sampling and ordering rules are `selection.allocation`'s, shared with the Beam pipeline
(`selection.beam_write`), which writes the same bytes.

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
   of the shard, sorted by position, are spilled with their `image/weight`.
2. assemble: output shard k holds positions [start_k, end_k) (sizes differ by at most one); it is
   gathered from every spill file (one contiguous range each), ordered by position and written
   atomically. Process 0 writes the manifest once every output shard exists, then removes the
   spill files.

Processes see each other's files through the shared output directory and wait for them by polling
(no other barrier needed; a shared filesystem is required for P > 1, as for the output itself).
Memory: the plan, the allocation (non-zero (shard, label) counts) and one shard's selected records.

`image/weight` is added by appending a serialized Example holding only that feature to the source
record: protobuf merges repeated message fields, so the parsed record is the source record plus the
weight, without decoding or re-encoding the image. A `label_remap` (a coarser label set, e.g. Huh et
al.'s merged labels) is applied the same way: the appended `image/label` replaces the source's (a map
entry parsed later wins), and the manifest carries the coarse label names and counts, so training on
the shard set trains a head over the coarse labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import struct
import time
from collections.abc import Mapping

import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from data import atomic, manifest, records
from selection import allocation, huh_subsets
from selection import plan as plan_lib
from selection import weights as weights_lib

SHARD_NAME = "selected-{:05d}-of-{:05d}.tfrecord"
CONFIG_NAME = "write_config.json"


@dataclasses.dataclass(frozen=True)
class ShardScan:
    """Labels (CSR) and ids of one source shard's records, in record order."""

    offsets: np.ndarray
    labels: np.ndarray
    id_offsets: np.ndarray
    id_blob: np.ndarray

    @property
    def num_records(self) -> int:
        return len(self.offsets) - 1

    def ids(self) -> list[bytes]:
        blob = self.id_blob.tobytes()
        return [blob[a:b] for a, b in zip(self.id_offsets[:-1], self.id_offsets[1:], strict=True)]


_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")


def read_shard(path: str) -> list[bytes]:
    """All records of one TFRecord file, CRC checked, from one sequential read of the whole file.

    The same checks as `data.records.iter_records` with a fraction of its per-record cost (no
    seek/read per record), which dominates for small records; memory is one shard.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    out, pos, end = [], 0, len(data)
    crc = records._masked_crc  # the format's checksum, shared with the reader/writer
    while pos < end:
        if pos + 12 > end:
            raise records.CorruptRecordError(path, len(out), "truncated record header")
        length, length_crc = _HEADER.unpack_from(data, pos)
        if length_crc != crc(data[pos : pos + 8]):
            raise records.CorruptRecordError(path, len(out), "length CRC mismatch")
        start, stop = pos + 12, pos + 12 + length
        if stop + 4 > end:
            raise records.CorruptRecordError(path, len(out), "truncated record data")
        record = data[start:stop]
        if _CRC.unpack_from(data, stop)[0] != crc(record):
            raise records.CorruptRecordError(path, len(out), "data CRC mismatch")
        out.append(record)
        pos = stop + 4
    return out


def scan_shard(path: str) -> ShardScan:
    """Labels and ids of every record (CRC checked; the image bytes are not decoded)."""
    offsets, labels, id_offsets, ids = [0], [], [0], []
    proto = tf_example_pb2.Example()
    for index, data in enumerate(read_shard(path)):
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
    )


def _load_scan(path: str, sha: str, index_dir: str) -> ShardScan:
    cache = os.path.join(index_dir, f"{os.path.basename(path)}.{sha[:16]}.npz")
    if os.path.exists(cache):
        with np.load(cache) as z:
            return ShardScan(**{k: z[k] for k in ("offsets", "labels", "id_offsets", "id_blob")})
    scan = scan_shard(path)
    _save_npz(cache, **dataclasses.asdict(scan))
    return scan


def _save_npy(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp.{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def _save_npz(path: str, **arrays: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _wait_for(paths: list[str], timeout_s: float) -> None:
    """Polls until every path exists: the other processes' finished phase outputs."""
    deadline = time.monotonic() + timeout_s
    pending = [p for p in paths if not os.path.exists(p)]
    delay = 0.05
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f}s for {len(pending)} file(s), e.g. {pending[0]}")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
        pending = [p for p in pending if not os.path.exists(p)]


# ----------------------------------------------------------------------------------------------
# The writer


@dataclasses.dataclass
class _Job:
    """Everything every process derives identically from the inputs."""

    source: manifest.ShardSet
    shas: list[str]
    label_plan: plan_lib.LabelPlan | None
    example_plan: Mapping[bytes, int] | None
    label_weights: np.ndarray
    rule: str
    seed: int
    work: str
    index_dir: str
    remap: huh_subsets.LabelRemap | None = None
    total: int = 0  # copies in the whole output, known after the allocation

    def summary_path(self, s: int) -> str:
        return os.path.join(self.work, f"summary-{s:05d}.npz")

    def spill_paths(self, s: int) -> tuple[str, str, str, str]:
        """Spilled records, their output positions and byte offsets (.npy, memory-mapped by readers),
        and the shard's statistics (.npz, written last: the spill is complete when it exists)."""
        stem = os.path.join(self.work, f"spill-{s:05d}")
        return f"{stem}.bin", f"{stem}.positions.npy", f"{stem}.offsets.npy", f"{stem}.stats.npz"

    def scan(self, s: int) -> ShardScan:
        return _load_scan(self.source.files[s], self.shas[s], self.index_dir)

    def attributed(self, scan: ShardScan) -> np.ndarray:
        return weights_lib.attribute_examples(scan.offsets, scan.labels, self.label_weights)


def _fingerprint(
    source_dir: str, label_plan, example_plan, label_weights, seed, records_per_shard, rule, remap=None
) -> str:
    digest = hashlib.sha256()
    with open(os.path.join(source_dir, manifest.MANIFEST_NAME), "rb") as handle:
        digest.update(handle.read())
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


def _phase_scan(job: _Job, owned: list[int]) -> None:
    for s in owned:
        if os.path.exists(job.summary_path(s)):
            continue
        scan = job.scan(s)
        attributed = job.attributed(scan)
        if job.label_plan is not None:
            labels, counts = allocation.shard_summary(attributed)
            _save_npz(job.summary_path(s), labels=labels, counts=counts)
        else:
            copies = allocation.example_copies(scan.ids(), job.example_plan)
            _save_npz(job.summary_path(s), total=np.array(copies.sum()))


def _allocation(job: _Job, num_shards: int) -> tuple[np.ndarray | None, np.ndarray, plan_lib.LabelPlan | None]:
    """(per-shard per-label draws as COO, copies per shard, plan for the attributed counts)."""
    if job.label_plan is None:
        totals = np.zeros(num_shards, np.int64)
        for s in range(num_shards):
            with np.load(job.summary_path(s)) as z:
                totals[s] = int(z["total"])
        return None, totals, None
    summaries = []
    for s in range(num_shards):
        with np.load(job.summary_path(s)) as z:
            summaries.append((z["labels"], z["counts"]))
    return allocation.plan_allocation(job.label_plan, summaries, job.seed)


def _phase_spill(job: _Job, s: int, coo, base: int, total: int, with_replacement: bool) -> None:
    blob_path, positions_path, offsets_path, stats_path = job.spill_paths(s)
    if os.path.exists(stats_path):
        return
    scan = job.scan(s)
    attributed = job.attributed(scan)
    if job.label_plan is not None:
        copies = allocation.shard_copies(
            coo, s, attributed, len(job.label_weights), seed=job.seed, with_replacement=with_replacement
        )
    else:
        copies = allocation.example_copies(scan.ids(), job.example_plan)
    if int(copies.sum()) != total:
        raise AssertionError(f"shard {s}: {copies.sum()} copies, allocation says {total}")
    weight = weights_lib.example_weights(scan.offsets, scan.labels, job.label_weights, job.rule)
    record_of_copy, positions = allocation.copy_positions(copies, base, job.total, job.seed)
    source_records = read_shard(job.source.files[s])
    chosen = {
        i: source_records[i]
        + allocation.weight_suffix(
            weight[i],
            None if job.remap is None else job.remap.record_labels(scan.labels[scan.offsets[i] : scan.offsets[i + 1]]),
        )
        for i in np.flatnonzero(copies).tolist()
    }
    del source_records
    pieces = [chosen[i] for i in record_of_copy]
    byte_offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces], dtype=np.int64)])
    atomic.write_bytes(blob_path, b"".join(pieces))
    _save_npy(positions_path, positions)
    _save_npy(offsets_path, byte_offsets)
    _save_npz(
        stats_path,
        **allocation.shard_stats(
            attributed,
            scan.offsets,
            scan.labels,
            copies,
            len(job.label_weights),
            None if job.remap is None else job.remap.index,
        ),
    )


def _phase_assemble(job: _Job, k: int, bounds: np.ndarray, num_sources: int, path: str) -> None:
    start, end = int(bounds[k]), int(bounds[k + 1])
    positions, pieces = [], []
    for s in range(num_sources):
        blob_path, positions_path, offsets_path, _ = job.spill_paths(s)
        spilled = np.load(positions_path, mmap_mode="r")  # binary search touches a few pages only
        lo, hi = np.searchsorted(spilled, [start, end])
        if lo == hi:
            continue
        positions.append(np.array(spilled[lo:hi]))
        offsets = np.array(np.load(offsets_path, mmap_mode="r")[lo : hi + 1])
        with open(blob_path, "rb") as handle:
            handle.seek(int(offsets[0]))
            chunk = handle.read(int(offsets[-1] - offsets[0]))
        rel = offsets - offsets[0]
        pieces.extend(chunk[a:b] for a, b in zip(rel[:-1], rel[1:], strict=True))
    order = np.argsort(np.concatenate(positions)) if positions else np.zeros(0, np.int64)
    if len(order) != end - start:
        raise AssertionError(f"output shard {k}: gathered {len(order)} records, expected {end - start}")
    records.write_tfrecord(path, (pieces[i] for i in order))


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
) -> manifest.ShardSet:
    """Writes the selection `plan` of the shard set at `source_dir` to `out_dir`; returns its manifest.

    `plan`: a `LabelPlan` (re-planned for the attributed counts of a multi-label source), per-label
    planned draws over the source labels (`plan.from_planned`: each label's rate is kept), or
    example id -> copies. Each record gets `image/weight` from `label_weights` (default: the
    LabelPlan's w; 1.0 for other plans) by `example_weight_rule`. Every process calls this with the
    same arguments; all return the manifest. Re-running resumes; a different plan or seed for the
    same `out_dir` is refused while its partial output exists. `label_remap`: the records and the
    manifest get the coarse labels (the plan and its statistics stay over the source labels).
    """
    if records_per_shard <= 0:
        raise ValueError(f"records_per_shard must be positive, got {records_per_shard}")
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
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
        label_weights = label_plan.weight if use_plan_w else np.ones(source.num_labels)
    label_weights = np.asarray(label_weights, np.float64)

    if label_remap is not None and len(label_remap.index) != source.num_labels:
        raise ValueError(f"label_remap maps {len(label_remap.index)} labels, the source has {source.num_labels}")
    fingerprint = _fingerprint(
        source_dir, label_plan, example_plan, label_weights, seed, records_per_shard, example_weight_rule, label_remap
    )
    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, CONFIG_NAME)
    if os.path.exists(config_path) and atomic.read_json(config_path)["fingerprint"] != fingerprint:
        raise ValueError(f"{out_dir} holds a write of a different plan/seed/source; remove it to restart")
    manifest_path = os.path.join(out_dir, manifest.MANIFEST_NAME)
    if os.path.exists(manifest_path):
        return manifest.load_manifest(out_dir, verify=False)
    if process_index == 0 and not os.path.exists(config_path):
        atomic.write_json(config_path, {"fingerprint": fingerprint, "source_dir": os.path.abspath(source_dir)})
    work = os.path.join(out_dir, f"_work-{fingerprint[:16]}")
    job = _Job(
        source,
        shas,
        label_plan,
        example_plan,
        label_weights,
        example_weight_rule,
        int(seed),
        work,
        label_index_dir or os.path.join(work, "index"),
        label_remap,
    )
    num_sources = len(source.files)
    owned = list(range(process_index, num_sources, process_count))

    _phase_scan(job, owned)
    _wait_for([job.summary_path(s) for s in range(num_sources)], wait_timeout_s)
    coo, totals, realised_plan = _allocation(job, num_sources)
    with_replacement = realised_plan.with_replacement if realised_plan is not None else False
    job.total = int(totals.sum())
    bases = np.concatenate([[0], np.cumsum(totals)])
    for s in owned:
        _phase_spill(job, s, coo, int(bases[s]), int(totals[s]), with_replacement)
    _wait_for([job.spill_paths(s)[3] for s in range(num_sources)], wait_timeout_s)

    sizes, bounds = allocation.output_bounds(job.total, records_per_shard)
    num_out = len(sizes)
    paths = [os.path.join(out_dir, SHARD_NAME.format(k, num_out)) for k in range(num_out)]
    for k in range(num_out * process_index // process_count, num_out * (process_index + 1) // process_count):
        if not os.path.exists(paths[k]):
            _phase_assemble(job, k, bounds, num_sources, paths[k])
    _wait_for(paths, wait_timeout_s)

    if process_index == 0:
        _write_manifest(job, out_dir, paths, sizes, realised_plan, fingerprint, records_per_shard)
        shutil.rmtree(work, ignore_errors=True)
    else:
        _wait_for([manifest_path], wait_timeout_s)
    return manifest.load_manifest(out_dir, verify=False)


def _write_manifest(job, out_dir, paths, sizes, realised_plan, fingerprint, records_per_shard) -> None:
    num_labels = len(job.label_weights)
    draws, unique = (np.zeros(num_labels, np.int64) for _ in range(2))
    out_names = job.source.label_names if job.remap is None else job.remap.names
    label_copies = np.zeros(len(out_names), np.int64)
    for s in range(len(job.source.files)):
        with np.load(job.spill_paths(s)[3]) as z:
            draws += z["draws"]
            unique += z["unique"]
            label_copies += z["label_copies"]
    extra = {
        "fingerprint": fingerprint,
        "seed": job.seed,
        "records_per_shard": int(records_per_shard),
        "example_weight_rule": job.rule,
        "source_dir": os.path.abspath(job.source.directory),
        "source_records": job.source.num_records,
        "total_copies": int(job.total),
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
        extra["plan"] = {"matcher": "examples", "size": int(job.total)}
    if job.remap is not None:
        extra["label_remap"] = {"source_label_names": job.source.label_names, "index": job.remap.index.tolist()}
    manifest.write_manifest(
        out_dir,
        paths,
        [int(n) for n in sizes],
        out_names,
        label_copies.tolist(),
        hierarchy=job.source.hierarchy,
        extra=extra,
    )
