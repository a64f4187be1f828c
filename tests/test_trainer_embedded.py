"""Acceptance on the embedded data (the Greek-lowercase target: 25 classes, 20 training images per
class in fonts and colours the source never uses). A short run through the trainer and the real grain
pipeline beats chance on the test split, and a logistic-regression probe on its features beats the
same probe on random-init features. The real tiny Inception-v3 goes through `train`/`evaluate`/
`extract_features` end to end (slow: its compiles dominate on CPU)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import embedded, pipeline
from tests.trainer_testlib import SmallCNN
from trainer import checkpoint, linear_probe
from trainer import config as config_lib
from trainer.evaluate import evaluate, evaluate_batches, extract_features, features_of_batches
from trainer.train import fit, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    data_config = embedded.default_config()
    data_config.num_workers = 0
    data_config.target.train_per_class, data_config.target.test_per_class = 20, 10
    splits = embedded.build_target(str(tmp_path_factory.mktemp("embedded") / "target"), data_config)
    return splits["train"], splits["test"]


@pytest.fixture(scope="module")
def small_target(tmp_path_factory):
    """The same 25 classes at 8 training and 4 test images each: the Inception run below has to fit
    its training split, and 200 images at batch 32 take half the compute of 500 at 64 for the same
    150 steps (training top-1 0.95 on 2026-11-30)."""
    data_config = embedded.default_config()
    data_config.num_workers = 0
    data_config.target.train_per_class, data_config.target.test_per_class = 8, 4
    splits = embedded.build_target(str(tmp_path_factory.mktemp("embedded_small") / "target"), data_config)
    return splits["train"], splits["test"]


def _probe(train_x, train_y, test_x, test_y):
    val = np.arange(len(train_y)) % 4 == 0
    result = linear_probe.fit_logistic_regression(
        train_x[~val], train_y[~val], train_x[val], train_y[val], np.logspace(-4, 3, 15)
    )
    return linear_probe.evaluate_probe(result, test_x, test_y)


def test_short_run_beats_chance_and_random_init_probe(target, tmp_path):
    train_set, test_set = target
    k = train_set.num_labels
    c = config_lib.finetune_config()
    c.global_batch_size, c.image_size, c.learning_rate, c.bn_momentum = 32, 32, 0.1, "model"
    c.checkpoint_every_steps, c.log_every_steps = 1000, 100
    model = SmallCNN(num_classes=k, width=32)

    def make():
        return pipeline.train_iterator(
            train_set.directory, global_batch_size=32, image_size=32, seed=0, num_classes=k, augment=False
        )

    fit(c, model=model, make_iterator=make, total_steps=300, warmup_steps=30, workdir=str(tmp_path))
    trained = checkpoint.load_variables(str(tmp_path), use_ema=False)
    batches = lambda d: pipeline.eval_batches(d, global_batch_size=64, image_size=32, num_classes=k)  # noqa: E731
    scores = evaluate_batches(model, trained, batches(test_set.directory), k)

    def probe(variables):
        return _probe(
            *features_of_batches(model, variables, batches(train_set.directory)),
            *features_of_batches(model, variables, batches(test_set.directory)),
        )

    probe_trained = probe(trained)
    probe_random = probe(model.init(jax.random.PRNGKey(7), jnp.zeros((1, 32, 32, 3))))
    print(
        "EMBEDDED_SMALL_CNN",
        json.dumps(
            {"chance": 1 / k, "finetune": scores, "probe_trained": probe_trained, "probe_random_init": probe_random}
        ),
    )
    assert scores["num_examples"] == 10 * k
    assert scores["top1"] > 2.5 / k
    assert probe_trained["top1"] > probe_random["top1"] + 0.03


def _inception_fit(train_dir: str, test_dir: str, workdir: str) -> None:
    """Trains the tiny Inception-v3 on the training split; prints the JSON the test checks."""
    from configs.models.inception_v3 import get_config

    model_config = get_config()
    model_config.width_multiplier, model_config.dropout_rate = 0.25, 0.0
    c = config_lib.finetune_config()
    c.global_batch_size, c.image_size, c.eval_batch_size = 32, 75, 64
    # Adam without augmentation: SGD leaves this model near chance at a CPU-sized step budget.
    c.optimizer, c.learning_rate, c.weight_decay, c.augment = "adam", 1e-3, 0.0, False
    c.steps, c.warmup_steps = 150, 0
    c.checkpoint_every_steps, c.log_every_steps = 1000, 50
    result = train(c, model_config=model_config, train_dir=train_dir, workdir=workdir, stage_name="embedded")
    fitted = evaluate(c, model_config=model_config, workdir=workdir, data_dir=train_dir)
    scores = evaluate(c, model_config=model_config, workdir=workdir, data_dir=test_dir)
    features, labels = extract_features(c, model_config=model_config, workdir=workdir, data_dir=test_dir)
    print(
        "EMBEDDED_INCEPTION "
        + json.dumps(
            {
                "train_loss": result["loss"],
                "train_split": fitted,
                "test_split": scores,
                "num_features": len(features),
                "num_labels": len(labels),
                "feature_dim": features.shape[1],
                "finite": bool(np.isfinite(features).all()),
            }
        ),
        flush=True,
    )


@pytest.mark.slow
def test_tiny_inception_train_evaluate_extract(small_target, tmp_path):
    # 150 steps at batch 32: execution-bound, so this one runs in a process with XLA's full CPU
    # optimisation (conftest's fast-compile flags would make each step ~3x slower).
    train_set, test_set = small_target
    k = train_set.num_labels
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    command = [
        sys.executable,
        os.path.abspath(__file__),
        train_set.directory,
        test_set.directory,
        str(tmp_path / "run"),
    ]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.split("EMBEDDED_INCEPTION ", 1)[1].splitlines()[0])
    print("EMBEDDED_INCEPTION", json.dumps({"chance": 1 / k, **out}))
    assert out["test_split"]["num_examples"] == 4 * k == out["num_labels"] == out["num_features"]
    assert out["feature_dim"] == 2048 // 4 and out["finite"]
    # From scratch on 8 images per class the model fits its training split (evaluated in inference
    # mode, so BatchNorm's running statistics are right too); test accuracy needs pre-training.
    assert out["train_split"]["top1"] > 0.5


if __name__ == "__main__":
    _inception_fit(*sys.argv[1:4])
