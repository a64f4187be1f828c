"""Where each side of a job (the source corpus, the target task) comes from: its config and checks.

`data.kind = "embedded"` renders both sides offline (data/embedded.py). `data.kind = "external"`
reads each side from where users keep it, independently, as `data.source` and `data.target` say:

  kind    "tfds"     a TFDS dataset by `name` (prepared in `data_dir`; splits are TFDS split strings,
                     e.g. "train[:90%]"); nothing is ever downloaded
          "folder"   an image folder, one sub-folder per class, at `path`/<split>
          "csv"      a CSV of image paths and one or more labels (multi-label: "a;b") at `path`/<split>
          "shards"   a shard set this project already prepared (a directory with manifest.json) at
                     `path`/<split>
          "embedded" that side rendered from `data.embedded`
          "merged"   source only: several corpora in one label space (data/merged.py); `parts` holds
                     a side config per corpus, by name; `prefix_labels` keeps their labels apart
  train_split, test_split   TFDS split strings, or sub-paths under `path` ("" = `path` itself); the
                     source reads `train_split` only
  hierarchy          JSON file parent -> children, or `wordnet_is_a`: "parent child" wnid pairs
                     (ImageNet's wordnet.is_a.txt; the label names must be wnids)
  validation_fraction  target: this fraction of each class of the training split is carved off
                     (seeded by `validation_seed`, the same for the same ids) as the validation split

The prepare stage converts each side once into the record format (`data.prepare`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ml_collections

from data import hierarchy as hierarchy_lib
from data import manifest, paths, prepare, records, shards

DATA_KINDS = ("embedded", "external")
SIDE_KINDS = ("tfds", "folder", "csv", "shards", "embedded", "merged")
SIDES = ("source", "target")


def side_config(kind: str = "tfds", **fields) -> ml_collections.ConfigDict:
    """One side's fields with their defaults; `fields` overrides them (e.g. name="oxford_iiit_pet")."""
    c = ml_collections.ConfigDict()
    c.kind = kind
    c.name = ""  # tfds: dataset name
    c.data_dir = ""  # tfds: where it is prepared ("" = TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.path = ""  # folder / csv / shards: root of the data (local or gs://)
    c.train_split = "train"
    c.test_split = "test"
    c.image_key = "image"  # tfds feature names
    c.label_key = "label"
    c.label_separator = ";"  # csv: between the label names of one image
    c.hierarchy = ""  # JSON file: parent -> list of children
    c.wordnet_is_a = ""  # "parent child" WordNet id pairs
    c.num_shards = 0  # 0: one shard per 1024 records
    c.max_side = 0  # > 0: images with a longer side are shrunk to it when prepared (0: kept as stored)
    c.validation_fraction = 0.0
    c.validation_seed = 0
    c.parts = ml_collections.ConfigDict()  # merged: name -> side config of each corpus
    c.prefix_labels = False  # merged: "<part>/<label>" instead of one label per name
    for key, value in fields.items():
        c[key] = value
    return c


def split_location(side: ml_collections.ConfigDict, split: str) -> str:
    """Folder / CSV file / shard-set directory of one split of a non-TFDS side."""
    return paths.resolve(os.path.join(side.path, split) if split else side.path)


def side_splits(side_name: str, side: ml_collections.ConfigDict) -> dict[str, str]:
    """Output split name -> the side's split spec: the source has one split, the target two."""
    if side_name == "source":
        return {"train": side.train_split}
    return {"train": side.train_split, "test": side.test_split}


def tfds_data_dir(side: ml_collections.ConfigDict) -> str:
    default = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
    return paths.resolve(side.data_dir or default)


class DataConfigError(ValueError):
    """One line naming the data key and what it accepts (launch shows it as a config error)."""


def _error(key: str, value, accepts: str) -> DataConfigError:
    return DataConfigError(f"config key '{key}' = {value!r}: must be {accepts}")


