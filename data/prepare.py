"""Converts datasets into the project's shard sets: a TFDS dataset by name, an image folder, a CSV.

Every source is a `Listing` (label names, count, per-index example); `image_example` is the one
per-image step (also used by the Beam pipeline). Every conversion funnels into `write_shard_set`:
contiguous, even shards (sizes differ by at most one), each written atomically, resumably and, in a
multi-host job, by one process each; the manifest (files, counts, sha256, label names and counts,
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
import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from data import hierarchy as hierarchy_lib
from data import manifest, paths, records, shards
from data.shards import no_barrier

DEFAULT_RECORDS_PER_SHARD = 1024
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


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
    process_index: int = 0,
    process_count: int = 1,
    barrier: Callable[[str], None] = no_barrier,
) -> manifest.ShardSet:
    """Writes examples 0..num_examples-1 (fetched with `threads` threads) as an even shard set.

    Shard k holds the examples `shard_range(n, S, k)`; the writing (atomic, resumable, shards split
    over the processes, manifest last) is `data.shards.write_shard_set`.
    """
    if num_examples <= 0:
        raise ValueError(f"{out_dir}: nothing to write")
    num_shards = len(shard_names(num_examples, num_shards, prefix))

    def encoded(index: int) -> tuple[bytes, tuple[int, ...]]:
        example = get_example(index)
        return encode_checked(example, index, len(label_names)), example.labels

    with ThreadPoolExecutor(max(1, threads)) as pool:

        def shard_records(shard: int) -> Iterator[tuple[bytes, tuple[int, ...]]]:
            lo, hi = shard_range(num_examples, num_shards, shard)
            chunk = max(64, 4 * threads)  # bounded read-ahead: memory does not grow with the shard
            for start in range(lo, hi, chunk):
                yield from pool.map(encoded, range(start, min(hi, start + chunk)))

        return shards.write_shard_set(
            out_dir,
            shard_records,
            num_shards=num_shards,
            label_names=label_names,
            prefix=prefix,
            hierarchy=hierarchy,
            extra=extra,
            process_index=process_index,
            process_count=process_count,
            barrier=barrier,
        )


def shard_names(num_examples: int, num_shards: int | None, prefix: str = "data") -> list[str]:
    """File names of the even shard set of `num_examples` (`num_shards` or one per 1024 records)."""
    num_shards = num_shards or max(1, math.ceil(num_examples / DEFAULT_RECORDS_PER_SHARD))
    num_shards = min(num_shards, num_examples)
    return [shards.shard_name(prefix, shard, num_shards) for shard in range(num_shards)]


def shard_range(num_examples: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Listing indices [lo, hi) of one shard: contiguous, sizes within one."""
    return num_examples * shard // num_shards, num_examples * (shard + 1) // num_shards


def encode_checked(example: records.Example, index: int, num_labels: int) -> bytes:
    """The record of listing example `index`; a label outside the label names is an error."""
    for label in example.labels:
        if not 0 <= label < num_labels:
            raise ValueError(f"example {index}: label {label} not in [0, {num_labels})")
    return records.encode_example(example)


def finished(out_dir: str, overwrite: bool) -> manifest.ShardSet | None:
    if not overwrite and epath.Path(out_dir, manifest.MANIFEST_NAME).exists():
        return manifest.load_manifest(out_dir, verify=False)
    return None


def image_example(data: bytes, labels: Sequence[int], example_id: str, where: str) -> records.Example:
    """The per-image step of every converter (and of the Beam pipeline): one record from image bytes.

    Checks that the bytes are a readable image; JPEG/PNG are kept as stored (never re-encoded),
    any other format is converted to PNG so readers see JPEG/PNG only. `where` names the image in
    errors.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format in ("JPEG", "PNG"):
                image.verify()
                encoded = data
            else:
                image.load()
                buf = io.BytesIO()
                image.convert("RGB").save(buf, format="PNG")
                encoded = buf.getvalue()
    except Exception as err:  # PIL raises many types for bad files
        raise ValueError(f"{where}: unreadable image ({err})") from err
    return records.Example(encoded, tuple(int(label) for label in labels), example_id.encode())


def resize_example(example: records.Example, max_side: int) -> records.Example:
    """The example with its image shrunk (aspect kept) so its longer side is at most `max_side`.

    Smaller images are kept byte for byte; a shrunk one is re-encoded in its own format (JPEG at
    quality 95, otherwise PNG).
    """
    with Image.open(io.BytesIO(example.image)) as image:
        if max(image.size) <= max_side:
            return example
        fmt = "JPEG" if image.format == "JPEG" else "PNG"
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        shrunk = image.convert("RGB" if fmt == "JPEG" else image.mode).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    shrunk.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return dataclasses.replace(example, image=buf.getvalue())


class Resized:
    """A listing's examples resized by `resize_example` (a picklable `get_example`)."""

    def __init__(self, listing: Listing, max_side: int):
        self.listing, self.max_side = listing, max_side

    def __call__(self, index: int) -> records.Example:
        return resize_example(self.listing.example(index), self.max_side)


