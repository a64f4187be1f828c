"""Converts datasets into the project's shard sets: a TFDS dataset by name, an image folder, a CSV.

Every converter funnels into `write_shard_set`: contiguous, even shards (sizes differ by at most
one), each written atomically, the manifest (files, counts, sha256, label names and counts,
hierarchy, the conversion settings) last. An output directory that already has a manifest is a
finished conversion and is left alone unless `overwrite`.

TFDS: the dataset must already be prepared in `data_dir` in a random-access file format
(`array_record`, what `tfds build --file_format=array_record` writes); nothing is ever
downloaded. Image bytes are copied as stored (JPEG/PNG), never re-encoded.

CLI:
  python -m data.prepare tfds --name=oxford_iiit_pet --data-dir=~/tensorflow_datasets \
      --out=WORK/data/target --splits train=train test=test
  python -m data.prepare folder --root=IMAGES/train --out=WORK/data/target/train
  python -m data.prepare csv --csv=labels.csv --out=WORK/data/source --hierarchy=tree.json
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from data import hierarchy as hierarchy_lib
from data import manifest, records

DEFAULT_RECORDS_PER_SHARD = 1024
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _shard_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def write_shard_set(
    out_dir: str,
    num_examples: int,
    get_example: Callable[[int], records.Example],
    *,
    label_names: Sequence[str],
    num_shards: int | None = None,
    hierarchy: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
    threads: int = 8,
    prefix: str = "data",
) -> manifest.ShardSet:
    """Writes examples 0..num_examples-1 (fetched with `threads` threads) as an even shard set."""
    if num_examples <= 0:
        raise ValueError(f"{out_dir}: nothing to write")
    num_shards = num_shards or max(1, math.ceil(num_examples / DEFAULT_RECORDS_PER_SHARD))
    num_shards = min(num_shards, num_examples)
    os.makedirs(out_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(out_dir, f"{prefix}-*.tfrecord*")):
        os.remove(stale)  # left by an interrupted run; the manifest did not list it
    label_counts = np.zeros(len(label_names), np.int64)

    def encoded(index: int) -> tuple[bytes, tuple[int, ...]]:
        example = get_example(index)
        for label in example.labels:
            if not 0 <= label < len(label_names):
                raise ValueError(f"example {index}: label {label} not in [0, {len(label_names)})")
        return records.encode_example(example), example.labels

    def shard_records(lo: int, hi: int, pool: ThreadPoolExecutor):
        chunk = max(64, 4 * threads)  # bounded read-ahead: memory does not grow with the shard
        for start in range(lo, hi, chunk):
            for data, labels in pool.map(encoded, range(start, min(hi, start + chunk))):
                for label in labels:
                    label_counts[label] += 1
                yield data

    files, counts = [], []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for shard in range(num_shards):
            lo, hi = num_examples * shard // num_shards, num_examples * (shard + 1) // num_shards
            path = os.path.join(out_dir, _shard_name(prefix, shard, num_shards))
            counts.append(records.write_tfrecord(path, shard_records(lo, hi, pool)))
            files.append(path)
    if hierarchy:
        hierarchy_lib.validate(hierarchy)
    manifest.write_manifest(out_dir, files, counts, list(label_names), label_counts.tolist(), hierarchy, extra)
    return manifest.load_manifest(out_dir, verify=False)


def _done(out_dir: str, overwrite: bool) -> manifest.ShardSet | None:
    if not overwrite and os.path.exists(os.path.join(out_dir, manifest.MANIFEST_NAME)):
        return manifest.load_manifest(out_dir, verify=False)
    return None


def _image_bytes(data: bytes, where: str) -> bytes:
    """Checks that the bytes are a readable image; keeps JPEG/PNG as is, re-encodes others as PNG."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format in ("JPEG", "PNG"):
                image.verify()
                return data
            image.load()
            rgb = image.convert("RGB")
    except Exception as err:  # PIL raises many types for bad files
        raise ValueError(f"{where}: unreadable image ({err})") from err
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- TFDS

