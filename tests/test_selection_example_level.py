"""Example-level methods end to end on tiny images: the domain classifier (CNN and logistic) ranks
planted target-like source images on top, k-means filtering with a target-trained extractor takes the
source images of the target's clusters, random selection is exact and process-independent."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from data import manifest, records
from selection import example_level, scoring

SIZE = 16


def _png(rgb, rng, noise=12) -> bytes:
    pixels = np.clip(np.array(rgb)[None, None] + rng.normal(0, noise, size=(20, 20, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(directory, examples, label_names, shards=1):
    os.makedirs(directory, exist_ok=True)
    files, counts = [], []
    for s in range(shards):
        part = examples[s::shards]
        path = os.path.join(directory, f"data-{s:05d}.tfrecord")
        records.write_tfrecord(path, [records.encode_example(e) for e in part])
        files.append(path)
        counts.append(len(part))
    label_counts = np.bincount([e.labels[0] for e in examples], minlength=len(label_names))
    manifest.write_manifest(directory, files, counts, label_names, label_counts.tolist())


# Target: red (class 0) and blue (class 1) images. Source: green and grey images (labels 0..3), plus
# PLANTED red and blue ones whose ids start with b"planted".
RED, BLUE, GREEN, GREY = (200, 30, 30), (30, 30, 200), (30, 200, 30), (128, 128, 128)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("example_level")
    target = [
        records.Example(_png(c, rng), (k,), f"t{k}-{i}".encode()) for i in range(20) for k, c in enumerate((RED, BLUE))
    ]
    _write(str(root / "target"), target, ["red", "blue"])
    source = [records.Example(_png(GREEN if i % 2 else GREY, rng), (i % 4,), f"s{i:03d}".encode()) for i in range(110)]
    source += [
        records.Example(_png(RED if i % 2 else BLUE, rng), (i % 4,), f"planted{i:02d}".encode()) for i in range(10)
    ]
    order = rng.permutation(len(source))
    _write(str(root / "source"), [source[i] for i in order], ["a", "b", "c", "d"], shards=3)
    return str(root / "source"), str(root / "target"), root


def _helper(steps=40):
    config = example_level.helper_config(steps=steps, image_size=SIZE)
    config.train.global_batch_size = 16
    config.train.learning_rate = 3e-3
    config.train.eval_batch_size = 64
    config.model.stage_filters = (8, 16)
    config.model.bn_momentum = 0.5
    return example_level.helper_from(config)


def _planted(plan):
    return sum(k.startswith(b"planted") for k in plan)


def test_domain_classifier_cnn_ranks_planted_target_like_images_on_top(data):
    source_dir, target_dir, root = data
    work = str(root / "dc")
    result = example_level.domain_classifier_cnn(
        source_dir, target_dir, work, size=10, helper=_helper(), holdout_fraction=0.25, batch_size=32, seed=0
    )
    assert len(result.plan) == 10 and _planted(result.plan) == 10
    assert result.info["scoring_images"] == 120 and result.info["helper_images_seen"] == 40 * 16
    assert result.info["heldout_accuracy"] >= 0.9 and result.info["heldout_examples"] == 20
    # D_h: all 40 target images and 40 random source images, split 30/10 per domain.
    train = manifest.load_manifest(os.path.join(work, "domain_data", "train"))
    heldout = manifest.load_manifest(os.path.join(work, "domain_data", "heldout"))
    assert train.label_counts == [30, 30] and heldout.label_counts == [10, 10]
    # A finished selection is read back, not recomputed.
    again = example_level.domain_classifier_cnn(
        source_dir, target_dir, work, size=10, helper=_helper(), holdout_fraction=0.25, batch_size=32, seed=0
    )
    assert again.plan == result.plan and again.info == result.info
    # Another size reuses the classifier and the scores: its top 5 are within the top 10.
    final = os.path.join(work, "classifier", "final.json")
    stamp = os.stat(final).st_mtime_ns
    smaller = example_level.domain_classifier_cnn(
        source_dir, target_dir, work, size=5, helper=_helper(), holdout_fraction=0.25, batch_size=32, seed=0
    )
    assert set(smaller.plan) < set(result.plan) and os.stat(final).st_mtime_ns == stamp


def test_domain_classifier_logistic_on_fixed_features(data):
    import jax

    from models.registry import build_model

    source_dir, target_dir, root = data
    helper = _helper()
    model_config = helper.model
    model_config.num_classes = 3
    model = build_model(model_config)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, SIZE, SIZE, 3), np.float32))
    result = example_level.domain_classifier_logistic(
        source_dir,
        target_dir,
        str(root / "lr"),
        size=10,
        feature_model=(model, variables, SIZE),
        C=1.0,
        batch_size=32,
        seed=0,
    )
    assert _planted(result.plan) >= 9
    assert result.info["scoring_images"] == 120 + 40 + 40
    # The source sample it fitted on: 40 source records under the source's own label names.
    sample = manifest.load_manifest(str(root / "lr" / "source_sample"))
    assert sample.num_records == 40 and sample.label_names == ["a", "b", "c", "d"]
    assert len(sample.label_counts) == 4 and sum(sample.label_counts) == 40


def test_kmeans_filter_with_a_target_trained_extractor_takes_planted_images(data):
    source_dir, target_dir, root = data
    result = example_level.kmeans_filter(
        source_dir,
        target_dir,
        str(root / "km"),
        size=10,
        helper=_helper(),
        n_clusters=2,
        aggregate="min",
        p=2,
        batch_size=32,
        seed=0,
    )
    assert _planted(result.plan) == 10
    assert os.path.exists(os.path.join(root, "km", "extractor", "final.json"))  # trained on the target
    assert result.info["scoring_images"] == 120 + 40 and result.info["helper_images_seen"] == 40 * 16


def test_random_examples_exact_deterministic_and_uniform(data, tmp_path):
    source_dir, _, _ = data
    a = example_level.random_examples(source_dir, str(tmp_path / "a"), size=30, seed=1)
    b = example_level.random_examples(source_dir, str(tmp_path / "b"), size=30, seed=1)
    c = example_level.random_examples(source_dir, str(tmp_path / "c"), size=30, seed=2)
    assert len(a.plan) == 30 and a.plan == b.plan and a.plan != c.plan
    assert a.info["scoring_images"] == 0
    keys = example_level.random_keys([f"id{i}".encode() for i in range(20000)], seed=0)
    assert abs(keys.mean() - 0.5) < 0.01 and 0 <= keys.min() and keys.max() < 1
    # Two processes' score files are those of one process (shard ownership only).
    paths = [os.path.join(tmp_path, "a", "scores", scoring.SCORE_NAME.format(s)) for s in range(3)]
    assert all(os.path.exists(p) for p in paths)


def test_emd_source_label_equal_to_the_target_ranks_first(tmp_path):
    import jax

    from models.registry import build_model

    rng = np.random.default_rng(1)
    target = [
        records.Example(_png(c, rng), (k,), f"t{k}-{i}".encode()) for i in range(6) for k, c in enumerate((RED, BLUE))
    ]
    _write(str(tmp_path / "target"), target, ["red", "blue"])
    colours = {0: GREEN, 1: GREY, 2: None, 3: (200, 200, 30)}  # label 2: red and blue, as the target
    source = [
        records.Example(_png(colours[y] or (RED if i % 2 else BLUE), rng), (y,), f"s{y}-{i}".encode())
        for y in range(4)
        for i in range(8 + 2 * y)
    ]
    _write(str(tmp_path / "source"), source, ["green", "grey", "redblue", "yellow"], shards=2)
    model_config = _helper().model
    model_config.num_classes = 3
    model = build_model(model_config)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, SIZE, SIZE, 3), np.float32))
    planned, info = example_level.emd_labels(
        str(tmp_path / "source"),
        str(tmp_path / "target"),
        str(tmp_path / "emd"),
        feature_model=(model, variables, SIZE),
        top_k=0,
        size=15,
        gamma=0.01,
        batch_size=16,
    )
    assert info["top_labels"][0][0] == "redblue"
    assert planned[2] == 12 and planned.sum() == 15  # the top label whole, then 3 from the next
    assert info["scoring_images"] == len(source) + len(target)
    top1, _ = example_level.emd_labels(
        str(tmp_path / "source"),
        str(tmp_path / "target"),
        str(tmp_path / "emd1"),
        feature_model=(model, variables, SIZE),
        top_k=1,
        size=0,
        gamma=0.01,
        batch_size=16,
    )
    np.testing.assert_array_equal(top1, [0, 0, 12, 0])