def _check_side(side_name: str, side: ml_collections.ConfigDict, check_paths: bool) -> None:
    key = f"data.{side_name}"
    if side.kind not in SIDE_KINDS:
        raise _error(f"{key}.kind", side.kind, "one of " + ", ".join(repr(k) for k in SIDE_KINDS))
    if not isinstance(side.max_side, int) or side.max_side < 0:
        raise _error(f"{key}.max_side", side.max_side, "an integer >= 0 (0 = images kept as stored)")
    if not isinstance(side.num_shards, int) or side.num_shards < 0:
        raise _error(f"{key}.num_shards", side.num_shards, "an integer >= 0 (0 = one shard per 1024 records)")
    if not 0 <= side.validation_fraction < 1:
        raise _error(f"{key}.validation_fraction", side.validation_fraction, "a number in [0, 1)")
    if side.validation_fraction and side_name.startswith("source"):
        raise _error(
            f"{key}.validation_fraction", side.validation_fraction, "0 (only the target has a validation split)"
        )
    for file_key in ("hierarchy", "wordnet_is_a"):
        if check_paths and side[file_key] and paths.missing(side[file_key]):
            raise _error(f"{key}.{file_key}", side[file_key], "an existing file ('' for none); nothing is there")
    if side.kind == "embedded":
        return
    if side.kind == "merged":
        if side_name != "source" or not side.parts:
            raise _error(f"{key}.parts", side.parts, "named side configs of the corpora to merge (source only)")
        for part_name, part in side.parts.items():
            if part.kind in ("merged", "embedded"):
                raise _error(f"{key}.parts.{part_name}.kind", part.kind, "a corpus kind: tfds, folder, csv or shards")
            _check_side(f"{side_name}.parts.{part_name}", part, check_paths)
        return
    if side.kind == "tfds":
        if not side.name:
            raise _error(f"{key}.name", side.name, "a TFDS dataset name when kind is 'tfds'")
        data_dir = tfds_data_dir(side)
        if check_paths and paths.missing(os.path.join(data_dir, side.name.split("/")[0])):
            raise _error(
                f"{key}.name",
                side.name,
                f"a dataset prepared under {data_dir} (data.{side_name}.data_dir); it is not there "
                f"(prepare it with: tfds build {side.name} --data_dir={data_dir} --file_format=array_record)",
            )
        return
    if not side.path:
        raise _error(f"{key}.path", side.path, f"the location of the data when kind is {side.kind!r}")
    for split_key, split in (("train_split", side.train_split), ("test_split", side.test_split)):
        if not check_paths or (side_name.startswith("source") and split_key == "test_split"):
            continue
        location = split_location(side, split)
        if paths.missing(location):
            what = {"folder": "an image folder", "csv": "a CSV file", "shards": "a shard set"}[side.kind]
            raise _error(f"{key}.{split_key}", split, f"{what} under data.{side_name}.path; {location} does not exist")


def check_data_config(data: ml_collections.ConfigDict, check_paths: bool = True) -> None:
    """Kinds, numbers and (with `check_paths`) that every input path exists; raises DataConfigError."""
    if data.kind not in DATA_KINDS:
        raise _error("data.kind", data.kind, "one of " + ", ".join(repr(k) for k in DATA_KINDS))
    if data.kind == "embedded":
        return
    for side_name in SIDES:
        if side_name not in data:
            raise _error(f"data.{side_name}", None, "set when data.kind is 'external' (data.sides.side_config())")
        _check_side(side_name, data[side_name], check_paths)


# ------------------------------------------------------------------------------------ preparation


class ShardSetListing(prepare.Listing):
    """A shard set this project already wrote, as a listing (to carve a validation split or copy it)."""

    def __init__(self, directory: str):
        from data.sources import ShardSetSource

        self.shard_set = manifest.load_manifest(directory)
        self.source = ShardSetSource(self.shard_set.files)
        self.label_names = self.shard_set.label_names
        self.prepared_from = {"shards": directory, **self.shard_set.extra}

    def __len__(self) -> int:
        return len(self.source)

    def example(self, index: int) -> records.Example:
        return records.decode_example(self.source[index][1])


