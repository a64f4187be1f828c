"""Inception-v3: exact parameter counts (FACTS.md), output shapes, switches."""

import functools
import re
from typing import cast

import jax
import jax.numpy as jnp
import pytest

from configs.models.inception_v3 import get_config
from models.registry import ModelOutputs, build_model


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


@pytest.mark.parametrize("size", [75, 139, 299, 331])
def test_output_shapes_at_several_resolutions(size):
    model = build_model(_config(num_classes=11, aux_head=True))
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    out, _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]),
        variables,
        images,
    )
    assert {k: v.shape for k, v in out.items()} == {"logits": (2, 11), "aux_logits": (2, 11), "features": (2, 2048)}


@pytest.mark.slow
def test_tiny_forward_train_and_eval():
    """One real (small) forward pass: train updates BN statistics, eval is deterministic and finite."""
    model = build_model(_config(width_multiplier=0.125, num_classes=7, aux_head=True))
    images = jax.random.uniform(jax.random.key(1), (2, 75, 75, 3), minval=-1, maxval=1)
    variables = model.init(jax.random.key(0), images, train=False)
    assert set(variables) == {"params", "batch_stats"}
    out, updates = model.apply(
        variables, images, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
    )
    feature_dim = variables["params"]["head"]["kernel"].shape[0]
    assert out["logits"].shape == (2, 7) and out["aux_logits"].shape == (2, 7)
    assert out["features"].shape == (2, feature_dim)
    old, new = variables["batch_stats"]["stem"], updates["batch_stats"]["stem"]
    assert not jnp.allclose(old["ConvBN_0"]["bn"]["mean"], new["ConvBN_0"]["bn"]["mean"])
    evaluated = cast(ModelOutputs, model.apply(variables, images, train=False))
    assert set(evaluated) == {"logits", "features"}
    assert jnp.all(jnp.isfinite(evaluated["logits"]))
    again = cast(ModelOutputs, model.apply(variables, images, train=False))
    assert jnp.array_equal(evaluated["logits"], again["logits"])


def test_bfloat16_changes_compute_dtype_not_parameters():
    images = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = build_model(_config(dtype=dtype))
        variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
        apply = functools.partial(model.apply, train=False, capture_intermediates=True, mutable=["intermediates"])
        out, state = jax.eval_shape(apply, variables, images)
        conv_out = state["intermediates"]["Mixed_7c"]["ConvBN_0"]["conv"]["__call__"][0]
        param_dtypes = {x.dtype for x in jax.tree.leaves(variables)}
        results[dtype] = (conv_out.dtype, param_dtypes, _count(variables), out["logits"].dtype)
    assert results["float32"][0] == jnp.float32 and results["bfloat16"][0] == jnp.bfloat16
    assert results["bfloat16"][1] == {jnp.dtype("float32")}
    assert results["float32"][2] == results["bfloat16"][2]
    assert results["bfloat16"][3] == jnp.float32


@pytest.mark.parametrize("remat", [False, True])
def test_remat_checkpoints_every_block(remat):
    model = build_model(_config(remat=remat, aux_head=True))
    images = jnp.zeros((1, 75, 75, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))

    def loss(params, batch_stats):
        out, _ = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            rngs={"dropout": jax.random.key(0)},
            mutable=["batch_stats"],
        )
        return out["logits"].sum() + out["aux_logits"].sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss))(variables["params"], variables["batch_stats"]).jaxpr
    checkpoints = re.findall(r"= (?:checkpoint|remat2?)\[", str(jaxpr))
    assert len(checkpoints) == (13 if remat else 0)  # 12 blocks + aux head


def test_accepts_training_progress_like_amoeba_net():
    model = build_model(_config(num_classes=3))
    images = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, progress=0.5), variables, images)
    assert out["logits"].shape == (1, 3)


@pytest.mark.parametrize(
    "shape, window, strides, dtype",
    [
        ((2, 15, 15, 3), (3, 3), (2, 2), jnp.float32),  # Inception's pool (odd size: every tap used)
        ((2, 16, 11, 4), (3, 3), (2, 2), jnp.float32),  # even size: the last row left out
        ((1, 9, 9, 2), (2, 3), (1, 2), jnp.float32),  # overlapping along rows, non-square
        ((2, 15, 15, 3), (3, 3), (2, 2), jnp.bfloat16),
    ],
)
def test_max_pool_equals_flax_max_pool_in_values_and_gradients_bit_for_bit(shape, window, strides, dtype):
    """models.layers.max_pool (strided slices, custom gradient) against nn.max_pool (reduce-window):
    the same values and the same input gradient, ties included (ReLU outputs: many zeros, and values
    rounded to a few levels so windows tie at their maximum), under jit as the train step runs it."""
    import flax.linen as nn
    import numpy as np

    from models.layers import max_pool

    rng = np.random.default_rng(0)
    x = jnp.asarray(np.maximum(np.round(rng.standard_normal(shape) * 2), 0), dtype)
    out_shape = jax.eval_shape(lambda v: nn.max_pool(v, window, strides, padding="VALID"), x).shape
    g = jnp.asarray(rng.standard_normal(out_shape), dtype)

    def value_and_vjp(pool):
        out, vjp = jax.vjp(pool, x)
        return out, vjp(g)[0]

    ours = jax.jit(lambda: value_and_vjp(lambda v: max_pool(v, window, strides)))()
    flax_ = jax.jit(lambda: value_and_vjp(lambda v: nn.max_pool(v, window, strides, padding="VALID")))()
    assert float(jnp.mean(x == 0)) > 0.3 and bool(jnp.any(ours[1] != 0))
    np.testing.assert_array_equal(np.asarray(ours[0], np.float32), np.asarray(flax_[0], np.float32))
    np.testing.assert_array_equal(np.asarray(ours[1], np.float32), np.asarray(flax_[1], np.float32))
