"""Write-pass throughput on a label-only synthetic corpus, against raw sequential disk bandwidth.

Builds a multi-label corpus of small records (a `--payload`-byte opaque image, 18,291 labels,
1.26 labels per example on average), then times `selection.write.write_selected` for the
same-distribution plan at `--fraction` of the corpus with 1 and with `--processes` OS processes
(each given its part, sharing the output dir), and a dd-like sequential write (fsync) and read of a
file of the corpus's size in the same run. That raw bandwidth is the peer: each write_selected line
ends with its ratios to it (source MB/s over raw read MB/s, output MB/s over raw write+fsync MB/s,
and source MB/s over raw write+fsync MB/s, since the raw read is usually served from the page cache),
then the same per CPU-second of the write processes (wall time on a shared host measures its load).

Two measurements of the same write, each labelled: in child processes (`python -c`, so their CPU-s
and wall time include the interpreter's start-up and imports, about 0.3 s each), and in this
process, the way `python -m launch.main`'s select stage runs it with `selection.write_processes=1`
(imports done, as for the raw write, which is timed in this process too).

  .venv/bin/python benchmarks/selection_write.py --examples=2000000 --dir=/tmp/selbench
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data import manifest, records  # noqa: E402
from selection import plan as plan_lib  # noqa: E402
from selection import write as write_lib  # noqa: E402


def build_corpus(directory: str, examples: int, shards: int, labels: int, payload: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    p = 1.0 / np.arange(1, labels + 1) ** 0.9
    p /= p.sum()
    label_counts = np.zeros(labels, np.int64)
    files, counts = [], []
    for s, part in enumerate(np.array_split(np.arange(examples), shards)):
        extra = rng.random(len(part)) < 0.26  # 1.26 labels per example on average
        first = rng.choice(labels, size=len(part), p=p)
        second = rng.choice(labels, size=len(part), p=p)
        blob = rng.bytes(payload)
        out = []
        for j, i in enumerate(part):
            ls = (int(first[j]), int(second[j])) if extra[j] and second[j] != first[j] else (int(first[j]),)
            label_counts[list(ls)] += 1
            out.append(records.encode_example(records.Example(blob, ls, b"%012d" % i)))
        path = os.path.join(directory, f"source-{s:05d}.tfrecord")
        records.write_tfrecord(path, out)
        files.append(path)
        counts.append(len(part))
    manifest.write_manifest(directory, files, counts, [f"l{i}" for i in range(labels)], label_counts.tolist())


def disk_bandwidth(directory: str, nbytes: int) -> tuple[float, float]:
    """MB/s of a sequential 8 MiB-block write (with fsync) and read-back of `nbytes`."""
    path = os.path.join(directory, "dd.bin")
    block = os.urandom(8 << 20)
    start = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(max(1, nbytes // len(block))):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    write_s = time.perf_counter() - start
    size = os.path.getsize(path)
    start = time.perf_counter()
    with open(path, "rb") as handle:
        while handle.read(8 << 20):
            pass
    read_s = time.perf_counter() - start
    os.remove(path)
    return size / write_s / 1e6, size / read_s / 1e6


_CHILD = """
import pickle, sys, resource, time
sys.path.insert(0, {root!r})
from selection import write
plan = pickle.load(open({plan!r}, "rb"))
start = time.perf_counter()
write.write_selected({src!r}, plan, {out!r}, records_per_shard={rps}, seed=0,
                     process_index=int(sys.argv[1]), process_count=int(sys.argv[2]), label_index_dir={index!r})
