"""Selected-set write: Beam's local run against the in-process writer and a raw disk write, in one run.

Builds (once) the label-only synthetic corpus of `benchmarks/selection_write.py`, plans a
same-distribution selection of `--fraction` of it, and times, each from a cold start of its output:

  raw       a dd-like sequential write (8 MiB blocks, fsync) of as many bytes as the selected set
  inprocess selection.write.write_selected, one process (the label index rebuilt: same reads as Beam)
  beam      selection.beam_write.write_selected on the direct runner, 1 worker in_memory and
            `--workers` workers multi_processing

and prints records/s (selected records written per second of wall time) for each, checking that
every write produced the same bytes.

  .venv/bin/python benchmarks/beam_write.py --examples=100000 --dir=/tmp/beam_bench
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.selection_write import corpus_and_plan, disk_bandwidth  # noqa: E402
from data import beam_runner, manifest  # noqa: E402
from selection import beam_write, write  # noqa: E402


def _digest(shard_set: manifest.ShardSet) -> list[str]:
    return [hashlib.sha256(open(f, "rb").read()).hexdigest() for f in shard_set.files]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--labels", type=int, default=2_000)
    parser.add_argument("--payload", type=int, default=1_000)
    parser.add_argument("--fraction", type=float, default=80 / 300)
    parser.add_argument("--records_per_shard", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", default="/tmp/beam_bench")
    args = parser.parse_args()

    source, plan, corpus_bytes = corpus_and_plan(args)

    results: dict[str, tuple[int, int, float]] = {}
    outputs = {}
    runs = [
        ("inprocess", None),
        ("beam, 1 worker in_memory", 1),
        (f"beam, {args.workers} workers multi_processing", args.workers),
    ]
    for name, workers in runs:
        out = os.path.join(args.dir, f"out_{len(results)}")
        shutil.rmtree(out, ignore_errors=True)
        kwargs = {"records_per_shard": args.records_per_shard, "seed": 0}
        start = time.perf_counter()
        shard_set: manifest.ShardSet | None
        if workers is None:
            shard_set = write.write_selected(source.directory, plan, out, process_index=0, process_count=1, **kwargs)
        else:
            config = beam_runner.default_config()
            config.direct_num_workers = workers
            config.direct_running_mode = "in_memory" if workers == 1 else "multi_processing"
            shard_set = beam_write.write_selected(source.directory, plan, out, beam_config=config, **kwargs)
        wall = time.perf_counter() - start
        assert shard_set is not None  # one process: it writes the manifest
        out_bytes = sum(os.path.getsize(f) for f in shard_set.files)
        results[name] = (shard_set.num_records, out_bytes, wall)
        outputs[name] = _digest(shard_set)
        shutil.rmtree(out, ignore_errors=True)
    records_out, out_bytes, _ = results["inprocess"]
    write_mb, _ = disk_bandwidth(args.dir, out_bytes)
    raw_s = out_bytes / (write_mb * 1e6)
    print(f"selected set: {records_out:,} records, {out_bytes / 1e6:.0f} MB ({out_bytes / records_out:.0f} B/record)")
    print(
        f"raw disk write (8 MiB blocks + fsync) of {out_bytes / 1e6:.0f} MB: {raw_s:.2f} s, "
        f"{records_out / raw_s:,.0f} records/s"
    )
    for name, (n, _, wall) in results.items():
        print(
            f"{name}: {wall:.1f} s, {n / wall:,.0f} records/s written ({source.num_records / wall:,.0f} source "
            f"records/s read), {n / wall / (records_out / raw_s):.3f} of raw write"
        )
    same = all(o == outputs["inprocess"] for o in outputs.values())
    print(f"byte-identical outputs: {same}")


if __name__ == "__main__":
    main()
