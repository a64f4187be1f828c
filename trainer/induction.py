"""Huh et al.'s induction accuracy: nearest-neighbour classification in a pre-trained feature space.

Huh et al. (section 5.2) ask whether features trained on some classes (e.g. coarse ones) still tell
apart classes they were never trained on: each test image takes the labels of its nearest training
images in the penultimate feature space, with no training on the target at all. Top-1: the nearest
neighbour's label is right; top-5: the right label is among the 5 nearest neighbours' labels. Here
the training images are the target's training split and the test images its test split, in the
frozen features of a pre-trained model (before any fine-tuning), so the number compares what each
pre-training choice's features know about the target. Distances are cosine (features L2-normalised).
"""

from __future__ import annotations

import ml_collections
import numpy as np

_CHUNK = 4096


def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """{"top<k>": fraction of test rows whose label is among their k nearest training rows' labels}."""
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("need training and test features")

    def normalise(x):
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    train_x, test_x = normalise(train_x), normalise(test_x)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    k_max = min(max(ks), len(train_x))
    hits = {k: 0 for k in ks}
    for start in range(0, len(test_x), _CHUNK):
        sims = test_x[start : start + _CHUNK] @ train_x.T
        # k nearest by similarity, ties to the lower training index (stable sort of -sim)
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k_max]
        labels = train_y[nearest]
        truth = test_y[start : start + _CHUNK, None]
        for k in ks:
            hits[k] += int(np.any(labels[:, :k] == truth, axis=1).sum())
    return {f"top{k}": hits[k] / len(test_x) for k in ks}


def induction_accuracy(
    config: ml_collections.ConfigDict,
    *,
    model_config: ml_collections.ConfigDict,
    pretrain_dir: str,
    pretrain_data_dir: str,
    train_dir: str,
    test_dir: str,
) -> dict[str, float]:
    """Induction top-1/top-5 of the pre-trained model in `pretrain_dir` (trained on `pretrain_data_dir`,
    whose label count its head has) from `train_dir`'s images to `test_dir`'s, at `config`'s image
    size and evaluation batch (a trainer config)."""
    from data import manifest, pipeline
    from models.registry import build_model
    from trainer import checkpoint, evaluate, train

    pretrained = manifest.load_manifest(pretrain_data_dir, verify=False)
    variables = checkpoint.load_variables(pretrain_dir, use_ema=bool(config.init_from_ema))
    head = int(variables["params"]["head"]["kernel"].shape[-1])  # its labels, or a contrastive projection
    model_config = train.prepare_model_config(
        config, model_config, num_classes=head, num_records=pretrained.num_records
    )
    model = build_model(model_config)
    features = {}
    for split, directory in (("train", train_dir), ("test", test_dir)):
        shards = manifest.load_manifest(directory, verify=False)
        batches = pipeline.eval_batches(
            directory,
            global_batch_size=int(config.eval_batch_size),
            image_size=int(config.image_size),
            num_classes=shards.num_labels,
        )
        features[split] = evaluate.features_of_batches(model, variables, batches)
    return knn_accuracy(*features["train"], *features["test"])
