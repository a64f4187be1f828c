"""AmoebaNet-B: exact parameter counts (FACTS.md), shapes, drop-path schedule, genotype table."""

import re
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.models.amoeba_net_b import get_config
from models.amoeba_net import CellOp, drop_path_keep_prob, reduction_indices
from models.genotypes import GENOTYPES, CellSpec
from models.registry import ModelOutputs, build_model


def _small(**overrides):
    config = get_config()
    config.update(dict(num_cells=3, filters=32, num_classes=10, image_size=64))
    config.update(overrides)
    return config


def _abstract(config, size):
    model = build_model(config)
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return model, variables, images


def _count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def test_small_configuration_count():
    _, variables, _ = _abstract(_small(), 64)
    assert _count(variables["params"]) == 462_766
    assert variables["params"]["head"]["kernel"].shape == (512, 10)  # feature dim 16F


def test_n18_f512_count_at_1001_classes_is_abstract():
    config = get_config()
    assert (config.num_cells, config.filters, config.num_classes) == (18, 512, 1001)
    _, variables, _ = _abstract(config, 299)
    assert _count(variables["params"]) == 557_286_057
    assert variables["params"]["head"]["kernel"].shape == (8192, 1001)


def test_reduction_positions():
    assert reduction_indices(18) == [6, 12]
    assert reduction_indices(3) == [1, 2]
    _, variables, _ = _abstract(_small(num_cells=6), 64)
    names = set(variables["params"])
    assert {"stem_cell_0", "stem_cell_1", "reduction_cell_0", "reduction_cell_1"} <= names
    assert {f"cell_{i}" for i in range(6)} <= names


@pytest.mark.parametrize("size", [64, 96, 131])
def test_output_shapes_with_aux_head(size):
    model, variables, images = _abstract(_small(aux_head=True), size)
    assert "aux_head" in variables["params"]
    rngs = {"dropout": jax.random.key(0), "drop_path": jax.random.key(1)}
    out, _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, progress=0.5, rngs=rngs, mutable=["batch_stats"]), variables, images
    )
    assert {k: v.shape for k, v in out.items()} == {"logits": (2, 10), "aux_logits": (2, 10), "features": (2, 512)}
    evaluated = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    assert set(evaluated) == {"logits", "features"}


def test_drop_path_keep_probability_schedule():
    assert drop_path_keep_prob(0.7, None) == 0.7
    progress = jnp.array([0.0, 0.25, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(drop_path_keep_prob(0.7, progress), [1.0, 0.925, 0.85, 0.7, 0.7], rtol=1e-6)


def test_drop_path_drops_whole_examples_at_the_scheduled_rate():
    op = CellOp(operation="1x1", filters=4)
    x = jax.random.normal(jax.random.key(0), (4000, 2, 2, 4))
    variables = op.init(jax.random.key(0), x, False, None)

    def run(progress):
        keep = drop_path_keep_prob(0.7, progress)
        out, _ = op.apply(variables, x, True, keep, rngs={"drop_path": jax.random.key(3)}, mutable=["batch_stats"])
        return out

    reference = run(0.0)  # keep probability 1: nothing dropped
    dropped = run(1.0)
    zero_rows = jnp.all(dropped == 0, axis=(1, 2, 3))
    assert abs(float(zero_rows.mean()) - 0.3) < 0.03
    kept = ~zero_rows
    np.testing.assert_allclose(dropped[kept], reference[kept] / 0.7, rtol=1e-5, atol=1e-6)
    assert jnp.array_equal(run(0.0), reference)


def test_genotypes_are_data():
    spec = GENOTYPES["amoeba_net_b"].normal
    assert spec.num_outputs == 4 and GENOTYPES["amoeba_net_b"].reduction.num_outputs == 2
    with pytest.raises(ValueError):
        CellSpec(spec.operations, (0, 0, 5, 0, 0, 0, 0, 0, 0, 0), spec.used_hiddenstates)
    _, variables, _ = _abstract(_small(name="amoeba_net_d"), 64)
    assert _count(variables["params"]) != 462_766


def test_bfloat16_keeps_parameter_count_and_float32_params():
    _, variables, _ = _abstract(_small(dtype="bfloat16"), 64)
    assert _count(variables["params"]) == 462_766
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype("float32")}


@pytest.mark.slow
def test_small_forward_runs_and_progress_zero_disables_drop_path():
    model = build_model(_small(aux_head=True, dropout_rate=0.0))
    images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3), minval=-1, maxval=1)
    variables = model.init(jax.random.key(0), images, train=False)

    def features(progress, seed):
        rngs = {"dropout": jax.random.key(seed), "drop_path": jax.random.key(seed)}
        out, _ = model.apply(variables, images, train=True, progress=progress, rngs=rngs, mutable=["batch_stats"])
        return out["features"]

    assert jnp.array_equal(features(0.0, 1), features(0.0, 2))
    assert not jnp.allclose(features(1.0, 1), features(1.0, 2))
    assert jnp.all(jnp.isfinite(cast(ModelOutputs, model.apply(variables, images, train=False))["logits"]))


@pytest.mark.parametrize("remat", [False, True])
def test_remat_checkpoints_every_cell(remat):
    config = _small(remat=remat)
    model, variables, _ = _abstract(config, 64)
    images = jnp.zeros((2, 64, 64, 3))

    def loss(params, batch_stats):
        out, _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True, progress=0.5,
            rngs={"dropout": jax.random.key(0), "drop_path": jax.random.key(1)}, mutable=["batch_stats"],
        )  # fmt: skip
        return out["logits"].sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss))(variables["params"], variables["batch_stats"])
    checkpoints = re.findall(r"= (?:checkpoint|remat2?)\[", str(jaxpr))
    assert len(checkpoints) == (2 + 2 + config.num_cells if remat else 0)  # stem, reduction, normal cells
