"""Inception-v3: exact parameter counts (FACTS.md), output shapes, switches."""

import jax
import jax.numpy as jnp
import pytest

from configs.models.inception_v3 import get_config
from models.registry import build_model


def _config(**overrides):
    config = get_config()
    config.update(overrides)
    return config


def _abstract_params(config, size=299):
    model = build_model(config)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    return variables["params"]


def _count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "aux_head, bn_scale, num_classes, expected",
    [
        (False, False, 1000, 23_817_352),
        (True, False, 1000, 27_143_152),
        (True, True, 1000, 27_161_264),
        (False, False, 1001, 23_819_401),
    ],
)
def test_parameter_counts_match_reference(aux_head, bn_scale, num_classes, expected):
    params = _abstract_params(_config(aux_head=aux_head, bn_scale=bn_scale, num_classes=num_classes))
    assert _count(params) == expected


def test_per_block_counts_match_reference():
    params = _abstract_params(_config(aux_head=True))
    expected = {
        "stem": 172_272, "Mixed_5b": 255_440, "Mixed_5c": 276_976, "Mixed_5d": 284_656,
        "Mixed_6a": 1_152_640, "Mixed_6b": 1_295_872, "Mixed_6c": 1_689_280, "Mixed_6d": 1_689_280,
        "Mixed_6e": 2_140_032, "Mixed_7a": 1_697_024, "Mixed_7b": 5_041_344, "Mixed_7c": 6_073_536,
        "head": 2_049_000, "aux_head": 3_325_800,
    }  # fmt: skip
    assert {name: _count(tree) for name, tree in params.items()} == expected
    assert _count(params) - _count(params["head"]) - _count(params["aux_head"]) == 21_768_352


@pytest.mark.parametrize("size", [75, 128, 480])
def test_parameter_count_is_resolution_independent(size):
    assert _count(_abstract_params(_config(aux_head=True), size)) == 27_143_152


def test_too_small_input_is_rejected():
    with pytest.raises(ValueError, match="75"):
        _abstract_params(_config(), 74)


@pytest.mark.parametrize("size", [75, 96])
def test_forward_shapes_train_and_eval(size):
    config = _config(width_multiplier=0.125, num_classes=7, aux_head=True)
    model = build_model(config)
    images = jax.random.uniform(jax.random.key(1), (2, size, size, 3), minval=-1, maxval=1)
    variables = model.init(jax.random.key(0), images, train=False)
    assert set(variables) == {"params", "batch_stats"}
    assert "aux_head" in variables["params"] and "head" in variables["params"]
    out, updates = model.apply(
        variables, images, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
    )
    assert out["logits"].shape == (2, 7) and out["aux_logits"].shape == (2, 7)
    feature_dim = variables["params"]["head"]["kernel"].shape[0]
    assert out["features"].shape == (2, feature_dim)
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    evaluated = model.apply(variables, images, train=False)
    assert set(evaluated) == {"logits", "features"}
    assert jnp.all(jnp.isfinite(evaluated["logits"]))


def test_bfloat16_changes_compute_dtype_not_parameters():
    images = jnp.zeros((1, 75, 75, 3))
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = build_model(_config(width_multiplier=0.125, num_classes=5, dtype=dtype))
        variables = model.init(jax.random.key(0), images, train=False)
        _, state = model.apply(variables, images, train=False, capture_intermediates=True, mutable=["intermediates"])
        conv_out = state["intermediates"]["stem"]["ConvBN_0"]["conv"]["__call__"][0]
        results[dtype] = (conv_out.dtype, {x.dtype for x in jax.tree.leaves(variables["params"])}, _count(variables))
    assert results["float32"][0] == jnp.float32 and results["bfloat16"][0] == jnp.bfloat16
    assert results["bfloat16"][1] == {jnp.dtype("float32")}
    assert results["float32"][2] == results["bfloat16"][2]


def test_remat_gives_same_outputs_and_gradients():
    images = jax.random.uniform(jax.random.key(1), (2, 75, 75, 3), minval=-1, maxval=1)
    plain = build_model(_config(width_multiplier=0.125, num_classes=5, dropout_rate=0.0))
    remat = build_model(_config(width_multiplier=0.125, num_classes=5, dropout_rate=0.0, remat=True))
    variables = plain.init(jax.random.key(0), images, train=False)

    def loss(params, model):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, images, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out["logits"] ** 2)

    g_plain = jax.grad(loss)(variables["params"], plain)
    g_remat = jax.grad(loss)(variables["params"], remat)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        assert jnp.allclose(a, b, rtol=1e-4, atol=1e-6)
