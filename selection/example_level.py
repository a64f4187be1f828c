"""The example-level methods end to end: the helper network each trains, its scoring pass, the top N.

- Domain classifier (Chakraborty et al. Algorithm 2): a CNN learns source (0) against target (1) from
  all M target training images and M source images drawn at random; a held-out part of that set
  gives the classifier's accuracy (they aim for 92-95%); one pass scores every source example with
  p(target | x); the N highest are kept, each once. The cheaper variant fits a logistic regression
  on the penultimate features of a given model (the entire-source model) instead of a CNN.
- k-means filtering (Algorithm 1): a feature extractor is trained ON THE TARGET (its labels), K-means
  on its target features gives K centres, one pass scores every source example by the mean or min
  L_p distance to them, and the N lowest are kept.
- EMD label selection (Cui et al. 4.2, label-level, but it needs the same kind of pass): class-mean
  features of every source label from one streaming pass of a given model (the entire-source model),
  target class means from the target's training images and labels, source labels ranked by
  exp(-gamma * EMD) to the target and planned in that order (`emd_similarity.plan_from_similarities`).
- Random: N source examples uniformly without replacement (a seeded hash of the example id, so no
  image is read and any process count picks the same examples).

Every helper network is trained with the project's trainer (resumable from its checkpoints), every
pass writes per-shard score files (`selection.scoring`, resumable), and each method returns an
example plan (id -> 1 copy) for `selection.write` plus what the report shows: images forwarded to
score (the scoring cost), images the helper network was trained on, and, for the domain classifier,
its held-out accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from data import atomic, manifest, paths, records, shards
from selection import scoring

# The libraries behind the helper methods (scikit-learn, POT: about 2 s of import together) are
# imported where a method runs, so that a job that selects none of them does not pay for them.

DOMAIN_LABELS = ["source", "target"]
RESULT_NAME = "result-{}.json"  # per selected size: the scores and helper networks serve every size


@dataclasses.dataclass(frozen=True)
class ExampleSelection:
    plan: dict[bytes, int]
    info: dict[str, Any]  # scoring_images (images forwarded), heldout_accuracy, ...


@dataclasses.dataclass(frozen=True)
class Helper:
    """How to train a helper network: a trainer config (trainer.config) and a model config."""

    train: ml_collections.ConfigDict
    model: ml_collections.ConfigDict


def helper_config(steps: int = 300, image_size: int = 64) -> ml_collections.ConfigDict:
    """Defaults of a helper network: `train` (a trainer config) and `model` (small_cnn). Adam from
    scratch at a short budget; flips off (a mirrored glyph is another character)."""
    from configs.models import small_cnn
    from trainer import config as trainer_config

    train = trainer_config.finetune_config()
    train.steps, train.warmup_steps = steps, max(1, steps // 10)
    train.global_batch_size = 64
    train.optimizer, train.learning_rate, train.weight_decay = "adam", 1e-3, 0.0
    train.bn_momentum = "model"
    train.reinit_head = "never"
    train.image_size = image_size
    train.flip, train.min_crop_area = False, 0.5
    train.aux_loss_weight = 0.0
    train.checkpoint_every_steps = max(1, steps // 3)
    train.log_every_steps = max(1, steps // 6)
    model = small_cnn.get_config()
    model.image_size = image_size
    return ml_collections.ConfigDict({"train": train, "model": model})


def helper_from(config: ml_collections.ConfigDict) -> Helper:
    return Helper(config.train, config.model)


def _records(path: str) -> list[records.Example]:
    return [records.decode_example(r) for r in records.iter_records(path)]


def _is_writer() -> bool:
    """Files every process would write alike are written by process 0; the others wait for them."""
    import jax

    return jax.process_index() == 0


def _write_set(
    directory: str,
    examples: list[records.Example],
    label_names: list[str],
    hierarchy: dict[str, list[str]] | None = None,
) -> None:
    """A one-shard set through the one shard-set writer (`data.shards`: manifest last, so an existing
    manifest means a complete set); process 0 writes it, the others wait for its manifest."""
    if not _is_writer():
        paths.wait_for([os.path.join(directory, manifest.MANIFEST_NAME)])
        return
    encoded = [(records.encode_example(e), e.labels) for e in examples]
    shards.write_shard_set(
        directory, lambda _: encoded, num_shards=1, label_names=label_names, prefix="data", hierarchy=hierarchy
    )


def sample_source(source_dir: str, size: int, seed: int) -> list[records.Example]:
    """`size` source examples uniformly without replacement, streamed shard by shard (memory O(size))."""
    source = manifest.load_manifest(source_dir, verify=False)
    n = source.num_records
    if not 0 < size <= n:
        raise ValueError(f"cannot sample {size} of the source's {n} examples")
    wanted = np.sort(np.random.default_rng([int(seed), 0xD0C1A55]).choice(n, size=size, replace=False))
    starts = np.concatenate([[0], np.cumsum(source.record_counts)])
    out: list[records.Example] = []
    for s, path in enumerate(source.files):
        lo, hi = np.searchsorted(wanted, [starts[s], starts[s + 1]])
        if lo == hi:
            continue
        local = set((wanted[lo:hi] - starts[s]).tolist())
        out.extend(records.decode_example(r) for i, r in enumerate(records.iter_records(path)) if i in local)
    return out


def write_domain_sets(
    source_dir: str, target_dir: str, out_dir: str, *, seed: int, holdout_fraction: float
) -> tuple[str, str]:
    """Algorithm 2's D_h: all target training images (label 1) and as many random source images
    (label 0), split per domain into a training set and a held-out set; returns their directories."""
    train_dir, heldout_dir = os.path.join(out_dir, "train"), os.path.join(out_dir, "heldout")
    if all(epath.Path(os.path.join(d, manifest.MANIFEST_NAME)).exists() for d in (train_dir, heldout_dir)):
        return train_dir, heldout_dir
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction={holdout_fraction} must be in (0, 1)")
    target = [e for path in manifest.load_manifest(target_dir).files for e in _records(path)]
    source = sample_source(source_dir, len(target), seed)
    rng = np.random.default_rng([int(seed), 0xD0A1])
    train: list[records.Example] = []
    heldout: list[records.Example] = []
    for label, domain in enumerate((source, target)):
        order = rng.permutation(len(domain))
        cut = max(1, round(len(domain) * holdout_fraction))
        for rank, i in enumerate(order.tolist()):
            e = domain[i]
            relabelled = records.Example(e.image, (label,), DOMAIN_LABELS[label].encode() + b":" + e.example_id)
            (heldout if rank < cut else train).append(relabelled)
    train = [train[i] for i in rng.permutation(len(train))]
    _write_set(heldout_dir, heldout, DOMAIN_LABELS)
    _write_set(train_dir, train, DOMAIN_LABELS)
    return train_dir, heldout_dir


def _train_helper(helper: Helper, train_dir: str, run_dir: str, stage_name: str):
    """Trains (or resumes) the helper on `train_dir`; returns (model, variables, model config, images it saw)."""
    from models.registry import build_model
    from trainer import checkpoint, train

    run = train.train(
        helper.train, model_config=helper.model, train_dir=train_dir, workdir=run_dir, stage_name=stage_name
    )
    shards = manifest.load_manifest(train_dir, verify=False)
    model_config = train.prepare_model_config(
        helper.train, helper.model, num_classes=shards.num_labels, num_records=shards.num_records
    )
    variables = checkpoint.load_variables(run_dir, use_ema=bool(helper.train.eval_with_ema))
    return build_model(model_config), variables, model_config, int(run["steps"]) * int(run["global_batch_size"])


def _cached(work_dir: str, size: int, compute) -> ExampleSelection:
    """The selection of a finished run, or `compute()` saved atomically (ids hex-encoded)."""
    path = os.path.join(work_dir, RESULT_NAME.format(int(size)))
    if epath.Path(path).exists():
        raw = atomic.read_json(path)
        return ExampleSelection({bytes.fromhex(k): 1 for k in raw["selected"]}, raw["info"])
    result = compute()
    if _is_writer():
        atomic.write_json(path, {"selected": sorted(k.hex() for k in result.plan), "info": result.info})
    return result


def domain_classifier_cnn(
    source_dir: str,
    target_dir: str,
    work_dir: str,
    *,
    size: int,
    helper: Helper,
    holdout_fraction: float,
    batch_size: int,
    seed: int,
) -> ExampleSelection:
    """Algorithm 2 with a CNN; see the module doc."""
    from trainer import evaluate

    def compute() -> ExampleSelection:
        import jax

        train_dir, heldout_dir = write_domain_sets(
            source_dir, target_dir, os.path.join(work_dir, "domain_data"), seed=seed, holdout_fraction=holdout_fraction
        )
        run_dir = os.path.join(work_dir, "classifier")
        model, variables, model_config, seen = _train_helper(helper, train_dir, run_dir, "select/domain_classifier")
        heldout = evaluate.evaluate(helper.train, model_config=helper.model, workdir=run_dir, data_dir=heldout_dir)

        def p_target(v, images):
            return jax.nn.softmax(model.apply(v, images, train=False)["logits"], axis=-1)[:, 1]

        forward = scoring.on_local_devices(p_target, variables, batch_size)
        paths = scoring.score_source(
            source_dir,
            lambda images, ids: forward(images),  # type: ignore[arg-type]  # decode=True: images is an array
            os.path.join(work_dir, "scores"),
            image_size=int(model_config.image_size),
            batch_size=batch_size,
        )
        plan = scoring.select_examples(paths, size=size, largest=True)
        info = {
            "scoring_images": scoring.images_forwarded(paths),
            "heldout_accuracy": heldout["top1"],
            "heldout_examples": heldout["num_examples"],
            "helper_images_seen": seen,
        }
        return ExampleSelection(plan, info)

    return _cached(work_dir, size, compute)


def _feature_fn(model, variables, batch_size: int):
    forward = scoring.on_local_devices(
        lambda v, images: model.apply(v, images, train=False)["features"], variables, batch_size
    )
    return forward


def _features_of(directory: str, feature_fn, image_size: int, batch_size: int) -> np.ndarray:
    """Features of every example of a (small) shard set, in order: the target, or a source sample."""
    return _features_and_labels(directory, feature_fn, image_size, batch_size)[0]


def _features_and_labels(directory: str, feature_fn, image_size: int, batch_size: int):
    from data import augment

    feats: list[np.ndarray] = []
    labels: list[int] = []
    for path in manifest.load_manifest(directory).files:
        examples = _records(path)
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            images = augment.to_float(np.stack([augment.eval_image(e.image, image_size) for e in chunk]))
            feats.append(feature_fn(images))
            labels.extend(e.labels[0] for e in chunk)
    return np.concatenate(feats), np.array(labels, np.int64)


def domain_classifier_logistic(
    source_dir: str,
    target_dir: str,
    work_dir: str,
    *,
    size: int,
    feature_model: tuple[Any, Mapping[str, Any], int],
    C: float,
    batch_size: int,
    seed: int,
) -> ExampleSelection:
    """Algorithm 2 with a logistic regression on `feature_model`'s features ((model, variables, image
    size), e.g. the entire-source model); no held-out split (the regression has few parameters)."""
    from selection import domain_classifier as domain_lib

    def compute() -> ExampleSelection:
        model, variables, image_size = feature_model
        features = _feature_fn(model, variables, batch_size)
        target = _features_of(target_dir, features, image_size, batch_size)
        sample_dir = os.path.join(work_dir, "source_sample")
        if not epath.Path(os.path.join(sample_dir, manifest.MANIFEST_NAME)).exists():
            source = manifest.load_manifest(source_dir, verify=False)  # the sample keeps the source's labels
            _write_set(sample_dir, sample_source(source_dir, len(target), seed), source.label_names, source.hierarchy)
        source_sample = _features_of(sample_dir, features, image_size, batch_size)
        classifier = domain_lib.fit_domain_classifier(source_sample, target, C=C, seed=seed)
        paths = scoring.score_source(
            source_dir,
            lambda images, ids: classifier.predict_proba(np.asarray(features(images), np.float64))[:, 1],
            os.path.join(work_dir, "scores"),
            image_size=image_size,
            batch_size=batch_size,
        )
        plan = scoring.select_examples(paths, size=size, largest=True)
        fit_accuracy = float(
            classifier.score(
                np.concatenate([source_sample, target]),
                np.concatenate([np.zeros(len(source_sample)), np.ones(len(target))]),
            )
        )
        forwarded = scoring.images_forwarded(paths) + len(target) + len(source_sample)
        return ExampleSelection(plan, {"scoring_images": forwarded, "fit_accuracy": fit_accuracy})

    return _cached(work_dir, size, compute)


def kmeans_filter(
    source_dir: str,
    target_dir: str,
    work_dir: str,
    *,
    size: int,
    helper: Helper,
    n_clusters: int,
    aggregate: str,
    p: float,
    batch_size: int,
    seed: int,
) -> ExampleSelection:
    """Algorithm 1 with a feature extractor trained on the target's labels; see the module doc."""
    from selection import kmeans_filter as kmeans_lib

    def compute() -> ExampleSelection:
        model, variables, model_config, seen = _train_helper(
            helper, target_dir, os.path.join(work_dir, "extractor"), "select/kmeans_extractor"
        )
        image_size = int(model_config.image_size)
        features = _feature_fn(model, variables, batch_size)
        target = _features_of(target_dir, features, image_size, batch_size)
        centroids = kmeans_lib.target_centroids(target, n_clusters, seed=seed)
        paths = scoring.score_source(
            source_dir,
            lambda images, ids: kmeans_lib.kmeans_filter_scores(features(images), centroids, aggregate=aggregate, p=p),
            os.path.join(work_dir, "scores"),
            image_size=image_size,
            batch_size=batch_size,
        )
        plan = scoring.select_examples(paths, size=size, largest=False)
        info = {"scoring_images": scoring.images_forwarded(paths) + len(target), "helper_images_seen": seen}
        return ExampleSelection(plan, info)

    return _cached(work_dir, size, compute)


