"""FSDP partitioning rules: which dimension is sharded, and that a sharded jit computes the same."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from configs.models.amoeba_net_b import get_config
from models.registry import build_model
from models.sharding import param_partition_specs, param_shardings, partition_spec


def test_rules_pick_largest_divisible_dimension_and_skip_small_tensors():
    assert partition_spec((2048, 1000), "fsdp", 8, 1024) == PartitionSpec("fsdp", None)
    assert partition_spec((3, 3, 384, 384), "fsdp", 8, 1024) == PartitionSpec(None, None, None, "fsdp")
    assert partition_spec((1001, 2049), "fsdp", 8, 1024) == PartitionSpec()  # nothing divisible
    assert partition_spec((768,), "fsdp", 8, 1024) == PartitionSpec()  # below min_size
    assert partition_spec((4096, 4096), "fsdp", 1, 1024) == PartitionSpec()


def test_big_amoeba_net_weights_are_mostly_sharded():
    model = build_model(get_config())
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 299, 299, 3)), train=False))["params"]
    specs = param_partition_specs(params, "fsdp", axis_size=8)
    leaves = jax.tree.leaves(params)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    assert len(leaves) == len(spec_leaves)
    sharded = sum(x.size for x, s in zip(leaves, spec_leaves, strict=True) if "fsdp" in tuple(s))
    assert sharded / sum(x.size for x in leaves) > 0.95
    assert specs["head"]["kernel"] == PartitionSpec("fsdp", None)


def test_sharded_jit_matches_unsharded():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(8), ("fsdp",))
    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "w1": jax.random.normal(keys[0], (64, 128)),
        "w2": jax.random.normal(keys[1], (128, 10)),
        "b": jnp.ones(10),
    }
    x = jax.random.normal(keys[2], (4, 64))
    shardings = param_shardings(params, mesh, min_size=1024)
    placed = jax.device_put(params, shardings)
    assert placed["w1"].sharding.spec == PartitionSpec(None, "fsdp")
    assert placed["w1"].addressable_shards[0].data.shape == (64, 16)

    def forward(p, x):
        return jnp.tanh(x @ p["w1"]) @ p["w2"] + p["b"]

    sharded = jax.jit(forward, in_shardings=(shardings, None))(placed, x)
    np.testing.assert_allclose(sharded, forward(params, x), rtol=1e-5, atol=1e-5)
