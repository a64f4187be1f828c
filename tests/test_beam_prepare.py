"""Source preparation as a Beam pipeline (direct runner): the in-process converter's bytes with 1 and 2
workers, unreadable images skipped and named in bad_images.jsonl, TFDS input, resizing, a killed run
resumed to the same bytes, the dry run, and launch.main with both jobs on Beam."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from data import beam_prepare, beam_runner, manifest, prepare, records
from tests import tfds_testlib
from tests.test_real_data import _image, write_csv_source, write_folder_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return tfds_testlib.build(tmp_path_factory)


def direct(workers: int):
    config = beam_runner.default_config()
    config.direct_num_workers = workers
    config.direct_running_mode = "multi_processing" if workers > 1 else "in_memory"
    return config


def shard_bytes(shard_set: manifest.ShardSet) -> dict[str, bytes]:
    return {os.path.basename(f): open(f, "rb").read() for f in shard_set.files}


def without_bad_images(shard_set: manifest.ShardSet) -> dict:
    extra = {k: v for k, v in shard_set.extra.items() if k != "bad_images"}
    return {
        **vars(shard_set),
        "directory": None,
        "files": [os.path.basename(f) for f in shard_set.files],
        "extra": extra,
    }


def test_csv_source_equals_inprocess_with_one_and_two_workers(tmp_path):
    tree = write_csv_source(tmp_path / "source")
    listing = prepare.csv_listing(str(tmp_path / "source" / "labels.csv"))
    reference = prepare.convert(listing, str(tmp_path / "inprocess"), num_shards=3, hierarchy=tree)
    for workers in (1, 2):
        out = str(tmp_path / f"beam{workers}")
        shard_set = beam_prepare.convert(listing, out, num_shards=3, hierarchy=tree, beam_config=direct(workers))
        assert shard_set is not None
        assert shard_bytes(shard_set) == shard_bytes(reference), f"{workers} worker(s)"
        assert without_bad_images(manifest.load_manifest(out)) == without_bad_images(reference)
        assert shard_set.extra["bad_images"] == {"count": 0, "file": "bad_images.jsonl"}
        assert open(os.path.join(out, "bad_images.jsonl")).read() == ""
        assert not [n for n in os.listdir(out) if n.endswith(".json") and n != "manifest.json"]  # sidecars gone


def test_unreadable_images_are_skipped_counted_and_named(tmp_path, capsys):
    write_folder_target(tmp_path / "images", train_per_class=4, test_per_class=0)
    root = tmp_path / "images" / "train"
    (root / "owl" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "wren" / "truncated.jpg").write_bytes(_image(5, 2, "JPEG")[:60])
    out = str(tmp_path / "out")
    beam_prepare.main(["folder", f"--root={root}", f"--out={out}", "--num_shards=2"])
    shard_set = manifest.load_manifest(out)
    assert shard_set.num_records == 12 and shard_set.label_counts == [4, 4, 4]
    assert shard_set.extra["bad_images"]["count"] == 2
    bad = [json.loads(line) for line in open(os.path.join(out, "bad_images.jsonl"))]
    assert sorted(os.path.basename(b["error"].split(":")[0]) for b in bad) == ["broken.png", "truncated.jpg"]
    assert all("unreadable image" in b["error"] for b in bad)
    assert "2 bad images" in capsys.readouterr().out
    ids = {records.decode_example(r).example_id for f in shard_set.files for r in records.iter_records(f)}
    assert b"owl/broken.png" not in ids and len(ids) == 12


def test_tfds_source_and_resize(tfds_dir, tmp_path):
    listing = prepare.TfdsListing("tiny_pets_for_test", "train", tfds_dir, "image", "label")
    reference = prepare.convert(listing, str(tmp_path / "inprocess"), num_shards=2)
    beam = beam_prepare.convert(listing, str(tmp_path / "beam"), num_shards=2, beam_config=direct(1))
    assert beam is not None
    assert shard_bytes(beam) == shard_bytes(reference) and beam.record_counts == [3, 4]
    write_folder_target(tmp_path / "big", train_per_class=2, test_per_class=0)  # 20x20 images
    small = beam_prepare.convert(
        prepare.folder_listing(str(tmp_path / "big" / "train")), str(tmp_path / "r"), max_side=8
    )
    assert small is not None
    for f in small.files:
        for r in records.iter_records(f):
            with Image.open(io.BytesIO(records.decode_example(r).image)) as image:
                assert max(image.size) == 8 and image.format in ("PNG", "JPEG")
    assert small.extra["max_side"] == 8


_KILLED = """
import sys
sys.path.insert(0, {root!r})
from data import beam_prepare, prepare
beam_prepare.convert(prepare.csv_listing({csv!r}), {out!r}, num_shards=64)
"""


def test_killed_prepare_resumes_to_the_same_bytes(tmp_path):
    write_csv_source(tmp_path / "source", n=256)
    csv_path = str(tmp_path / "source" / "labels.csv")
    out = str(tmp_path / "out")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED.format(root=ROOT, csv=csv_path, out=out)], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not any(n.endswith(".tfrecord.json") for n in (os.listdir(out) if os.path.isdir(out) else [])):
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [n for n in os.listdir(out) if n.endswith(".tfrecord.json")]
    assert 0 < len(finished) < 64
    with pytest.raises(manifest.ManifestError):
        manifest.load_manifest(out)
    resumed = beam_prepare.convert(prepare.csv_listing(csv_path), out, num_shards=64)
    assert resumed is not None
    reference = prepare.convert(prepare.csv_listing(csv_path), str(tmp_path / "reference"), num_shards=64)
    assert shard_bytes(resumed) == shard_bytes(reference)
    assert sorted(os.listdir(out)) == sorted(["manifest.json", "bad_images.jsonl", *shard_bytes(reference)])


def test_dry_run_prints_the_graph_and_writes_nothing(tmp_path, capsys):
    write_folder_target(tmp_path / "images", train_per_class=1, test_per_class=0)
    out = str(tmp_path / "out")
    beam_prepare.main(
        [
            "folder",
            f"--root={tmp_path / 'images' / 'train'}",
            f"--out={out}",
            "--runner=FlinkRunner",
            "--flink_master=localhost:8081",
            "--dry_run",
        ]
    )
    printed = capsys.readouterr().out
    assert "--runner=FlinkRunner --flink_master=localhost:8081" in printed
    assert "transform: ConvertShard  <- SpreadShards" in printed and "transform: WriteManifest  <- AllShards" in printed
    assert not os.path.exists(out)


@pytest.mark.slow
def test_launch_main_with_both_jobs_on_beam(tmp_path):
    """`python -m launch.main` with data.preparer=beam and selection.writer=beam: a bad source image is
    listed, not fatal; both jobs log their counters; the selected sets are complete and byte-identical
    to the select stage's with the in-process writer."""
    from tests.test_real_data import launch, write_config

    write_folder_target(tmp_path / "target")
    write_csv_source(tmp_path / "source")
    (tmp_path / "source" / "images" / "broken.png").write_bytes(b"not an image")
    with open(tmp_path / "source" / "labels.csv", "a") as handle:
        handle.write("images/broken.png,owl\n")
    config = write_config(
        tmp_path / "config.py",
        source=dict(kind="csv", path=str(tmp_path / "source"), train_split="labels.csv", num_shards=3),
        target=dict(kind="folder", path=str(tmp_path / "target")),
    )
    workdir = tmp_path / "work"
    result = launch(config, workdir, "--config.data.preparer=beam", "--config.selection.writer=beam")
    assert "'prepare/examples_skipped': 1" in result.stdout and "'prepare/examples_written': 64" in result.stdout
    assert result.stdout.count("[beam] select: done") == 2  # one job per method (same, elastic)
    source = manifest.load_manifest(str(workdir / "data" / "source"))
    assert source.num_records == 64 and source.extra["bad_images"]["count"] == 1
    (bad,) = [json.loads(line) for line in open(workdir / "data" / "source" / "bad_images.jsonl")]
    assert bad["error"].startswith(str(tmp_path / "source" / "images" / "broken.png"))
    for method in ("same", "elastic"):
        selected = manifest.load_manifest(str(workdir / "selected" / method))
        assert selected.num_records == 40
    assert (workdir / "report.md").exists()

    # The select stage again with the in-process writer, into a copy of the work dir: the same bytes.
    again = tmp_path / "again"
    shutil.copytree(workdir, again)
    shutil.rmtree(again / "selected")
    (again / "stages" / "select.json").unlink()
    rerun = launch(config, again, "--stages=select", "--config.data.preparer=beam", "--allow_config_change")
    assert "[beam] select" not in rerun.stdout  # selection.writer is back at its default, inprocess
    for method in ("same", "elastic"):
        names = sorted(os.listdir(workdir / "selected" / method))
        assert names == sorted(os.listdir(again / "selected" / method))
        for name in names:  # the manifests name their source dir, which is the copy's
            ours = (again / "selected" / method / name).read_bytes().replace(str(again).encode(), str(workdir).encode())
            assert (workdir / "selected" / method / name).read_bytes() == ours, name