def random_keys(ids: list[bytes], seed: int) -> np.ndarray:
    """A uniform key in [0, 1) per example id, from a seeded hash (independent of shard and process)."""
    salt = int(seed).to_bytes(8, "little", signed=True)
    keys = [int.from_bytes(hashlib.blake2b(i, digest_size=8, salt=salt[:8]).digest(), "little") for i in ids]
    return np.array(keys, np.float64) / 2.0**64


def random_examples(source_dir: str, work_dir: str, *, size: int, seed: int) -> ExampleSelection:
    """`size` source examples uniformly without replacement; no image is read."""

    def compute() -> ExampleSelection:
        paths = scoring.score_source(
            source_dir,
            lambda images, ids: random_keys(ids, seed),
            os.path.join(work_dir, "scores"),
            image_size=1,
            batch_size=1,
            decode=False,
        )
        return ExampleSelection(scoring.select_examples(paths, size=size, largest=True), {"scoring_images": 0})

    return _cached(work_dir, size, compute)


def emd_labels(
    source_dir: str,
    target_dir: str,
    work_dir: str,
    *,
    feature_model: tuple[Any, Mapping[str, Any], int],
    top_k: int,
    size: float,
    gamma: float,
    batch_size: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cui et al.'s label selection: (planned draws per source label, info); see the module doc."""
    from selection import emd_similarity

    path = os.path.join(work_dir, RESULT_NAME.format(int(size)))
    if epath.Path(path).exists():
        raw = atomic.read_json(path)
        return np.asarray(raw["planned"], np.float64), raw["info"]
    model, variables, image_size = feature_model
    features = _feature_fn(model, variables, batch_size)
    source = manifest.load_manifest(source_dir, verify=False)
    sums, counts, forwarded = scoring.label_feature_sums(
        source_dir,
        features,
        os.path.join(work_dir, "label_sums"),
        image_size=image_size,
        batch_size=batch_size,
        num_labels=source.num_labels,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    target_features, target_labels = _features_and_labels(target_dir, features, image_size, batch_size)
    points, weights = emd_similarity.target_units(target_features, target_labels)
    sims = emd_similarity.label_similarities(means, points, weights, gamma)
    planned = emd_similarity.plan_from_similarities(
        sims, np.asarray(source.label_counts, np.float64), k=top_k, size=size if size > 0 else None
    )
    order = np.argsort(-sims, kind="stable")[:5]
    info = {
        "scoring_images": forwarded + len(target_features),
        "labels_chosen": int(np.sum(planned > 0)),
        "top_labels": [[source.label_names[i], float(sims[i])] for i in order],
    }
    if _is_writer():
        atomic.write_json(path, {"planned": planned.tolist(), "info": info})
    return planned, info
