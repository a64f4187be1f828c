"""Input-pipeline throughput: records/s decoded and augmented, per core and through grain.

Writes a synthetic ImageNet-like shard set (JPEG, 500x375, quality 90, about 60 KB each) to a
temporary directory, then measures
  1. per core: one thread running the training preprocessing (parse, decode, random crop,
     resize, flip) in a loop, at each resolution;
  2. the grain pipeline (`data.pipeline.train_iterator`) end to end, batched, for the given
     thread / worker-process counts: records/s of wall time, and (without worker processes,
     whose CPU time this process cannot see) records per CPU-second of this process.

Records per CPU-second is the per-core figure that holds on a shared host: wall-clock rates
drop when other jobs take the cores, CPU time does not.

The peer is run 1 (a plain Python loop, no grain, doing the same read + parse + PIL decode +
augmentation): each grain row prints its ratio to it, of wall rate and of records per CPU-second.

  .venv/bin/python -m benchmarks.input_pipeline [--records 256] [--sizes 299 75] [--seconds 5]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np
from PIL import Image

from data import pipeline, prepare, records
from data.sources import ShardSetSource


def _jpeg(seed: int, size=(500, 375)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), np.int16)
    pixels = np.clip(base + rng.integers(-25, 26, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build(directory: str, num_records: int, num_labels: int = 100) -> str:
    images = [_jpeg(i) for i in range(min(num_records, 64))]
    prepare.write_shard_set(
        directory,
        num_records,
        lambda i: records.Example(images[i % len(images)], (i % num_labels,), b"%d" % i),
        label_names=[f"l{k}" for k in range(num_labels)],
        num_shards=4,
    )
    return directory


def per_core(directory: str, size: int, seconds: float) -> tuple[float, float]:
    """(records/s wall, records per CPU-second) of the training preprocessing on one thread."""
    source = ShardSetSource(prepare.manifest.load_manifest(directory).files)
    prep = pipeline._Preprocess(source, size, 100, True, False)
    rng = np.random.default_rng(0)
    count, start, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        prep(source[count % len(source)], rng)
        count += 1
    return count / (time.perf_counter() - start), count / (time.thread_time() - cpu)


def through_grain(
    directory: str, size: int, seconds: float, threads: int, workers: int, batch: int
) -> tuple[float, float]:
    """(records/s wall, records per CPU-second of this process) through `train_iterator`."""
    it = pipeline.train_iterator(
        directory,
        global_batch_size=batch,
        image_size=size,
        seed=0,
        num_classes=100,
        read_threads=threads,
        worker_count=workers,
        process_index=0,
        process_count=1,
    )
    next(it)  # start-up (worker processes, first fill) is not throughput
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        count += len(next(it)["label"])
    rates = count / (time.perf_counter() - start), count / (time.process_time() - cpu)
    if hasattr(it, "close"):
        it.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[299, 75])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--configs", nargs="+", default=["1x0", "2x0", "1x2"], help="THREADSxWORKERS for the grain runs"
    )
    args = parser.parse_args()
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        directory = build(os.path.join(tmp, "shards"), args.records)
        kb = (
            np.mean([os.path.getsize(f) for f in prepare.manifest.load_manifest(directory).files])
            * 4
            / args.records
            / 1024
        )
        print(f"host: {cores} CPU cores; {args.records} JPEG records, {kb:.0f} KB each, 500x375")
        print(
            "| resolution | path | threads x workers | records/s (wall) | records per CPU-second "
            "| ratio to peer (wall) | ratio to peer (per CPU-second) |"
        )
        print("|---|---|---|---|---|---|---|")
        for size in args.sizes:
            peer_wall, peer_cpu = per_core(directory, size, args.seconds)
            print(
                f"| {size} | peer: plain loop, no grain | 1 x 0 | {peer_wall:.0f} | {peer_cpu:.0f} | 1.00 | 1.00 |",
                flush=True,
            )
            for config in args.configs:
                threads, workers = (int(v) for v in config.split("x"))
                wall, per_cpu = through_grain(directory, size, args.seconds, threads, workers, args.batch)
                cpu_text = (
                    f"{per_cpu:.0f} | {wall / peer_wall:.2f} | {per_cpu / peer_cpu:.2f}"
                    if workers == 0
                    else f"n/a (workers) | {wall / peer_wall:.2f} | n/a"
                )
                print(
                    f"| {size} | grain train_iterator | {threads} x {workers} | {wall:.0f} | {cpu_text} |", flush=True
                )


if __name__ == "__main__":
    main()