def listing(side: ml_collections.ConfigDict, split: str) -> prepare.Listing:
    """The examples of one split of a side, wherever they are kept."""
    if side.kind == "merged":  # each corpus's own training split
        from data import merged

        parts = []
        for name, part in side.parts.items():
            part_listing = listing(part, part.train_split)
            parts.append((name, part_listing, _hierarchy(part, part_listing)))
        return merged.MergedListing(parts, prefix_labels=bool(side.prefix_labels))
    if side.kind == "tfds":
        return prepare.TfdsListing(side.name, split, side.data_dir or None, side.image_key, side.label_key)
    location = split_location(side, split)
    if side.kind == "folder":
        return prepare.folder_listing(location)
    if side.kind == "csv":
        return prepare.csv_listing(location, label_separator=side.label_separator)
    if side.kind == "shards":
        return ShardSetListing(location)
    raise ValueError(f"side kind {side.kind!r} has no listing")


def _hierarchy(side: ml_collections.ConfigDict, examples: prepare.Listing) -> dict[str, list[str]] | None:
    if side.kind == "merged":
        return examples.hierarchy or None  # type: ignore[attr-defined]  # the parts', merged (data/merged.py)
    if side.hierarchy:
        return hierarchy_lib.load_json(paths.resolve(side.hierarchy))
    if side.wordnet_is_a:
        return hierarchy_lib.wordnet_hierarchy(examples.label_names, paths.resolve(side.wordnet_is_a))
    if isinstance(examples, ShardSetListing):
        return examples.shard_set.hierarchy or None
    return None


def prepare_data(
    data: ml_collections.ConfigDict,
    *,
    source_dir: str,
    target_root: str,
    target_dir: Callable[[str], str],
    process_index: int = 0,
    process_count: int = 1,
    barrier: Callable[[str], None] = shards.no_barrier,
    convert: Callable[..., object] = prepare.convert,
) -> None:
    """Converts the source into `source_dir` and the target's splits into `target_dir(split)` (folders
    of `target_root`, where the embedded builder writes both), once.

    Each conversion is skipped when its manifest exists, resumes shard by shard, and splits its
    shards over the processes (`data.prepare.write_shard_set`); `convert` is `data.prepare.convert`
    or the Beam pipeline's (`data.beam_prepare.converter`).
    """
    from data import embedded

    kinds = {name: "embedded" if data.kind == "embedded" else data[name].kind for name in SIDES}
    if process_index == 0:  # rendered whole by one process (the same bytes would clash in a shared dir)
        if kinds["source"] == "embedded" and paths.missing(os.path.join(source_dir, manifest.MANIFEST_NAME)):
            embedded.build_source(source_dir, data.embedded)
        if kinds["target"] == "embedded" and any(
            paths.missing(os.path.join(target_dir(s), manifest.MANIFEST_NAME)) for s in ("train", "test")
        ):
            embedded.build_target(target_root, data.embedded)
    if "embedded" in kinds.values():
        barrier("embedded data rendered")
    multihost = dict(process_index=process_index, process_count=process_count, barrier=barrier)
    for side_name in SIDES:
        if kinds[side_name] == "embedded":
            continue
        side = data[side_name]
        for out, split in side_splits(side_name, side).items():
            parts = ("train", "validation") if out == "train" and side.validation_fraction else (out,)
            dirs = {part: target_dir(part) if side_name == "target" else source_dir for part in parts}
            if not any(paths.missing(os.path.join(d, manifest.MANIFEST_NAME)) for d in dirs.values()):
                continue  # converted by an earlier run: not even listed again
            examples = listing(side, split)
            tree = _hierarchy(side, examples)
            pieces = (
                prepare.carve_validation(examples, side.validation_fraction, side.validation_seed)
                if len(parts) == 2
                else (examples,)
            )
            for part, piece in zip(parts, pieces, strict=True):
                convert(
                    piece,
                    dirs[part],
                    num_shards=side.num_shards or None,
                    hierarchy=tree,
                    max_side=side.max_side,
                    **multihost,
                )
