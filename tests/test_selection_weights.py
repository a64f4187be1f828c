"""Importance weights: sharded Pt equals a numpy reference, padding is ignored, Ps/w, multi-label rules."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from selection import weights

NUM_LABELS = 7


def _model():
    rng = np.random.default_rng(0)
    variables = {
        "w": rng.normal(size=(4 * 4 * 3, NUM_LABELS)).astype(np.float32),
        "b": rng.normal(size=NUM_LABELS).astype(np.float32),
    }

    def apply_fn(variables, images):
        return images.reshape(images.shape[0], -1) @ variables["w"] + variables["b"]

    return apply_fn, variables


def _batches(images, batch_size, garbage_padding=False):
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        mask = np.ones(len(chunk), bool)
        pad = batch_size - len(chunk)
        if pad:  # eval_batches pads the last batch; padded rows must not count
            filler = np.full((pad, *chunk.shape[1:]), 50.0 if garbage_padding else 0.0, np.float32)
            chunk, mask = np.concatenate([chunk, filler]), np.concatenate([mask, np.zeros(pad, bool)])
        yield {"image": chunk, "mask": mask, "label": np.full(len(chunk), -1)}


def _reference(apply_fn, variables, images, temperature):
    logits = np.asarray(apply_fn(variables, images), np.float64) / temperature
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True)).mean(axis=0)


def test_eight_devices_match_single_device_and_numpy():
    assert jax.device_count() == 8
    apply_fn, variables = _model()
    images = np.random.default_rng(1).normal(size=(45, 4, 4, 3)).astype(np.float32)
    reference = _reference(apply_fn, variables, images, 2.0)
    eight = weights.target_label_distribution(apply_fn, variables, _batches(images, 16), num_labels=NUM_LABELS)
    one = weights.target_label_distribution(
        apply_fn,
        variables,
        _batches(images, 16),
        num_labels=NUM_LABELS,
        mesh=Mesh(np.array(jax.devices()[:1]), ("data",)),
    )
    np.testing.assert_allclose(eight, reference, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(one, reference, rtol=1e-5, atol=1e-7)
    assert eight.sum() == pytest.approx(1.0)
    hot = weights.target_label_distribution(
        apply_fn, variables, _batches(images, 16), num_labels=NUM_LABELS, temperature=0.5
    )
    np.testing.assert_allclose(hot, _reference(apply_fn, variables, images, 0.5), rtol=1e-5, atol=1e-7)


def test_padding_does_not_change_pt():
    apply_fn, variables = _model()
    images = np.random.default_rng(2).normal(size=(21, 4, 4, 3)).astype(np.float32)
    exact = weights.target_label_distribution(apply_fn, variables, _batches(images, 21), num_labels=NUM_LABELS)
    # batch 13 (not a multiple of 8 devices, last batch 8 real + 5 garbage rows)
    padded = weights.target_label_distribution(
        apply_fn, variables, _batches(images, 13, garbage_padding=True), num_labels=NUM_LABELS
    )
    np.testing.assert_allclose(padded, exact, rtol=1e-5, atol=1e-7)
    unmasked = dict(next(_batches(images[:8], 13, garbage_padding=True)))
    unmasked["mask"] = np.ones(13, bool)  # the control: counting the garbage rows does move Pt
    moved = weights.target_label_distribution(apply_fn, variables, [unmasked], num_labels=NUM_LABELS)
    assert np.abs(moved - _reference(apply_fn, variables, images[:8], 2.0)).max() > 1e-3


def test_wrong_logit_width_is_refused():
    apply_fn, variables = _model()
    images = np.zeros((8, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="num_labels"):
        weights.target_label_distribution(apply_fn, variables, _batches(images, 8), num_labels=NUM_LABELS + 1)


def test_importance_weights_and_exclusion():
    pt = np.array([0.5, 0.3, 0.2, 0.0])
    ps, w, excluded = weights.importance_weights(pt, np.array([10, 40, 0, 50]), 100)
    np.testing.assert_allclose(ps, [0.1, 0.4, 0.0, 0.5])
    np.testing.assert_allclose(w, [5.0, 0.75, 0.0, 0.0])
    assert excluded.tolist() == [False, False, True, False]
    # multi-label: 100 examples, 126 label occurrences -> Ps sums to 1.26
    ps, _, _ = weights.importance_weights(np.full(3, 1 / 3), np.array([60, 40, 26]), 100)
    assert ps.sum() == pytest.approx(1.26)


def test_attribution_and_example_weight_rules():
    # examples: [0, 2], [1], [], [2, 0, 1]
    offsets = np.array([0, 2, 3, 3, 6])
    labels = np.array([0, 2, 1, 2, 0, 1])
    w = np.array([1.0, 4.0, 2.0])
    assert weights.attribute_examples(offsets, labels, w).tolist() == [2, 1, -1, 1]
    tied = weights.attribute_examples(offsets, labels, np.ones(3))
    assert tied.tolist() == [0, 1, -1, 0]  # ties: smallest label index
    np.testing.assert_allclose(weights.example_weights(offsets, labels, w, "max"), [2.0, 4.0, 0.0, 4.0])
    np.testing.assert_allclose(weights.example_weights(offsets, labels, w, "mean"), [1.5, 4.0, 0.0, 7 / 3])
    np.testing.assert_allclose(weights.example_weights(offsets, labels, w, "first"), [1.0, 4.0, 0.0, 2.0])
    with pytest.raises(ValueError):
        weights.example_weights(offsets, labels, w, "median")


def test_jnp_apply_fn_dtype_bfloat16_logits():
    apply_fn, variables = _model()
    images = np.random.default_rng(3).normal(size=(16, 4, 4, 3)).astype(np.float32)

    def bf16_apply(v, x):
        return apply_fn(v, x).astype(jnp.bfloat16)

    pt = weights.target_label_distribution(bf16_apply, variables, _batches(images, 16), num_labels=NUM_LABELS)
    np.testing.assert_allclose(pt, _reference(apply_fn, variables, images, 2.0), atol=2e-2)


_DISTRIBUTED_CHILD = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {root!r})
import jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid = int(sys.argv[1])
jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2, process_id=pid)
from selection import weights
from tests.test_selection_weights import _batches, _model
apply_fn, variables = _model()
images = np.random.default_rng(4).normal(size=(22, 4, 4, 3)).astype(np.float32)
mine = ({{k: v[pid * 4:(pid + 1) * 4] for k, v in b.items()}} for b in _batches(images, 8, garbage_padding=True))
pt = weights.target_label_distribution(apply_fn, variables, mine, num_labels=7)
print("PT", jax.device_count(), " ".join(repr(float(v)) for v in pt), flush=True)
"""


def test_two_jax_processes_return_the_same_pt():
    """Real jax.distributed on localhost: 2 processes x 2 CPU devices, each fed its half of every batch."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = _DISTRIBUTED_CHILD.format(root=root, port=port)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()[-2000:]
        line = next(row for row in out.decode().splitlines() if row.startswith("PT"))
        results.append(line.split()[1:])
    assert results[0] == results[1] and results[0][0] == "4"  # identical Pt, 4 devices in the mesh
    apply_fn, variables = _model()
    images = np.random.default_rng(4).normal(size=(22, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        [float(v) for v in results[0][1:]], _reference(apply_fn, variables, images, 2.0), rtol=1e-5, atol=1e-7
    )
