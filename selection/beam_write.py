"""The selected-set write as an Apache Beam pipeline: the same bytes as `selection.write`, on any runner.

For a corpus-scale write (tens of millions of copies) on Dataflow, Flink or Spark instead of the
accelerator hosts. Every rule (allocation, key choice, Feistel positions, output ranges, weights)
is `selection.allocation`'s via `selection.write`'s `Job`/`global_allocation`/`select_shard`, so
for the same plan and seed the shards and the manifest are byte-identical to the in-process
writer's, whatever the runner or worker count. The graph:

  SourceShards -> Scan (per-shard attributed label counts) -> AllSummaries -> Allocate (the one
  global allocation) -> PerShardAllocation (each shard's own entries; the small global part is a
  side input) -> Select (each shard's copies in blocks keyed by output shard, with positions) ->
  GroupByOutputShard -> WriteShard (sorted by position, atomic, sha256) -> WriteManifest (last,
  once every shard is written, with the shards' statistics summed by SumStats).

A killed run leaves whole shard files (each written atomically) and no manifest, so the set is not
taken as complete; a rerun rewrites the same bytes and then the manifest.

CLI (the planned draws and weights of a plan CSV as `LabelPlan.to_csv` writes it, e.g.
<workdir>/selected/same.plan.csv, written as a `plan.from_planned` plan):
  python -m selection.beam_write --source=WORK/data/source --plan_csv=WORK/selected/same.plan.csv \\
      --out=/tmp/same --records_per_shard=2000 --seed=0 [--runner=DataflowRunner --project=P \\
      --region=R --temp_location=gs://B/tmp] [--dry_run]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np
from etils import epath

from data import atomic, beam_runner, manifest
from selection import huh_subsets, write
from selection import plan as plan_lib

NAMESPACE = "select"


def _counter(name: str):
    from apache_beam.metrics import Metrics

    return Metrics.counter(NAMESPACE, name)


def _summarise(s: int, job: write.Job) -> tuple[int, object]:
    return s, job.summary(s)


def _allocate(summaries: list, job: write.Job) -> write.Allocation:
    return write.global_allocation(job, [summary for _, summary in sorted(summaries, key=lambda kv: kv[0])])


def _per_shard(alloc: write.Allocation):
    """(s, shard s's entries of the allocation) for every source shard: at corpus scale the allocation
    has ~10^8 (shard, label) entries, so each Select gets only its own instead of a broadcast of all."""
    for s in range(len(alloc.totals)):
        if alloc.coo is None:
            yield s, None
        else:
            lo, hi = np.searchsorted(alloc.coo[0], [s, s + 1])
            yield s, np.ascontiguousarray(alloc.coo[:, lo:hi])


def _without_entries(alloc: write.Allocation) -> write.Allocation:
    """The allocation's small global part (per-shard totals, output bounds, realised plan): a side input."""
    return dataclasses.replace(alloc, coo=None)


def _select(item: tuple[int, np.ndarray | None], job: write.Job, alloc: write.Allocation):
    """Source shard s's weighted copies as (output shard, (positions, records)), one element per output
    shard they go to (Beam's cost is per element, so a shard's copies travel in blocks); its stats on
    "stats"."""
    import apache_beam as beam

    s, entries = item
    selected = write.select_shard(job, dataclasses.replace(alloc, coo=entries), s)
    read = job.source.record_counts[s]
    chosen = int(selected.stats["unique"].sum())
    _counter("examples_read").inc(read)
    _counter("bytes_read").inc(epath.Path(job.source.files[s]).stat().length)
    _counter("examples_skipped").inc(read - chosen)  # source examples given no copy
    shard_of = np.searchsorted(alloc.bounds, selected.positions, side="right") - 1  # positions are sorted
    cuts = (np.flatnonzero(np.diff(shard_of)) + 1).tolist()
    for lo, hi in zip([0, *cuts], [*cuts, len(shard_of)], strict=True):
        if hi > lo:
            yield int(shard_of[lo]), (selected.positions[lo:hi], selected.framed[lo:hi])
    yield beam.pvalue.TaggedOutput("stats", selected.stats)


def _write_shard(item: tuple[int, Sequence[tuple[np.ndarray, list[bytes]]]], job: write.Job, alloc: write.Allocation):
    """Output shard k from its blocks, ordered by position, written atomically; returns (k, sha256)."""
    k, blocks = item
    blocks = list(blocks)
    positions = np.concatenate([p for p, _ in blocks]) if blocks else np.zeros(0, np.int64)
    pieces = [record for _, block in blocks for record in block]
    order = np.argsort(positions)
    start, end = int(alloc.bounds[k]), int(alloc.bounds[k + 1])
    if not np.array_equal(positions[order], np.arange(start, end)):
        raise AssertionError(f"output shard {k}: got {len(pieces)} records, expected positions [{start}, {end})")
    data = b"".join([pieces[i] for i in order.tolist()])  # the records come framed (`select_shard`)
    path = job.output_paths(len(alloc.sizes))[k]
    atomic.write_bytes(path, data)
    print(f"[beam] select: wrote {os.path.basename(path)} ({len(pieces)} records)", flush=True)  # progress
    _counter("examples_written").inc(len(pieces))
    _counter("bytes_written").inc(len(data))
    return k, hashlib.sha256(data).hexdigest()


def _sum_stats(parts) -> dict[str, np.ndarray]:
    """The shards' `SelectedShard.stats` summed (a Beam combiner: partial sums combine the same way)."""
    total: dict[str, np.ndarray] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total[key] + value if key in total else np.array(value)
    return total


def _write_manifest(shas: list, job: write.Job, alloc: write.Allocation, stats: dict) -> None:
    if sorted(k for k, _ in shas) != list(range(len(alloc.sizes))):
        raise AssertionError(f"{len(shas)} output shards written, expected {len(alloc.sizes)}")
    write.finish(job, alloc, [stats] if stats else [], [sha for _, sha in sorted(shas)])


def build_pipeline(pipeline, job: write.Job) -> None:
    """Adds the write of `job` to `pipeline`."""
    import apache_beam as beam

    full = (
        pipeline
        | "SourceShards" >> beam.Create(list(range(len(job.source.files))))
        | "Scan" >> beam.Map(_summarise, job)
        | "AllSummaries" >> beam.combiners.ToList()
        | "Allocate" >> beam.Map(_allocate, job)
    )
    alloc = beam.pvalue.AsSingleton(full | "GlobalPart" >> beam.Map(_without_entries))
    selected = (
        full
        | "PerShardAllocation" >> beam.FlatMap(_per_shard)
        | "SpreadShards" >> beam.Reshuffle()
        | "Select" >> beam.FlatMap(_select, job, alloc).with_outputs("stats", main="copies")
    )
    stats = beam.pvalue.AsSingleton(selected.stats | "SumStats" >> beam.CombineGlobally(_sum_stats))
    (
        selected.copies
        | "GroupByOutputShard" >> beam.GroupByKey()
        | "WriteShard" >> beam.Map(_write_shard, job, alloc)
        | "AllShards" >> beam.combiners.ToList()
        | "WriteManifest" >> beam.Map(_write_manifest, job, alloc, stats)
    )


def write_selected(
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
    beam_config: ml_collections.ConfigDict | None = None,
    dry_run: bool = False,
) -> manifest.ShardSet | None:
    """`selection.write.write_selected` as a Beam job on `beam_config`'s runner (default: local).

    Returns the manifest (None for a dry run). A complete `out_dir` is returned as is.
    """
    job = write.make_job(
        source_dir,
        plan,
        out_dir,
        records_per_shard=records_per_shard,
        seed=seed,
        example_weight_rule=example_weight_rule,
        label_weights=label_weights,
        label_index_dir=label_index_dir,
        label_remap=label_remap,
    )
    if write.is_complete(job):
        return manifest.load_manifest(out_dir, verify=False)
    if not dry_run:
        write.start(job)
    counters = beam_runner.run(
        lambda p: build_pipeline(p, job), beam_config or beam_runner.default_config(), name="select", dry_run=dry_run
    )
    if counters is None:
        return None
    return manifest.load_manifest(out_dir, verify=False)


def load_plan_csv(path: str, source: manifest.ShardSet) -> tuple[np.ndarray, np.ndarray]:
    """(planned draws, weight) per source label from a plan CSV (`LabelPlan.to_csv`)."""
    import csv

    text = epath.Path(path).read_text(encoding="utf-8")
    rows = {row["label"]: (float(row["planned"]), float(row["weight"])) for row in csv.DictReader(io.StringIO(text))}
    missing = [name for name in source.label_names if name not in rows]
    if missing:
        raise ValueError(f"{path}: no row for source labels {missing[:5]}")
    planned, weight = np.array([rows[name] for name in source.label_names], np.float64).T
    return planned, weight


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m selection.beam_write", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="source shard-set directory")
    parser.add_argument("--plan_csv", required=True, help="plan CSV (LabelPlan.to_csv): the planned draws per label")
    parser.add_argument("--out", required=True, help="output shard-set directory")
    parser.add_argument("--records_per_shard", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--example_weight_rule", default="max")
    beam_runner.add_arguments(parser)
    args = parser.parse_args(argv)
    planned, weight = load_plan_csv(args.plan_csv, manifest.load_manifest(args.source, verify=False))
    shard_set = write_selected(
        args.source,
        planned,
        args.out,
        label_weights=weight,
        records_per_shard=args.records_per_shard,
        seed=args.seed,
        example_weight_rule=args.example_weight_rule,
        beam_config=beam_runner.config_from_args(args),
        dry_run=args.dry_run,
    )
    if shard_set is not None:
        print(f"{shard_set.directory}: {shard_set.num_records} records in {len(shard_set.files)} shards")


if __name__ == "__main__":
    main()