def example_fn(listing: Listing, max_side: int = 0) -> Callable[[int], records.Example]:
    """`index -> Example` of a listing, resized when `max_side` > 0."""
    return Resized(listing, max_side) if max_side else listing.example


# -------------------------------------------------------------------------------------- listings


class Listing:
    """The examples of one split wherever they are kept: label names, count, and per-index access."""

    label_names: list[str]
    prepared_from: dict[str, Any]

    def __len__(self) -> int:
        raise NotImplementedError

    def key(self, index: int) -> tuple[tuple[int, ...], str]:
        """(labels, example id) of one example, for splitting; cheaper than `example` where it can be."""
        example = self.example(index)
        return example.labels, example.example_id.decode()

    def example(self, index: int) -> records.Example:
        raise NotImplementedError


class FileListing(Listing):
    """Image files with their labels; ids are the paths relative to the listing's root."""

    def __init__(self, items: list[tuple[str, tuple[int, ...], str]], label_names: list[str], prepared_from: dict):
        self.items, self.label_names, self.prepared_from = items, label_names, prepared_from

    def __len__(self) -> int:
        return len(self.items)

    def key(self, index: int) -> tuple[tuple[int, ...], str]:
        _, labels, example_id = self.items[index]
        return labels, example_id

    def example(self, index: int) -> records.Example:
        path, labels, example_id = self.items[index]
        return image_example(epath.Path(path).read_bytes(), labels, example_id, path)


class TfdsListing(Listing):
    """One split (any TFDS split string) of a TFDS dataset prepared in `data_dir` (array_record)."""

    def __init__(self, name: str, split: str, data_dir: str | None, image_key: str, label_key: str):
        import tensorflow_datasets as tfds  # heavy; only conversion needs it

        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; prepare it first "
                f"(tfds build {name} --file_format=array_record); conversion never downloads"
            )
        self.source = tfds.data_source(
            name, split=split, data_dir=data_dir, download=False, decoders={image_key: tfds.decode.SkipDecoding()}
        )
        self.name, self.split, self.image_key, self.label_key = name, split, image_key, label_key
        self.data_dir = data_dir
        self.label_names = _label_names(builder.info.features[label_key])
        self.id_key = next((k for k in _ID_KEYS if k in builder.info.features), None)
        self.prepared_from = {
            "tfds": name,
            "split": split,
            "version": str(builder.version),
            "id_key": self.id_key,
        }

    def __len__(self) -> int:
        return len(self.source)

    def __reduce__(self):  # a Beam worker reopens the dataset rather than unpickling a file handle
        return TfdsListing, (self.name, self.split, self.data_dir, self.image_key, self.label_key)

    def _read(self, index: int) -> tuple[dict, tuple[int, ...], str]:
        element = self.source[index]
        labels = element[self.label_key]
        labels = (int(labels),) if np.ndim(labels) == 0 else tuple(int(v) for v in np.asarray(labels))
        key = element[self.id_key] if self.id_key else str(index)
        key = key.decode() if isinstance(key, bytes) else str(key)
        return element, labels, f"{self.name}/{self.split}/{key}"

    def key(self, index: int) -> tuple[tuple[int, ...], str]:
        _, labels, example_id = self._read(index)
        return labels, example_id

    def example(self, index: int) -> records.Example:
        element, labels, example_id = self._read(index)
        return image_example(element[self.image_key], labels, example_id, f"tfds:{example_id}[{index}]")


class Subset(Listing):
    """Some examples of a listing, in the given order."""

    def __init__(self, listing: Listing, indices: Sequence[int], part: str):
        self.listing, self.indices = listing, list(indices)
        self.label_names = listing.label_names
        self.prepared_from = {**listing.prepared_from, "part": part}

    def __len__(self) -> int:
        return len(self.indices)

    def key(self, index: int) -> tuple[tuple[int, ...], str]:
        return self.listing.key(self.indices[index])

    def example(self, index: int) -> records.Example:
        return self.listing.example(self.indices[index])


