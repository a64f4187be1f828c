"""Evaluation counts every example once (dataset not a multiple of the batch), features, linear probe, split."""

from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import manifest, pipeline, records
from models.registry import ModelOutputs
from tests.trainer_testlib import SmallCNN, write_shards
from trainer import linear_probe, sweep
from trainer.evaluate import accuracy_from_counts, evaluate_batches, features_of_batches


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(str(tmp_path_factory.mktemp("eval") / "set"), 37, 4, num_shards=3)


def _batches(d):
    return pipeline.eval_batches(d, global_batch_size=16, image_size=16, num_classes=4)


def test_eval_counts_every_example_once(shards):
    model = SmallCNN()
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
    result = evaluate_batches(model, variables, _batches(shards), 4)
    assert result["num_examples"] == 37
    # brute force on the host, example by example
    correct, per_class = 0, {k: list[bool]() for k in range(4)}
    for batch in _batches(shards):
        logits = cast(ModelOutputs, model.apply(variables, batch["image"]))["logits"]
        for i in np.flatnonzero(batch["mask"]):
            hit = int(np.argmax(logits[i])) == int(batch["label"][i])
            correct += hit
            per_class[int(batch["label"][i])].append(hit)
    assert result["top1"] == pytest.approx(correct / 37)
    assert result["mean_per_class"] == pytest.approx(np.mean([np.mean(v) for v in per_class.values()]))
    feats, labels = features_of_batches(model, variables, _batches(shards))
    assert feats.shape == (37, 16) and sorted(labels.tolist()) == sorted([i % 4 for i in range(37)])


def test_accuracy_from_counts_skips_empty_classes():
    r = accuracy_from_counts(np.array([1, 3, 0]), np.array([2, 3, 0]))
    assert r == {"top1": 0.8, "mean_per_class": 0.75, "num_examples": 5}


def test_linear_probe_chooses_on_validation():
    rng = np.random.RandomState(0)
    centres = rng.normal(0, 3, (5, 8))
    y = rng.randint(0, 5, 400)
    x = centres[y] + rng.normal(0, 1, (400, 8))
    noise = rng.normal(0, 1, (400, 8))
    res = linear_probe.fit_logistic_regression(x[:200], y[:200], x[200:300], y[200:300], np.logspace(-6, 5, 12))
    assert len(res.path) == 12 and res.path[0]["l2"] == 1e5  # strongest first (warm starts)
    assert res.val_top1 == max(p["val_top1"] for p in res.path)
    good = linear_probe.evaluate_probe(res, x[300:], y[300:])
    bad = linear_probe.evaluate_probe(
        linear_probe.fit_logistic_regression(noise[:200], y[:200], noise[200:300], y[200:300], np.logspace(-6, 5, 12)),
        noise[300:],
        y[300:],
    )
    assert good["top1"] > 0.9 > 0.4 > bad["top1"]
    assert set(good) == {"top1", "mean_per_class"}


def test_split_train_val_is_disjoint_and_keeps_classes(shards, tmp_path):
    train_dir, val_dir = sweep.split_train_val(shards, str(tmp_path), val_fraction=0.25, seed=1)
    ids = {}
    for d in (train_dir, val_dir):
        s = manifest.load_manifest(d)
        ids[d] = [records.decode_example(r).example_id for f in s.files for r in records.iter_records(f)]
    assert len(ids[train_dir]) + len(ids[val_dir]) == 37 and not set(ids[train_dir]) & set(ids[val_dir])
    assert len(ids[val_dir]) == 8  # round(0.25 * n) per class, n = 10, 9, 9, 9 -> 2 each
    assert all(c > 0 for c in manifest.load_manifest(train_dir).label_counts)
    assert sweep.split_train_val(shards, str(tmp_path)) == (train_dir, val_dir)  # complete: skipped
    assert len(sweep.kornblith_grid()) == 56


def test_knn_induction_accuracy_known_answer():
    from trainer import induction

    # Two training points per class on the unit circle's axes; a test point at 10 degrees from +x is
    # nearest to class 0 (cosine), and its 2nd..3rd neighbours are the +y points of class 1.
    train_x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [-1.0, 0.0], [0.0, -1.0]])
    train_y = np.array([0, 0, 1, 1, 2, 3])
    angle = np.deg2rad(10)
    test_x = np.array([[np.cos(angle), np.sin(angle)], [-1.0, -0.01]])
    assert induction.knn_accuracy(train_x, train_y, test_x, np.array([0, 2]), ks=(1, 3)) == {"top1": 1.0, "top3": 1.0}
    assert induction.knn_accuracy(train_x, train_y, test_x, np.array([1, 3]), ks=(1, 3)) == {"top1": 0.0, "top3": 1.0}
    assert induction.knn_accuracy(train_x, train_y, test_x, np.array([3, 0]), ks=(1, 2)) == {"top1": 0.0, "top2": 0.0}