usage = resource.getrusage(resource.RUSAGE_SELF)
print(time.perf_counter() - start, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)
"""


def corpus_and_plan(args: argparse.Namespace) -> tuple[manifest.ShardSet, plan_lib.LabelPlan, int]:
    """The benchmark corpus under `args.dir` (built once) and a JFT-like same-distribution plan over it.

    Shared by this benchmark and benchmarks/beam_write.py, so both time writes of the same plan.
    Returns the source shard set, the plan and the corpus size in bytes.
    """
    src = os.path.join(args.dir, "source")
    if not os.path.exists(os.path.join(src, manifest.MANIFEST_NAME)):
        start = time.perf_counter()
        build_corpus(src, args.examples, args.shards, args.labels, args.payload)
        print(f"built corpus in {time.perf_counter() - start:.0f} s")
    source = manifest.load_manifest(src, verify=False)
    corpus_bytes = sum(os.path.getsize(f) for f in source.files)
    print(
        f"corpus: {source.num_records:,} examples, {source.num_labels} labels, {len(source.files)} shards, "
        f"{corpus_bytes / 1e6:.0f} MB ({corpus_bytes / source.num_records:.0f} B/record)"
    )
    rng = np.random.default_rng(1)
    plan = plan_lib.same_distribution(
        source.label_names,
        np.asarray(source.label_counts),
        rng.dirichlet(np.full(source.num_labels, 0.05)),
        round(args.fraction * source.num_records),
        num_examples=source.num_records,
    )
    return source, plan, corpus_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=2_000_000)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--labels", type=int, default=18_291)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=80 / 300)
    parser.add_argument("--records_per_shard", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--dir", default="/tmp/selection_bench")
    parser.add_argument("--repeats", type=int, default=3, help="alternating raw write / warm writes rounds")
    args = parser.parse_args()

    source, plan, corpus_bytes = corpus_and_plan(args)
    plan_path = os.path.join(args.dir, "plan.pkl")
    with open(plan_path, "wb") as handle:
        pickle.dump(plan, handle)

    index_dir = os.path.join(args.dir, "label_index")
    shutil.rmtree(index_dir, ignore_errors=True)

    def report(what: str, out: str, wall: float, cpu: float, rss: float, write_mb: float, read_mb: float) -> None:
        """Prints one write's lines: its speed and its ratios to the raw disk, in wall time and per CPU-s."""
        written = manifest.load_manifest(out, verify=False)
        out_bytes = sum(os.path.getsize(f) for f in written.files)
        print(
            f"write_selected, {what}: {wall:.2f} s wall; "
            f"source read {corpus_bytes / wall / 1e6:.1f} MB/s = {source.num_records / wall:,.0f} source records/s; "
            f"wrote {written.num_records:,} records "
            f"({out_bytes / 1e6:.0f} MB, {len(written.files)} shards); peak RSS per process {rss:.0f} MB; "
            f"load {os.getloadavg()[0]:.1f}"
        )
        print(
            f"  ratio to raw disk ({what}): source read / raw read {corpus_bytes / wall / 1e6 / read_mb:.3f}; "
            f"output written / raw write+fsync {out_bytes / wall / 1e6 / write_mb:.3f}; "
            f"source read / raw write+fsync {corpus_bytes / wall / 1e6 / write_mb:.3f}",
            flush=True,
        )
        print(
            f"  per CPU-second ({what}): {cpu:.2f} CPU-s, "
            f"{cpu / source.num_records * 1e6:.2f} us per source record; "
            f"source MB per CPU-s / raw write+fsync {corpus_bytes / cpu / 1e6 / write_mb:.3f}",
            flush=True,
        )

    def write(count: int, cache: str, write_mb: float, read_mb: float) -> tuple[float, float]:
        """One write_selected run in `count` child processes; prints its lines; returns (wall, CPU-s)."""
        out = os.path.join(args.dir, f"out_p{count}")
        shutil.rmtree(out, ignore_errors=True)
        script = _CHILD.format(
            root=ROOT, plan=plan_path, src=source.directory, out=out, rps=args.records_per_shard, index=index_dir
        )
        start = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-c", script, str(i), str(count)], stdout=subprocess.PIPE)
            for i in range(count)
        ]
        outputs = [p.communicate()[0].decode().split() for p in procs]
        wall = time.perf_counter() - start
        assert all(p.returncode == 0 for p in procs)
        rss = max(float(o[1]) for o in outputs)
        cpu = sum(float(o[2]) for o in outputs)  # whole child processes, start-up included
        what = f"{count} child process(es), start-up included, {cache} label index"
        report(what, out, wall, cpu, rss, write_mb, read_mb)
        return wall, cpu

    def write_here(write_mb: float, read_mb: float) -> tuple[float, float]:
        """One warm write_selected run in this process (imports done, as launch.main's select stage with
        selection.write_processes=1); its CPU-s are this process's, all threads, during the call."""
        out = os.path.join(args.dir, "out_here")
        shutil.rmtree(out, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        write_lib.write_selected(
            source.directory,
            plan,
            out,
            records_per_shard=args.records_per_shard,
            seed=0,
            process_index=0,
            process_count=1,
            label_index_dir=index_dir,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        report("in process, warm label index", out, wall, cpu, after.ru_maxrss / 1024, write_mb, read_mb)
        return wall, cpu

    def raw() -> tuple[float, float]:
        write_mb, read_mb = disk_bandwidth(args.dir, corpus_bytes)
        print(
            f"disk (dd-like, 8 MiB blocks): sequential write+fsync {write_mb:.0f} MB/s, read {read_mb:.0f} MB/s "
            f"(read likely from page cache); load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        return write_mb, read_mb

    # cold: the label index is built (two reads of the source); warm: it exists (one read). The warm
    # writes (1 and `--processes` child processes, then in this process) alternate with the raw write
    # `--repeats` times: the disk's speed on a shared host swings several-fold between minutes, so each
    # ratio pairs a write with the raw write just before it, and the summary gives medians.
    write(1, "cold", *raw())
    counts = sorted({1, args.processes})
    kinds = [f"{n} child process(es), start-up included" for n in counts] + ["in process (imports done)"]
    ratios: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu_ratios: dict[str, list[float]] = {kind: [] for kind in kinds}
    ours_mb: dict[str, list[float]] = {kind: [] for kind in kinds}
    raw_mb = []
    for _ in range(args.repeats):
        write_mb, read_mb = raw()
        raw_mb.append(write_mb)
        results = [write(n, "warm", write_mb, read_mb) for n in counts] + [write_here(write_mb, read_mb)]
        for kind, (wall, cpu) in zip(kinds, results, strict=True):
            ours_mb[kind].append(corpus_bytes / wall / 1e6)
            ratios[kind].append(ours_mb[kind][-1] / write_mb)
            cpu_ratios[kind].append(corpus_bytes / cpu / 1e6 / write_mb)
    for kind in kinds:
        print(
            f"median of {args.repeats} alternating repeats (warm, {kind}): "
            f"raw write+fsync {np.median(raw_mb):.0f} MB/s, "
            f"write_selected source {np.median(ours_mb[kind]):.1f} MB/s; source / raw write, wall time "
            f"{np.median(ratios[kind]):.3f} (each repeat {', '.join(f'{r:.3f}' for r in ratios[kind])}); "
            f"per CPU-second {np.median(cpu_ratios[kind]):.3f} "
            f"(each repeat {', '.join(f'{r:.3f}' for r in cpu_ratios[kind])})",
            flush=True,
        )
    for name in [f"out_p{n}" for n in counts] + ["out_here"]:
        shutil.rmtree(os.path.join(args.dir, name), ignore_errors=True)
    shutil.rmtree(index_dir, ignore_errors=True)
    print(f"benchmark process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