def carve_validation(listing: Listing, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """(train, validation): `fraction` of each class (by first label) moved to validation.

    Reproducible: within a class, examples are ranked by a seeded hash of their id, so the same ids
    give the same split whatever the listing order; every class keeps at least one training example.
    """
    by_class: dict[int, list[tuple[str, int]]] = {}
    for index in range(len(listing)):
        labels, example_id = listing.key(index)
        digest = hashlib.sha256(f"{seed}:{example_id}".encode()).hexdigest()
        by_class.setdefault(labels[0] if labels else -1, []).append((digest, index))
    validation: list[int] = []
    for members in by_class.values():
        members.sort()
        take = min(round(fraction * len(members)), len(members) - 1)
        validation += [index for _, index in members[:take]]
    held = set(validation)
    train = [i for i in range(len(listing)) if i not in held]
    part = {"validation_fraction": fraction, "validation_seed": seed}
    return Subset(listing, train, json.dumps({"train_of": part})), Subset(
        listing, sorted(validation), json.dumps({"validation_of": part})
    )


def convert(
    listing: Listing,
    out_dir: str,
    *,
    num_shards: int | None = None,
    hierarchy: dict[str, list[str]] | None = None,
    overwrite: bool = False,
    max_side: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    barrier: Callable[[str], None] = no_barrier,
) -> manifest.ShardSet:
    """Converts a listing into a shard set once (a finished one is left alone unless `overwrite`);
    `max_side` > 0 shrinks larger images to it (`resize_example`)."""
    if (done := finished(out_dir, overwrite)) is not None:
        return done
    return write_shard_set(
        out_dir,
        len(listing),
        example_fn(listing, max_side),
        label_names=listing.label_names,
        num_shards=num_shards,
        hierarchy=hierarchy,
        extra={"prepared_from": listing.prepared_from},
        process_index=process_index,
        process_count=process_count,
        barrier=barrier,
    )


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
    if (done := finished(out_dir, overwrite)) is not None:
        return done
    listing = TfdsListing(name, split, data_dir, image_key, label_key)
    return convert(listing, out_dir, num_shards=num_shards, hierarchy=hierarchy, overwrite=True)


# ------------------------------------------------------------------------------ folder and CSV


def _files_below(folder: epath.Path) -> list[epath.Path]:
    """Every file under `folder`, at any depth (epath has no rglob for every backend)."""
    found = []
    for entry in folder.iterdir():
        found.extend(_files_below(entry) if entry.is_dir() else [entry])
    return found


def folder_listing(root: str) -> FileListing:
    """`root/<class name>/<image>` (any depth below the class folder); labels in sorted folder order."""
    base = epath.Path(root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class folders")
    items: list[tuple[str, tuple[int, ...], str]] = []
    for label, name in enumerate(classes):
        for path in sorted(str(p) for p in _files_below(base / name) if p.suffix.lower() in IMAGE_EXTENSIONS):
            items.append((path, (label,), path[len(str(base)) :].lstrip("/")))
    return FileListing(items, classes, {"folder": paths.resolve(root)})


def csv_listing(csv_path: str, *, label_names: list[str] | None = None, label_separator: str = ";") -> FileListing:
    """Rows `path,label` (header optional; paths relative to the CSV's folder, or absolute / URLs).

    The label column holds one or more label names joined by `label_separator` (multi-label).
    Without `label_names`, the sorted set of names in the file is the label list.
    """
    csv_path = paths.resolve(csv_path)
    base = os.path.dirname(csv_path)
    text = epath.Path(csv_path).read_text(encoding="utf-8")
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
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
        location = path if paths.is_url(path) or os.path.isabs(path) else os.path.join(base, path)
        items.append((location, tuple(lookup[n] for n in names), path))
    return FileListing(items, label_names, {"csv": csv_path})


def convert_image_folder(
    root: str,
    out_dir: str,
    *,
    num_shards: int | None = None,
    hierarchy: dict[str, list[str]] | None = None,
    overwrite: bool = False,
) -> manifest.ShardSet:
    """`root/<class name>/<image>`: one folder per class; labels in sorted folder-name order."""
    if (done := finished(out_dir, overwrite)) is not None:
        return done
    return convert(folder_listing(root), out_dir, num_shards=num_shards, hierarchy=hierarchy, overwrite=True)


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
    """A CSV of image paths and labels (see `csv_listing`)."""
    if (done := finished(out_dir, overwrite)) is not None:
        return done
    listing = csv_listing(csv_path, label_names=label_names, label_separator=label_separator)
    return convert(listing, out_dir, num_shards=num_shards, hierarchy=hierarchy, overwrite=True)


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
