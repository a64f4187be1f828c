"""Jobs on data from where users keep it: an image-folder target, a multi-label CSV source, a TFDS target.

Each test writes the data, a config file (the tiny demo with `data.kind = "external"`, one
fine-tuning run a row) and runs
`python -m launch.main` on it end to end, then checks what the prepare stage made of the data and that
the report exists.
"""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from data import manifest, prepare, records
from tests import tfds_testlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("heron", "owl", "wren")
SOURCE_LABELS = ("bird", "fish", "heron", "owl", "trout", "wren")


def _image(seed: int, colour: int, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (20, 20, 3)).astype(np.uint8)
    pixels[..., colour % 3] += 150
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def write_folder_target(root, train_per_class=4, test_per_class=2):
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(n):
                fmt = "JPEG" if i % 2 else "PNG"
                (root / split / name / f"{i}.{fmt.lower()}").write_bytes(_image(1000 * c + i + 77 * len(split), c, fmt))


def write_csv_source(root, n=64):
    """Multi-label: every fourth image carries a second label (JFT-like)."""
    os.makedirs(root / "images")
    rows = ["path,label"]
    for i in range(n):
        first = SOURCE_LABELS[i % len(SOURCE_LABELS)]
        labels = [first] + ([SOURCE_LABELS[(i + 1) % len(SOURCE_LABELS)]] if i % 4 == 0 else [])
        (root / "images" / f"{i}.png").write_bytes(_image(i, i % len(SOURCE_LABELS)))
        rows.append(f"images/{i}.png,{';'.join(labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    tree = {"animal": ["bird", "fish"], "bird": ["heron", "owl", "wren"], "fish": ["trout"]}
    (root / "tree.json").write_text(json.dumps(tree))
    return tree


def write_config(path, source: dict, target: dict, dedup: bool = True) -> str:
    path.write_text(
        textwrap.dedent(f"""
        from configs import demo
        from data import sides

        def get_config():
            c = demo.get_config("tiny")
            c.data.kind = "external"
            c.data.target_name = "test_target"
            c.data.source = sides.side_config(**{source!r})
            c.data.target = sides.side_config(**{target!r})
            c.selection.size = 40
            c.dedup.enabled = {dedup!r}
            # These jobs test the data path: one fine-tuning run a row and a one-point grid (still
            # trained on the carved split and scored on validation) cost half the tiny demo's tail.
            c.finetune.seeds = (0,)
            c.finetune_sweep.learning_rates = (1e-3,)
            c.finetune_sweep.random_init_learning_rates = (3e-3,)
            return c
        """)
    )
    return str(path)


def launch(config: str, workdir, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "launch.main", f"--config={config}", f"--workdir={workdir}", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _ids(shard_set) -> list[str]:
    return [records.decode_example(r).example_id.decode() for f in shard_set.files for r in records.iter_records(f)]


@pytest.mark.slow
def test_folder_target_and_multilabel_csv_source_end_to_end(tmp_path):
    write_folder_target(tmp_path / "target")
    tree = write_csv_source(tmp_path / "source")
    config = write_config(
        tmp_path / "config.py",
        source=dict(
            kind="csv",
            path=str(tmp_path / "source"),
            train_split="labels.csv",
            hierarchy=str(tmp_path / "source" / "tree.json"),
            num_shards=3,
        ),
        target=dict(kind="folder", path=str(tmp_path / "target"), validation_fraction=0.25, validation_seed=3),
    )
    workdir = tmp_path / "work"
    launch(config, workdir)
    source = manifest.load_manifest(str(workdir / "data" / "source"))
    assert source.label_names == list(SOURCE_LABELS) and source.hierarchy == tree
    assert source.num_records == 64 and len(source.files) == 3
    assert sum(source.label_counts) == 64 + 16  # 16 images carry two labels
    assert source.extra["prepared_from"]["csv"] == str(tmp_path / "source" / "labels.csv")
    train, validation, test = (
        manifest.load_manifest(str(workdir / "data" / "target" / s)) for s in ("train", "validation", "test")
    )
    assert train.label_names == validation.label_names == test.label_names == list(CLASSES)
    assert (train.num_records, validation.num_records, test.num_records) == (9, 3, 6)  # one of 4 per class held out
    assert validation.label_counts == [1, 1, 1]
    assert sorted(_ids(train) + _ids(validation)) == sorted(
        f"{c}/{i}.{'jpeg' if i % 2 else 'png'}" for c in CLASSES for i in range(4)
    )
    report = (workdir / "report.md").read_text()
    assert "Entire source" in report and "Random initialization" in report
    (record,) = (workdir / "launches").iterdir()  # this launch: commit, command line, resolved config
    launched = json.loads(record.read_text())
    assert len(launched["git_commit"]) >= 40 and launched["argv"][1:3] == ["-m", "launch.main"]
    assert f"--config={config}" in launched["command"] and launched["config"]["data"]["target"]["kind"] == "folder"
    stages = json.loads((workdir / "stages" / "prepare.json").read_text())["summary"]
    assert stages["target_validation"] == 3 and stages["source_labels"] == 6

    # The carve is reproducible (same seed, same ids: same split) whatever the listing order.
    listing = prepare.folder_listing(str(tmp_path / "target" / "train"))
    reversed_listing = prepare.Subset(listing, list(range(len(listing)))[::-1], "reversed")
    _, a = prepare.carve_validation(listing, 0.25, 3)
    _, b = prepare.carve_validation(reversed_listing, 0.25, 3)
    assert (
        sorted(a.key(i)[1] for i in range(len(a)))
        == sorted(b.key(i)[1] for i in range(len(b)))
        == sorted(_ids(validation))
    )


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tfds_testlib.build(tmp_path_factory)


@pytest.mark.slow
def test_tfds_target_end_to_end(tmp_path, tfds_dir):
    """A TFDS dataset built offline (no registered builder in the job's process) as the target."""
    shards_dir = tmp_path / "prepared_source"
    write_csv_source(tmp_path / "source")
    prepare.convert_csv(str(tmp_path / "source" / "labels.csv"), str(shards_dir), num_shards=2)
    config = write_config(
        tmp_path / "config.py",
        source=dict(kind="shards", path=str(shards_dir), train_split=""),  # an already prepared shard set
        target=dict(kind="tfds", name="tiny_pets_for_test", data_dir=tfds_dir, train_split="train", test_split="test"),
        dedup=False,  # the tiny TFDS set's flat-colour images match every synthetic source image: dedup would drop all
    )
    workdir = tmp_path / "work"
    launch(config, workdir)
    train, test = (manifest.load_manifest(str(workdir / "data" / "target" / s)) for s in ("train", "test"))
    assert train.label_names == ["cat", "dog", "fox"] and (train.num_records, test.num_records) == (7, 3)
    assert train.extra["prepared_from"]["tfds"] == "tiny_pets_for_test"
    source = manifest.load_manifest(str(workdir / "data" / "source"))
    assert sorted(_ids(source)) == sorted(_ids(manifest.load_manifest(str(shards_dir))))
    assert (workdir / "report.md").exists()
