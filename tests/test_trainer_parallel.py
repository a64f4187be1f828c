"""pmap and jit (Mesh + NamedSharding, replicated or FSDP) run the same step to the same parameters."""

import jax
import numpy as np

from tests.trainer_testlib import MemoryIterator, SmallCNN, random_data, tiny_config
from trainer import checkpoint
from trainer import config as config_lib
from trainer.parallel import PMAP_AXIS, fsdp_spec
from trainer.train import fit


def _train(workdir, parallelism, fsdp=False, steps=6):
    assert jax.device_count() == 8
    c = tiny_config(
        config_lib.pretrain_config(),
        parallelism=parallelism,
        fsdp=fsdp,
        ema_decay=0.9,
        weight_decay=1e-3,
        learning_rate=0.2,
        checkpoint_every_steps=100,
        fsdp_min_size=0,
    )
    images, labels = random_data(64)
    weights = np.linspace(0.5, 1.5, 64).astype(np.float32)
    model = SmallCNN(width=16, bn_axis_name=PMAP_AXIS if parallelism == "pmap" else None)
    fit(
        c,
        model=model,
        make_iterator=lambda: MemoryIterator(images, labels, 16, 4, weights),
        total_steps=steps,
        warmup_steps=2,
        workdir=str(workdir),
    )
    return checkpoint.load_raw_state(str(workdir))


def _assert_close(a, b, tol=2e-5):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol), a, b)


def test_pmap_equals_jit_on_8_devices(tmp_path):
    jit_state = _train(tmp_path / "jit", "jit")
    pmap_state = _train(tmp_path / "pmap", "pmap")
    for key in ("params", "batch_stats", "ema_params", "opt_state"):
        _assert_close(pmap_state[key], jit_state[key])
    assert int(jit_state["step"]) == int(pmap_state["step"]) == 6
    initial = SmallCNN(width=16).init(jax.random.split(jax.random.PRNGKey(0))[0], np.zeros((1, 16, 16, 3)), train=False)
    assert not np.allclose(jit_state["params"]["head"]["kernel"], initial["params"]["head"]["kernel"], atol=1e-3)


def test_fsdp_equals_replicated(tmp_path):
    assert fsdp_spec((3, 3, 16, 32), 8, min_size=0) == jax.sharding.PartitionSpec(None, None, None, "data")
    assert fsdp_spec((12,), 8, min_size=0) == jax.sharding.PartitionSpec()
    assert fsdp_spec((64, 64), 8) == jax.sharding.PartitionSpec()  # below the default size: replicated
    _assert_close(_train(tmp_path / "fsdp", "jit", fsdp=True)["params"], _train(tmp_path / "rep", "jit")["params"])
