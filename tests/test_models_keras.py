"""Inception-v3 equals Keras 3's InceptionV3 (JAX backend, random init) after copying its weights."""

import os
from typing import cast

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")

import jax  # noqa: E402

from models.inception_v3 import InceptionV3  # noqa: E402
from models.keras_import import variables_from_keras  # noqa: E402
from models.registry import ModelOutputs  # noqa: E402


@pytest.mark.slow
def test_logits_match_keras_inception_v3():
    if keras.backend.backend() != "jax":
        pytest.skip("Keras must run on the JAX backend")
    size, classes = 75, 10
    keras_model = keras.applications.InceptionV3(
        weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None
    )
    rng = np.random.default_rng(0)
    for layer in keras_model.layers:  # non-trivial BN statistics, so epsilon and beta matter
        if type(layer).__name__ == "BatchNormalization":
            shape = layer.beta.shape
            layer.beta.assign(rng.normal(scale=0.1, size=shape).astype("float32"))
            layer.moving_mean.assign(rng.normal(scale=0.1, size=shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, size=shape).astype("float32"))
    images = rng.uniform(-1, 1, size=(2, size, size, 3)).astype("float32")
    expected = np.asarray(keras_model(images, training=False))

    model = InceptionV3(num_classes=classes)
    forward = jax.jit(lambda variables, x: cast(ModelOutputs, model.apply(variables, x, train=False))["logits"])
    logits = np.asarray(forward(variables_from_keras(keras_model), images))

    relative = np.max(np.abs(logits - expected)) / np.max(np.abs(expected))
    assert relative < 1e-4, relative
