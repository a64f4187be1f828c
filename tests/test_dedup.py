"""Near-duplicate removal: copies of target images (exact, re-encoded, edited) leave the source."""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from data import dedup, manifest, prepare, records
from launch.workdir import Workspace


def _smooth_image(seed: int) -> Image.Image:
    """A low-frequency random image (JPEG keeps it recognisable, unlike pixel noise)."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((48, 40), Image.Resampling.BILINEAR)


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _pixel_features(images: np.ndarray) -> np.ndarray:
    """A real (if simple) feature function: 4x4-pooled, mean-centred pixels."""
    b, h, w, c = images.shape
    pooled = images.reshape(b, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(b, -1)
    return pooled - pooled.mean(axis=1, keepdims=True)


def _write(directory, images: list[bytes], ids: list[str], num_shards=2):
    return prepare.write_shard_set(
        str(directory),
        len(images),
        lambda i: records.Example(images[i], (i % 3,), ids[i].encode()),
        label_names=["a", "b", "c"],
        num_shards=num_shards,
    )


def test_removes_near_duplicates_of_train_and_test(tmp_path):
    targets = [_smooth_image(100 + k) for k in range(6)]
    _write(tmp_path / "target_train", [_encode(t) for t in targets[:4]], [f"t{k}" for k in range(4)])
    _write(tmp_path / "target_test", [_encode(t) for t in targets[4:]], ["t4", "t5"], num_shards=1)

    source_images = [_encode(_smooth_image(k)) for k in range(12)]
    source_ids = [f"s{k}" for k in range(12)]
    edited = np.asarray(targets[5], np.int16) + np.random.default_rng(0).integers(-6, 7, (40, 48, 3))
    copies = {
        "copy-exact": _encode(targets[0]),
        "copy-jpeg": _encode(targets[2], "JPEG", quality=85),
        "copy-edited-test": _encode(Image.fromarray(np.clip(edited, 0, 255).astype(np.uint8)).resize((60, 50))),
    }
    for k, (name, data) in enumerate(copies.items()):
        source_images.insert(3 * k + 1, data)
        source_ids.insert(3 * k + 1, name)
    source = _write(tmp_path / "source", source_images, source_ids, num_shards=3)

    out = str(tmp_path / "dedup")
    report = dedup.remove_near_duplicates(
        source.directory,
        [str(tmp_path / "target_train"), str(tmp_path / "target_test")],
        out,
        features_fn=_pixel_features,
        image_size=16,
        batch_size=4,
    )
    assert report.removed == 3 and report.kept == 12 and report.source_records == 15
    assert sorted(report.removed_ids) == sorted(copies)
    assert report.similarity_counts["0.95"] == 3

    filtered = manifest.load_manifest(out)
    assert [os.path.basename(f) for f in filtered.files] == [os.path.basename(f) for f in source.files]
    kept_in = [
        r
        for f in source.files
        for r in records.iter_records(f)
        if records.decode_example(r).example_id.decode() not in copies
    ]
    kept_out = [r for f in filtered.files for r in records.iter_records(f)]
    assert kept_out == kept_in  # byte-identical copies, same order
    assert sum(filtered.label_counts) == 12 and filtered.extra["dedup"]["removed"] == 3
    again = dedup.remove_near_duplicates(source.directory, [], out, features_fn=_pixel_features, image_size=16)
    assert again == report  # a finished removal is not redone


def test_max_similarity_chunks():
    rng = np.random.default_rng(1)
    src, tgt = dedup._normalise(rng.normal(size=(7, 5))), dedup._normalise(rng.normal(size=(11, 5)))
    np.testing.assert_allclose(dedup.max_similarity(src, tgt, chunk=3), (src @ tgt.T).max(axis=1), rtol=1e-6)


def test_stage_defaults_remove_planted_near_duplicates_and_keep_the_rest(tmp_path):
    """The embedded builder plants shifted, rescaled and recoloured copies of target train/test images;
    the dedup defaults (moment features, aligned grey + chroma check) remove >= 95% of them and under
    0.1% of the other source images (here: none of ~500, many of them the same Greek letters)."""
    from configs import demo
    from data import embedded

    config = demo.get_config("tiny").data.embedded
    config.source.planted_duplicates = 40
    config.source.min_images_per_label = config.source.max_images_per_label = 8
    embedded.build_source(str(tmp_path / "source"), config)
    embedded.build_target(str(tmp_path / "target"), config)
    source = manifest.load_manifest(str(tmp_path / "source"))
    ids = [records.decode_example(r).example_id.decode() for f in source.files for r in records.iter_records(f)]
    planted = {i for i in ids if i.startswith("planted-tgt-")}
    assert len(planted) == 40 and {i.split("-")[2] for i in planted} == {"train", "test"}

    defaults = dedup.default_config()
    report = dedup.remove_near_duplicates(
        str(tmp_path / "source"),
        [str(tmp_path / "target" / "train"), str(tmp_path / "target" / "test")],
        str(tmp_path / "dedup"),
        features_fn=dedup.FEATURES[defaults.features],
        image_size=defaults.image_size,
        threshold=defaults.threshold,
        batch_size=defaults.batch_size,
        verify=defaults.verify,
        candidates=defaults.candidates,
        chroma_threshold=defaults.chroma_threshold,
    )
    removed = set(report.removed_ids)
    assert len(removed & planted) >= 0.95 * len(planted)
    assert len(removed - planted) < 0.001 * (len(ids) - len(planted))
    kept = manifest.load_manifest(str(tmp_path / "dedup"))
    assert kept.num_records == len(ids) - len(removed)
    assert any(p["removed"] for p in report.pairs) and any(not p["removed"] for p in report.pairs)
    for pair in report.pairs:  # each removed pair is a planted copy of the target it names
        if pair["removed"]:
            assert pair["source_id"] == "planted-" + pair["target_id"]
    dedup.plot_pairs(report, str(tmp_path / "source"), str(tmp_path / "pairs.png"))
    assert os.path.getsize(tmp_path / "pairs.png") > 1000


def test_thresholds_that_remove_the_whole_source_stop_the_job_in_one_line(tmp_path):
    """Through launch.main: nothing written for dedup, the prepared source kept, one line naming the keys."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [
        sys.executable,
        "-m",
        "launch.main",
        "--config=configs/demo.py:tiny",
        f"--workdir={tmp_path}",
        "--stages=prepare,dedup",
        "--config.dedup.threshold=-1.0",
        "--config.dedup.chroma_threshold=-1.0",
    ]
    env = dict(os.environ, PYTHONPATH=root)
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "'dedup.threshold' = -1.0" in errors[0] and "'dedup.chroma_threshold' = -1.0" in errors[0]
    assert "remove all 316 source images" in errors[0]
    ws = Workspace(str(tmp_path), dedup=True)
    assert not os.path.exists(os.path.join(ws.source, manifest.MANIFEST_NAME))  # nothing half-written
    assert not os.path.exists(ws.marker("dedup"))
    assert manifest.load_manifest(ws.prepared_source).num_records == 316  # the prepared source is kept