_ID_KEYS = ("id", "image/filename", "file_name", "filename", "image_id")


def _label_names(feature) -> list[str]:
    """Names of a ClassLabel, or of the ClassLabel inside a Sequence (multi-label)."""
    inner = getattr(feature, "feature", feature)
    names = getattr(inner, "names", None)
    if not names:
        raise ValueError(f"label feature {feature!r} is not a ClassLabel (or a Sequence of one)")
    return list(names)


def convert_tfds(
    name: str,
    out_dir: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
    num_shards: int | None = None,
    hierarchy: dict[str, list[str]] | None = None,
    overwrite: bool = False,
) -> manifest.ShardSet:
    """Converts one split (any TFDS split spec, e.g. "train[:90%]") of a prepared TFDS dataset."""
    if (done := _done(out_dir, overwrite)) is not None:
        return done
    import tensorflow_datasets as tfds  # heavy; only conversion needs it

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; prepare it first "
            f"(tfds build {name} --file_format=array_record); conversion never downloads"
        )
    source = tfds.data_source(
        name, split=split, data_dir=data_dir, download=False, decoders={image_key: tfds.decode.SkipDecoding()}
    )
    label_names = _label_names(builder.info.features[label_key])
    id_key = next((k for k in _ID_KEYS if k in builder.info.features), None)

    def get(index: int) -> records.Example:
        element = source[index]
        labels = element[label_key]
        labels = (int(labels),) if np.ndim(labels) == 0 else tuple(int(v) for v in np.asarray(labels))
        key = element[id_key] if id_key else str(index)
        key = key.decode() if isinstance(key, bytes) else str(key)
        where = f"tfds:{name}/{split}[{index}]"
        return records.Example(_image_bytes(element[image_key], where), labels, f"{name}/{split}/{key}".encode())

    return write_shard_set(
        out_dir,
        len(source),
        get,
        label_names=label_names,
        num_shards=num_shards,
        hierarchy=hierarchy,
        extra={"prepared_from": {"tfds": name, "split": split, "version": str(builder.version), "id_key": id_key}},
    )


# ------------------------------------------------------------------------------ folder and CSV


def _convert_files(
    out_dir: str,
    items: list[tuple[str, tuple[int, ...], str]],
    label_names: list[str],
    num_shards: int | None,
    hierarchy: dict[str, list[str]] | None,
    extra: dict[str, Any],
) -> manifest.ShardSet:
    def get(index: int) -> records.Example:
        path, labels, example_id = items[index]
        with open(path, "rb") as handle:
            data = handle.read()
        return records.Example(_image_bytes(data, path), labels, example_id.encode())

    return write_shard_set(
        out_dir, len(items), get, label_names=label_names, num_shards=num_shards, hierarchy=hierarchy, extra=extra
    )


def convert_image_folder(
    root: str,
    out_dir: str,
    *,
    num_shards: int | None = None,
    hierarchy: dict[str, list[str]] | None = None,
    overwrite: bool = False,
) -> manifest.ShardSet:
    """`root/<class name>/<image>`: one folder per class; labels in sorted folder-name order."""
    if (done := _done(out_dir, overwrite)) is not None:
        return done
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root}: no class folders")
    items = []
    for label, name in enumerate(classes):
        for dirpath, _, filenames in sorted(os.walk(os.path.join(root, name))):
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    path = os.path.join(dirpath, filename)
                    items.append((path, (label,), os.path.relpath(path, root)))
    return _convert_files(
        out_dir, items, classes, num_shards, hierarchy, {"prepared_from": {"folder": os.path.abspath(root)}}
    )


