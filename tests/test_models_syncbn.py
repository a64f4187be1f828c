"""Cross-device BatchNorm: under pmap with `bn_axis_name`, train-mode batch statistics (and outputs)
are those of the full global batch on one device; without it each device normalises on its own shard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.models.amoeba_net_b import get_config as amoeba_config
from configs.models.inception_v3 import get_config as inception_config
from models.layers import ConvBN
from models.registry import build_model

AXIS = "batch"
DEVICES = 8
PER_DEVICE = 4


def _global_batch(size: int, channels: int = 3) -> jax.Array:
    """A batch whose shards differ in mean and scale, so per-device statistics differ from global ones."""
    x = jax.random.normal(jax.random.key(1), (DEVICES * PER_DEVICE, size, size, channels))
    shard = jnp.repeat(jnp.arange(DEVICES, dtype=jnp.float32), PER_DEVICE)[:, None, None, None]
    return x * (1.0 + 0.3 * shard) + shard


def _shard(x: jax.Array) -> jax.Array:
    return x.reshape(DEVICES, PER_DEVICE, *x.shape[1:])


def _replicate(tree):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (DEVICES, *a.shape)), tree)


def _pmapped_train_step(model, variables, x, **kwargs):
    """One train-mode forward pass under pmap; returns (outputs, batch_stats) with a device axis."""

    def step(variables, x):
        return model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}, **kwargs
        )

    out, updates = jax.pmap(step, axis_name=AXIS)(_replicate(variables), _shard(x))
    return out, updates["batch_stats"]


def _single_device_train_step(model, variables, x, **kwargs):
    out, updates = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}, **kwargs
    )
    return out, updates["batch_stats"]


def _assert_stats_match_global(synced, reference):
    flat_synced = jax.tree_util.tree_leaves_with_path(synced)
    flat_reference = dict(jax.tree_util.tree_leaves_with_path(reference))
    assert len(flat_synced) == len(flat_reference) > 0
    for path, stats in flat_synced:
        want = np.asarray(flat_reference[path])
        for device in range(DEVICES):  # every device holds the global statistics
            np.testing.assert_allclose(np.asarray(stats[device]), want, rtol=2e-4, atol=2e-5, err_msg=str(path))


def _conv_bn_case(bn_axis_name):
    module = ConvBN(filters=6, kernel=(3, 3), bn_scale=True, bn_momentum=0.5, bn_axis_name=bn_axis_name)
    x = _global_batch(6)
    variables = module.init(jax.random.key(0), x[:1], train=False)
    synced_out, synced = _pmapped_train_step(module, variables, x)
    reference_out, reference = _single_device_train_step(module.clone(bn_axis_name=None), variables, x)
    return synced_out, synced, reference_out, reference


def test_conv_bn_statistics_are_global_under_pmap():
    synced_out, synced, reference_out, reference = _conv_bn_case(AXIS)
    _assert_stats_match_global(synced, reference)
    np.testing.assert_allclose(
        np.asarray(synced_out).reshape(reference_out.shape), np.asarray(reference_out), rtol=1e-4, atol=1e-4
    )


def test_conv_bn_without_axis_name_normalises_per_device():
    """Negative control: with no axis the devices disagree with each other and with the global batch."""
    synced_out, synced, reference_out, reference = _conv_bn_case(None)
    mean = np.asarray(synced["bn"]["mean"])
    assert not np.allclose(mean[0], mean[-1], atol=1e-3)
    assert not np.allclose(mean[0], np.asarray(reference["bn"]["mean"]), atol=1e-3)
    assert not np.allclose(np.asarray(synced_out).reshape(reference_out.shape), np.asarray(reference_out), atol=1e-3)


def test_conv_bn_axis_name_is_ignored_in_eval_mode():
    """Evaluation uses running averages and needs no pmap axis, so it also runs outside pmap."""
    module = ConvBN(filters=4, kernel=(1, 1), bn_axis_name=AXIS)
    x = _global_batch(4)
    variables = module.init(jax.random.key(0), x[:2], train=False)
    out: jax.Array = module.apply(variables, x, train=False)  # type: ignore[assignment]  # Flax: Any | tuple
    assert out.shape == (DEVICES * PER_DEVICE, 4, 4, 4)


def test_registry_passes_bn_axis_name():
    for get_config in (inception_config, amoeba_config):
        config = get_config()
        assert config.bn_axis_name == ""
        assert build_model(config).bn_axis_name is None
        config.bn_axis_name = AXIS
        assert build_model(config).bn_axis_name == AXIS
        config.bn_axis_name = ""  # the trainer's value under jit: a str field accepts it
        assert build_model(config).bn_axis_name is None


def _tiny_amoeba(bn_axis_name: str):
    config = amoeba_config()
    config.update(
        dict(num_cells=3, filters=8, num_classes=5, image_size=32, aux_head=True, drop_path_keep_prob=1.0,
             bn_axis_name=bn_axis_name)
    )  # fmt: skip
    return build_model(config)


def _tiny_inception(bn_axis_name: str):
    config = inception_config()
    config.update(dict(width_multiplier=0.05, num_classes=5, image_size=75, aux_head=True, bn_axis_name=bn_axis_name))
    return build_model(config)


@pytest.mark.slow  # compiles a whole (tiny) model under pmap: ~1-2 min on 2 CPU cores
@pytest.mark.parametrize("builder,size", [(_tiny_amoeba, 32), (_tiny_inception, 75)], ids=["amoeba", "inception"])
def test_every_model_batch_norm_is_synchronised(builder, size):
    """Every BatchNorm of the model (stem, cells/blocks, aux head) holds global-batch statistics."""
    x = _global_batch(size)
    model = builder(AXIS)
    variables = model.init(jax.random.key(0), x[:1], train=False)
    synced_out, synced = _pmapped_train_step(model, variables, x)
    _, reference = _single_device_train_step(builder(""), variables, x)
    _assert_stats_match_global(synced, reference)
    assert "aux_head" in synced and "aux_logits" in synced_out
