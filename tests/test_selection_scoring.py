"""Streaming source scoring: per-shard score files, any process count, and top-N/threshold selection
under a memory cap equal to an in-memory reference."""

import io
import os
import threading
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from data import augment, manifest, records
from selection import scoring

IMAGE_SIZE = 32


def _png(level: int, rng: np.random.Generator) -> bytes:
    pixels = np.clip(level + rng.integers(-3, 4, size=(40, 40, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_image_source(directory: str, *, shards: int = 6, per_shard: int = 50, seed: int = 0) -> None:
    """Grey images whose brightness comes in few levels, so many examples tie on a brightness score."""
    rng = np.random.default_rng(seed)
    files, counts = [], []
    for s in range(shards):
        examples = []
        for i in range(per_shard):
            level = int(rng.integers(0, 8)) * 30
            example_id = f"ex-{int(rng.integers(0, 10**6)):06d}-{s}-{i}".encode()
            examples.append(records.Example(_png(level, rng), (level // 30,), example_id))
        path = os.path.join(directory, f"source-{s:05d}.tfrecord")
        records.write_tfrecord(path, [records.encode_example(e) for e in examples])
        files.append(path)
        counts.append(per_shard)
    labels = [f"L{i}" for i in range(8)]
    manifest.write_manifest(directory, files, counts, labels, [0] * 8)


def brightness(images, ids):
    """Mean pixel value, rounded so that examples tie (the selection must break ties by id)."""
    return np.round(images.mean(axis=(1, 2, 3)), 1)


def reference(directory: str, size: int, largest: bool) -> set[bytes]:
    """In memory: every image decoded at once, scored, sorted by (score, id)."""
    source = manifest.load_manifest(directory)
    decoded = [records.decode_example(r) for f in source.files for r in records.iter_records(f)]
    images = augment.to_float(np.stack([augment.eval_image(e.image, IMAGE_SIZE) for e in decoded]))
    scores = brightness(images, None)
    ranked = sorted(range(len(decoded)), key=lambda i: ((-1 if largest else 1) * scores[i], decoded[i].example_id))
    return {decoded[i].example_id for i in ranked[:size]}


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("image_source"))
    make_image_source(directory)
    return directory


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("largest", [True, False])
def test_streaming_selection_under_a_memory_cap_equals_in_memory_reference(source_dir, tmp_path, largest):
    cap = 1_500_000  # bytes; the 300 decoded float images alone take 3.7 MB
    size = 37

    def streaming():
        paths = scoring.score_source(
            source_dir,
            brightness,
            str(tmp_path / "scores"),
            image_size=IMAGE_SIZE,
            batch_size=8,
            process_index=0,
            process_count=1,
        )
        return scoring.select_examples(paths, size=size, largest=largest), paths

    (plan, paths), peak = _peak_bytes(streaming)
    expected, reference_peak = _peak_bytes(lambda: reference(source_dir, size, largest))
    assert reference_peak > cap  # the in-memory reference would not fit the cap
    assert peak < cap, f"streaming pass peaked at {peak} bytes"
    assert set(plan) == expected and set(plan.values()) == {1}
    assert scoring.images_forwarded(paths) == 300


def test_two_processes_write_the_same_scores_and_threshold_selection(source_dir, tmp_path):
    one = scoring.score_source(
        source_dir,
        brightness,
        str(tmp_path / "one"),
        image_size=IMAGE_SIZE,
        batch_size=16,
        process_index=0,
        process_count=1,
    )
    results = {}

    def run(index):
        results[index] = scoring.score_source(
            source_dir,
            brightness,
            str(tmp_path / "two"),
            image_size=IMAGE_SIZE,
            batch_size=16,
            process_index=index,
            process_count=2,
            wait_timeout_s=120,
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1]
    for a, b in zip(one, results[0], strict=True):
        x, y = scoring.load_scores(a), scoring.load_scores(b)
        np.testing.assert_array_equal(x.scores, y.scores)
        assert x.ids() == y.ids()
    all_scores = np.concatenate([scoring.load_scores(p).scores for p in one])
    cut = float(np.median(all_scores))
    above = scoring.select_examples(one, threshold=cut, largest=True)
    assert len(above) == int(np.sum(all_scores >= cut))
    below = scoring.select_examples(one, threshold=cut, largest=False)
    assert len(below) == int(np.sum(all_scores <= cut))


def test_resume_skips_finished_shards_and_bad_requests_fail(source_dir, tmp_path):
    calls = []

    def counting(images, ids):
        calls.append(len(ids))
        return brightness(images, ids)

    out = str(tmp_path / "s")
    paths = scoring.score_source(
        source_dir, counting, out, image_size=IMAGE_SIZE, batch_size=50, process_index=0, process_count=1
    )
    os.remove(paths[2])
    calls.clear()
    scoring.score_source(
        source_dir, counting, out, image_size=IMAGE_SIZE, batch_size=50, process_index=0, process_count=1
    )
    assert calls == [50]  # only the missing shard was scored again
    with pytest.raises(ValueError, match="exceeds"):
        scoring.select_examples(paths, size=301)
    with pytest.raises(ValueError, match="exactly one"):
        scoring.select_examples(paths, size=3, threshold=0.0)


def test_ids_only_scoring_forwards_nothing(source_dir, tmp_path):
    def by_id(images, ids):
        assert images is None
        return np.array([len(i) + (i[-1] % 7) for i in ids], np.float64)

    paths = scoring.score_source(
        source_dir,
        by_id,
        str(tmp_path / "r"),
        image_size=IMAGE_SIZE,
        batch_size=8,
        decode=False,
        process_index=0,
        process_count=1,
    )
    assert scoring.images_forwarded(paths) == 0
    assert len(scoring.select_examples(paths, size=10)) == 10


def test_label_feature_sums_match_class_means(source_dir, tmp_path):
    from selection import emd_similarity

    def features(images):
        return np.stack([images.mean(axis=(1, 2, 3)), images.std(axis=(1, 2, 3))], axis=1)

    sums, counts, forwarded = scoring.label_feature_sums(
        source_dir,
        features,
        str(tmp_path / "sums"),
        image_size=IMAGE_SIZE,
        batch_size=16,
        num_labels=8,
        process_index=0,
        process_count=1,
    )
    source = manifest.load_manifest(source_dir)
    decoded = [records.decode_example(r) for f in source.files for r in records.iter_records(f)]
    images = augment.to_float(np.stack([augment.eval_image(e.image, IMAGE_SIZE) for e in decoded]))
    means, ref_counts = emd_similarity.class_means(features(images), np.array([e.labels[0] for e in decoded]), 8)
    np.testing.assert_array_equal(counts, ref_counts)
    present = counts > 0
    np.testing.assert_allclose(sums[present] / counts[present, None], means[present], rtol=1e-5)
    assert forwarded == 300