def convert_csv(
    csv_path: str,
    out_dir: str,
    *,
    label_names: list[str] | None = None,
    label_separator: str = ";",
    num_shards: int | None = None,
    hierarchy: dict[str, list[str]] | None = None,
    overwrite: bool = False,
) -> manifest.ShardSet:
    """Rows `path,label` (header optional; paths relative to the CSV's folder).

    The label column holds one or more label names joined by `label_separator` (multi-label).
    Without `label_names`, the sorted set of names in the file is the label list.
    """
    if (done := _done(out_dir, overwrite)) is not None:
        return done
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    parsed = []
    for line_no, row in enumerate(rows, 1):
        if len(row) < 2:
            raise ValueError(f"{csv_path}: row {line_no}: expected path,label")
        names = [n.strip() for n in row[1].split(label_separator) if n.strip()]
        parsed.append((row[0].strip(), names))
    label_names = label_names or sorted({n for _, names in parsed for n in names})
    lookup = {n: i for i, n in enumerate(label_names)}
    items = []
    for path, names in parsed:
        unknown = [n for n in names if n not in lookup]
        if unknown:
            raise ValueError(f"{csv_path}: {path}: unknown labels {unknown}")
        items.append((os.path.join(base, path), tuple(lookup[n] for n in names), path))
    return _convert_files(
        out_dir, items, label_names, num_shards, hierarchy, {"prepared_from": {"csv": os.path.abspath(csv_path)}}
    )


# ------------------------------------------------------------------------------------------ CLI


def _hierarchy_arg(args: argparse.Namespace, label_names: Callable[[], list[str]]) -> dict[str, list[str]] | None:
    if args.hierarchy:
        return hierarchy_lib.load_json(args.hierarchy)
    if getattr(args, "wordnet_is_a", None):
        return hierarchy_lib.wordnet_hierarchy(label_names(), args.wordnet_is_a)
    return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output shard-set directory (tfds: parent of one per split)")
    common.add_argument("--num-shards", type=int, default=None)
    common.add_argument("--hierarchy", default=None, help="JSON file, parent -> list of children")
    common.add_argument("--overwrite", action="store_true")
    tfds_p = sub.add_parser("tfds", parents=[common])
    tfds_p.add_argument("--name", required=True)
    tfds_p.add_argument("--data-dir", default=None)
    tfds_p.add_argument("--splits", nargs="+", default=["train=train", "test=test"], help="OUT_NAME=TFDS_SPLIT ...")
    tfds_p.add_argument("--image-key", default="image")
    tfds_p.add_argument("--label-key", default="label")
    tfds_p.add_argument("--wordnet-is-a", default=None, help="ImageNet wordnet.is_a.txt (labels must be wnids)")
    folder_p = sub.add_parser("folder", parents=[common])
    folder_p.add_argument("--root", required=True)
    csv_p = sub.add_parser("csv", parents=[common])
    csv_p.add_argument("--csv", required=True)
    csv_p.add_argument("--label-separator", default=";")
    args = parser.parse_args(argv)

    if args.kind == "tfds":

        def tfds_labels() -> list[str]:
            import tensorflow_datasets as tfds

            return _label_names(tfds.builder(args.name, data_dir=args.data_dir).info.features[args.label_key])

        tree = _hierarchy_arg(args, tfds_labels)
        for spec in args.splits:
            out_name, _, split = spec.partition("=")
            shard_set = convert_tfds(
                args.name,
                os.path.join(args.out, out_name),
                split=split or out_name,
                data_dir=args.data_dir,
                image_key=args.image_key,
                label_key=args.label_key,
                num_shards=args.num_shards,
                hierarchy=tree,
                overwrite=args.overwrite,
            )
            print(f"{shard_set.directory}: {shard_set.num_records} records, {shard_set.num_labels} labels")
        return
    tree = _hierarchy_arg(args, list)
    if args.kind == "folder":
        shard_set = convert_image_folder(
            args.root, args.out, num_shards=args.num_shards, hierarchy=tree, overwrite=args.overwrite
        )
    else:
        shard_set = convert_csv(
            args.csv,
            args.out,
            label_separator=args.label_separator,
            num_shards=args.num_shards,
            hierarchy=tree,
            overwrite=args.overwrite,
        )
    print(f"{shard_set.directory}: {shard_set.num_records} records, {shard_set.num_labels} labels")


if __name__ == "__main__":
    main()
