"""Source preparation as an Apache Beam pipeline: image folders, CSV lists and TFDS datasets into shard sets.

For a corpus of hundreds of millions of images, conversion is a data job for Dataflow, Flink or Spark
(`data.beam_runner`), as TFDS builds its large datasets. The per-image step, the shard layout and the
manifest are `data.prepare`'s (`Listing.example` with its decode check, `resize_example`,
`encode_checked`, `shard_names`/`shard_range`, `finish_shard`, `write_manifest`), so a clean input
gives the same bytes as the in-process converter. The difference: an unreadable image is not fatal.
It is skipped, counted (`prepare/examples_skipped`) and named, with its error, in `bad_images.jsonl`
beside the manifest (`extra.bad_images` gives the count); a shard holding one is one record shorter.

The graph: Shards -> ConvertShard (one output shard per element: decode check, optional resize,
encode, atomic write, `<shard>.json` with counts, sha256 and the bad images) -> AllShards ->
WriteManifest (the bad-image file, then the manifest, last). A rerun skips shards whose `.json`
exists, so a killed job resumes shard by shard and never exposes a half-written set.

CLI (the same sources as `python -m data.prepare`):
  python -m data.beam_prepare folder --root=IMAGES/train --out=WORK/data/source [--max_side=512] \\
      [--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp] [--dry_run]
  python -m data.beam_prepare csv --csv=labels.csv --out=WORK/data/source
  python -m data.beam_prepare tfds --name=oxford_iiit_pet --split=train --out=WORK/data/target/train
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from etils import epath

from data import atomic, beam_runner, manifest, prepare, records, shards

NAMESPACE = "prepare"
BAD_IMAGES_NAME = "bad_images.jsonl"


def _counter(name: str):
    from apache_beam.metrics import Metrics

    return Metrics.counter(NAMESPACE, name)


def _convert_shard(shard: int, listing: prepare.Listing, out_dir: str, names: list[str], max_side: int) -> int:
    """Writes output shard `shard` (unless an earlier run finished it); returns its index."""
    path = os.path.join(out_dir, names[shard])
    lo, hi = prepare.shard_range(len(listing), len(names), shard)
    done = shards.shard_done(path)
    if done is None:
        get = prepare.example_fn(listing, max_side)
        num_labels = len(listing.label_names)
        counts = np.zeros(num_labels, np.int64)
        bad: list[dict] = []

        def good_records():
            for index in range(lo, hi):
                try:
                    example = get(index)
                except (ValueError, OSError) as err:  # decode check, missing file: skipped, and named
                    bad.append({"index": index, "error": str(err)})
                    continue
                counts[list(example.labels)] += 1
                yield prepare.encode_checked(example, index, num_labels)

        written = records.write_tfrecord(path, good_records())
        done = shards.finish_shard(path, written, counts, bad)
        skipped = f", {len(bad)} unreadable skipped" if bad else ""
        print(f"[beam] prepare: wrote {names[shard]} ({written} records{skipped})", flush=True)  # progress
    _counter("examples_read").inc(hi - lo)
    _counter("examples_written").inc(done["records"])
    _counter("examples_skipped").inc(len(done["bad"]))
    _counter("bytes_written").inc(epath.Path(path).stat().length)
    return shard


def _write_manifest(
    _written: list[int], out_dir: str, names: list[str], listing: prepare.Listing, hierarchy, extra
) -> None:
    done = shards.read_done(out_dir, names)
    bad = [entry for d in done for entry in d["bad"]]
    atomic.write_text(
        os.path.join(out_dir, BAD_IMAGES_NAME), "".join(json.dumps(b, sort_keys=True) + "\n" for b in bad)
    )
    extra = {**extra, "bad_images": {"count": len(bad), "file": BAD_IMAGES_NAME}}
    shards.write_manifest(out_dir, names, done, listing.label_names, hierarchy, extra)


def convert(
    listing: prepare.Listing,
    out_dir: str,
    *,
    num_shards: int | None = None,
    hierarchy: dict[str, list[str]] | None = None,
    overwrite: bool = False,
    max_side: int = 0,
    beam_config: ml_collections.ConfigDict | None = None,
    dry_run: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    barrier: Callable[[str], None] = shards.no_barrier,
) -> manifest.ShardSet | None:
    """`data.prepare.convert` as a Beam job: the same shard set, with unreadable images skipped and named.

    In a multi-host job process 0 launches the job and every process waits at `barrier`. Returns the
    shard set (None for a dry run).
    """
    if (done := prepare.finished(out_dir, overwrite)) is not None:
        return done
    if len(listing) <= 0:
        raise ValueError(f"{out_dir}: nothing to write")
    names = prepare.shard_names(len(listing), num_shards)
    if process_index == 0:
        if not dry_run:
            epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
            shards.remove_stale_shards(out_dir, names)
        extra = {"prepared_from": listing.prepared_from, **({"max_side": max_side} if max_side else {})}

        def build(pipeline) -> None:
            import apache_beam as beam

            (
                pipeline
                | "Shards" >> beam.Create(list(range(len(names))))
                | "SpreadShards" >> beam.Reshuffle()
                | "ConvertShard" >> beam.Map(_convert_shard, listing, out_dir, names, max_side)
                | "AllShards" >> beam.combiners.ToList()
                | "WriteManifest" >> beam.Map(_write_manifest, out_dir, names, listing, hierarchy, extra)
            )

        counters = beam_runner.run(build, beam_config or beam_runner.default_config(), name="prepare", dry_run=dry_run)
        if counters is None:
            return None
    barrier(f"beam prepare of {out_dir}")
    return manifest.load_manifest(out_dir, verify=False)


def converter(beam_config: ml_collections.ConfigDict) -> Callable[..., manifest.ShardSet | None]:
    """`convert` on `beam_config`'s runner, with `data.prepare.convert`'s signature (for `data.sides`)."""

    def run(listing: prepare.Listing, out_dir: str, **kwargs) -> manifest.ShardSet | None:
        return convert(listing, out_dir, beam_config=beam_config, **kwargs)

    return run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.beam_prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output shard-set directory")
    common.add_argument("--num_shards", type=int, default=None)
    common.add_argument("--max_side", type=int, default=0, help="shrink larger images to this longer side (0: keep)")
    common.add_argument("--hierarchy", default=None, help="JSON file, parent -> list of children")
    beam_runner.add_arguments(common)
    tfds_p = sub.add_parser("tfds", parents=[common])
    tfds_p.add_argument("--name", required=True)
    tfds_p.add_argument("--split", default="train")
    tfds_p.add_argument("--data_dir", default=None)
    tfds_p.add_argument("--image_key", default="image")
    tfds_p.add_argument("--label_key", default="label")
    folder_p = sub.add_parser("folder", parents=[common])
    folder_p.add_argument("--root", required=True)
    csv_p = sub.add_parser("csv", parents=[common])
    csv_p.add_argument("--csv", required=True)
    csv_p.add_argument("--label_separator", default=";")
    args = parser.parse_args(argv)
    listing: prepare.Listing
    if args.kind == "tfds":
        listing = prepare.TfdsListing(args.name, args.split, args.data_dir, args.image_key, args.label_key)
    elif args.kind == "folder":
        listing = prepare.folder_listing(args.root)
    else:
        listing = prepare.csv_listing(args.csv, label_separator=args.label_separator)
    from data import hierarchy as hierarchy_lib

    shard_set = convert(
        listing,
        args.out,
        num_shards=args.num_shards,
        hierarchy=hierarchy_lib.load_json(args.hierarchy) if args.hierarchy else None,
        max_side=args.max_side,
        beam_config=beam_runner.config_from_args(args),
        dry_run=args.dry_run,
    )
    if shard_set is not None:
        bad = shard_set.extra["bad_images"]["count"]
        print(
            f"{shard_set.directory}: {shard_set.num_records} records, {shard_set.num_labels} labels, {bad} bad images"
        )


if __name__ == "__main__":
    main()
