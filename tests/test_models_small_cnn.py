"""The small ConvNet of the end-to-end test: parameter count, outputs, blocks, switches."""

from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.models.small_cnn import get_config
from models.registry import ModelOutputs, block_names, build_model


def _config(**overrides):
    config = get_config()
    config.update(dict(num_classes=7, stage_filters=(8, 16), image_size=32))
    config.update(overrides)
    return config


def _init(config, images):
    return build_model(config).init(jax.random.key(0), images, train=False)


def test_parameter_count_and_blocks():
    config = _config()
    variables = jax.eval_shape(lambda x: _init(config, x), jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    # 3x3 convs without bias + BN beta (no gamma), then the dense head with bias.
    expected = (3 * 3 * 3 * 8 + 8) + (3 * 3 * 8 * 16 + 16) + (16 * 7 + 7)
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == expected
    assert block_names(config) == ["stage_0", "stage_1", "head"]
    assert set(variables["params"]) == set(block_names(config))
    assert set(variables["batch_stats"]) == {"stage_0", "stage_1"}


def test_outputs_and_batch_stat_updates():
    config = _config(width_multiplier=2.0, convs_per_stage=2)
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    model = build_model(config)
    variables = _init(config, images)
    outputs = cast(ModelOutputs, model.apply(variables, images, train=False))
    assert outputs["logits"].shape == (4, 7) and outputs["features"].shape == (4, 32)  # 16 filters x 2
    assert outputs["logits"].dtype == jnp.float32
    _, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["stage_0"]["ConvBN_1"]["bn"]["mean"]
    after = updated["batch_stats"]["stage_0"]["ConvBN_1"]["bn"]["mean"]
    assert not np.allclose(before, after)  # training mode updates the running statistics


def test_remat_gives_the_same_gradients():
    images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    variables = _init(_config(), images)

    def grads(config):
        model = build_model(config)

        def loss(params):
            out, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
            return jnp.sum(out["logits"] ** 2)

        return jax.grad(loss)(variables["params"])

    plain, remat = grads(_config()), grads(_config(remat=True))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), plain, remat)


def test_aux_head_is_refused():
    with pytest.raises(ValueError, match="no auxiliary head"):
        build_model(_config(aux_head=True))
