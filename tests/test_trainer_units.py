"""Trainer pieces in isolation: LR schedule, durations, optimisers, losses, EMA, NaN guard, init_from, frozen
backbone."""

import functools
import json
import os
import time
from typing import Any, cast

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.registry import ModelOutputs
from tests.trainer_testlib import MemoryIterator, SmallCNN, random_data, tiny_config
from trainer import checkpoint, losses, metrics, optim, schedules, warm_start
from trainer import config as config_lib
from trainer.state import create_state
from trainer.step import make_train_step
from trainer.train import fit


def test_schedule_values_at_key_steps():
    pre = schedules.warmup_cosine(0.4, 20_000, 2_000_000)
    assert float(pre(0)) == 0.0
    assert float(pre(10_000)) == pytest.approx(0.2)
    assert float(pre(20_000)) == pytest.approx(0.4)
    assert float(pre(1_010_000)) == pytest.approx(0.2, rel=1e-5)  # half-way through the cosine
    assert float(pre(2_000_000)) == pytest.approx(0.0, abs=1e-7)
    assert float(pre(3_000_000)) == pytest.approx(0.0, abs=1e-7)
    fine = schedules.warmup_cosine(0.01, 2_000, 20_000, end=0.001)
    assert float(fine(1_000)) == pytest.approx(0.005)
    assert float(fine(11_000)) == pytest.approx(0.0055, rel=1e-5)
    assert float(fine(20_000)) == pytest.approx(0.001, rel=1e-5)


def test_durations_and_bn_momentum():
    c = config_lib.finetune_config()
    assert schedules.resolve_steps(c, 1000) == (20_000, 2_000)
    c.steps, c.epochs, c.warmup_steps, c.warmup_epochs, c.global_batch_size = 0, 3.0, 0, 0.5, 100
    assert schedules.resolve_steps(c, 1050) == (32, 6)  # ceil(3 * 10.5), ceil(0.5 * 10.5)
    c.bn_momentum = "auto"
    assert schedules.resolve_bn_momentum(c, 1000) == 0.9  # s = 10 -> max(0, 0.9)
    assert schedules.resolve_bn_momentum(c, 100_000) == pytest.approx(0.99)  # s = 1000
    c.bn_momentum = "model"
    assert schedules.resolve_bn_momentum(c, 100_000) is None
    p = config_lib.pretrain_config()
    assert (p.global_batch_size, p.steps, p.warmup_steps, p.nesterov) == (1024, 2_000_000, 20_000, True)


def test_tf1_rmsprop_matches_reference():
    lr = lambda count: 0.1 / (1.0 + count)  # noqa: E731 (a changing lr shows where it is applied)
    tx = optax.chain(optim.scale_by_tf1_rmsprop(lr, decay=0.9, momentum=0.9, epsilon=1.0), optax.scale(-1.0))
    w = jnp.array([1.0, -2.0])
    state = tx.init(w)
    ms, mom, ref = np.ones(2), np.zeros(2), np.array([1.0, -2.0])
    for t, g in enumerate([np.array([0.5, 1.0]), np.array([-1.0, 2.0]), np.array([3.0, 0.1])]):
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, w)
        w = optax.apply_updates(w, updates)
        ms = 0.9 * ms + 0.1 * g**2
        mom = 0.9 * mom + lr(t) * g / np.sqrt(ms + 1.0)
        ref = ref - mom
        np.testing.assert_allclose(np.asarray(w), ref, rtol=1e-6)


def _one_update(c, grads, params, steps=1):
    tx = optim.build_optimizer(c, lambda count: jnp.float32(0.5))
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_sgd_nesterov_and_weight_decay_modes():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    grads = {"w": jnp.full((2, 2), 0.2), "b": jnp.full((2,), 0.2)}
    c = config_lib.pretrain_config()
    c.weight_decay, c.momentum = 0.0, 0.9
    out = _one_update(c, grads, params, steps=2)
    # Nesterov: m1 = g, u1 = g + 0.9 g; m2 = 1.9 g, u2 = g + 0.9 * 1.9 g
    np.testing.assert_allclose(out["w"], 1 - 0.5 * 0.2 * (1.9 + 2.71), rtol=1e-6)
    c.weight_decay, c.nesterov = 0.1, False
    c.weight_decay_mode = "l2"
    l2 = _one_update(c, grads, params)
    np.testing.assert_allclose(l2["w"], 1 - 0.5 * (0.2 + 0.1), rtol=1e-6)
    np.testing.assert_allclose(l2["b"], 1 - 0.5 * 0.2, rtol=1e-6)  # no decay on biases
    c.weight_decay_mode = "decoupled"
    l2 = _one_update(c, {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}, params, steps=2)
    # momentum never sees the decay: each step moves w by lr * wd * w
    np.testing.assert_allclose(l2["w"], (1 - 0.05) ** 2, rtol=1e-6)


def test_adam_matches_optax_adam_and_decays_kernels_only():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    grads = {"w": jnp.full((2, 2), 0.2), "b": jnp.full((2,), -0.4)}
    c = config_lib.pretrain_config()
    c.optimizer, c.weight_decay = "adam", 0.0
    ours = _one_update(c, grads, params, steps=3)
    tx = optax.adam(0.5)
    state, reference = tx.init(params), params
    for _ in range(3):
        updates, state = tx.update(grads, state, reference)
        reference = optax.apply_updates(reference, updates)
    for key in params:
        np.testing.assert_allclose(ours[key], reference[key], rtol=1e-6)
    c.weight_decay, c.weight_decay_mode = 0.1, "decoupled"
    decayed = _one_update(c, {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}, params)
    np.testing.assert_allclose(decayed["w"], 1 - 0.5 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(decayed["b"], 1.0, rtol=1e-6)


def test_rmsprop_decoupled_uses_schedule():
    c = config_lib.pretrain_config()
    c.optimizer, c.weight_decay, c.weight_decay_mode = "rmsprop", 0.1, "decoupled"
    out = _one_update(c, {"w": jnp.zeros((2, 2))}, {"w": jnp.ones((2, 2))})
    np.testing.assert_allclose(out["w"], 1 - 0.5 * 0.1, rtol=1e-6)


def test_losses_multi_label_smoothing_weights():
    labels = jnp.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    t = losses.soft_targets(labels, 0.1)
    np.testing.assert_allclose(t[0], [0.475, 0.475, 0.025, 0.025], rtol=1e-6)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0]])
    ce = losses.per_example_loss(logits, labels, kind="softmax", label_smoothing=0.1)
    logp = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(ce, -(t * logp).sum(-1), rtol=1e-6)
    bce = losses.per_example_loss(logits, labels, kind="sigmoid", label_smoothing=0.0)
    p = jax.nn.sigmoid(logits)
    np.testing.assert_allclose(bce, -(labels * jnp.log(p) + (1 - labels) * jnp.log(1 - p)).sum(-1), rtol=1e-5)
    assert float(losses.weighted_mean(jnp.array([1.0, 3.0]), jnp.array([2.0, 0.0]))) == 1.0
    np.testing.assert_array_equal(losses.top1_correct(logits, labels), [True, True])


def _step_setup(c, model):
    images, labels = random_data(32, num_classes=4)
    it = MemoryIterator(images, labels, 16, 4)
    schedule = schedules.warmup_cosine(float(c.learning_rate), 1, 10)
    tx = optim.build_optimizer(c, schedule)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
    state = create_state(variables, tx, jax.random.PRNGKey(1), c.ema_decay > 0)
    return jax.jit(make_train_step(model, c, tx, schedule)), state, it


def _ema_update(decay: float, average, value):
    """TF's ExponentialMovingAverage update, in NumPy."""
    return decay * average + (1 - decay) * np.asarray(value)


def test_ema_tracks_tf_formula():
    c = tiny_config(config_lib.pretrain_config(), ema_decay=0.9, learning_rate=0.5)
    step, state, it = _step_setup(c, SmallCNN())
    expected = jax.tree.map(np.asarray, state.params)
    expected_stats = jax.tree.map(np.asarray, state.batch_stats)
    for t in range(4):
        state, _ = step(state, next(it))
        ema = functools.partial(_ema_update, min(0.9, (1 + t) / (10 + t)))
        expected = jax.tree.map(ema, expected, state.params)
        expected_stats = jax.tree.map(ema, expected_stats, state.batch_stats)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.ema_params, expected)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.ema_batch_stats, expected_stats
    )
    assert not np.allclose(state.ema_params["head"]["kernel"], state.params["head"]["kernel"])


def test_uint8_batches_are_normalised_on_device_exactly_as_on_the_host():
    """The training pipeline ships uint8 images; the step maps them to [-1, 1] on the device with the
    same bits as the host mapping, so a step on uint8 equals a step on the host-converted batch."""
    from data import augment

    pixels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(jax.jit(augment.to_float)(pixels)), augment.to_float(pixels))
    np.testing.assert_array_equal(augment.to_float(pixels), pixels.astype(np.float32) * np.float32(2 / 255) - 1)
    c = tiny_config(config_lib.pretrain_config(), ema_decay=0.9)
    step, state, it = _step_setup(c, SmallCNN())
    batch = next(it)
    raw = dict(batch, image=np.random.RandomState(0).randint(0, 256, batch["image"].shape).astype(np.uint8))
    on_device, m_device = step(state, raw)
    on_host, m_host = step(state, dict(raw, image=augment.to_float(raw["image"])))
    assert float(m_device["loss"]) == float(m_host["loss"])
    jax.tree.map(np.testing.assert_array_equal, on_device.params, on_host.params)


def test_aux_loss_is_weighted_in():
    c = tiny_config(config_lib.pretrain_config(), label_smoothing=0.0, ema_decay=0.0)
    model = SmallCNN(aux_head=True)
    step, state, it = _step_setup(c, model)
    batch = next(it)
    outputs, _ = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"]
    )
    main = optax.softmax_cross_entropy(outputs["logits"], batch["labels"]).mean()
    aux = optax.softmax_cross_entropy(outputs["aux_logits"], batch["labels"]).mean()
    _, m = step(state, batch)
    assert float(m["loss"]) == pytest.approx(float(main + 0.4 * aux), rel=1e-5)


def test_frozen_backbone_trains_only_head():
    c = tiny_config(config_lib.finetune_config(), freeze_backbone=True, weight_decay=1e-2, learning_rate=0.5)
    step, state, it = _step_setup(c, SmallCNN())
    before = jax.tree.map(np.asarray, state)
    for _ in range(3):
        state, _ = step(state, next(it))
    np.testing.assert_array_equal(state.params["conv0"]["kernel"], before.params["conv0"]["kernel"])
    np.testing.assert_array_equal(state.batch_stats["bn0"]["mean"], before.batch_stats["bn0"]["mean"])
    assert not np.allclose(state.params["head"]["kernel"], before.params["head"]["kernel"])


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    c = tiny_config(config_lib.finetune_config(), warmup_steps=1)
    images, labels = random_data(16 * 10)
    images[16 * 7 + 3] = np.nan  # the 8th batch carries a NaN
    with pytest.raises(metrics.NonFiniteLossError, match="at step 8.*checkpoint at step 5 kept"):
        fit(
            c,
            model=SmallCNN(),
            make_iterator=lambda: MemoryIterator(images, labels, 16, 4),
            total_steps=20,
            warmup_steps=1,
            workdir=str(tmp_path),
        )
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]
    assert not (tmp_path / "final.json").exists()
    good = checkpoint.load_variables(str(tmp_path), use_ema=False)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(good))


def _run(workdir, c, model, steps=4, init_from=None, num_classes=4):
    images, labels = random_data(64, num_classes=num_classes)
    return fit(
        c,
        model=model,
        make_iterator=lambda: MemoryIterator(images, labels, 16, num_classes),
        total_steps=steps,
        warmup_steps=1,
        workdir=str(workdir),
        init_from=init_from,
    )


def test_init_from_replaces_head_keeps_backbone(tmp_path):
    pre = tiny_config(config_lib.pretrain_config(), ema_decay=0.0)
    result = _run(tmp_path / "pre", pre, SmallCNN(num_classes=4))
    assert json.loads((tmp_path / "pre" / "final.json").read_text())["steps"] == result["steps"] == 4
    source = checkpoint.load_variables(str(tmp_path / "pre"), use_ema=False)
    fresh = SmallCNN(num_classes=6).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    merged, reinit = warm_start.merge_pretrained(jax.device_get(fresh), source, "auto")
    assert reinit == ["head"]
    np.testing.assert_array_equal(merged["params"]["conv1"]["kernel"], source["params"]["conv1"]["kernel"])
    np.testing.assert_array_equal(merged["batch_stats"]["bn0"]["var"], source["batch_stats"]["bn0"]["var"])
    assert merged["params"]["head"]["kernel"].shape == (16, 6)
    same, reinit = warm_start.merge_pretrained(
        jax.device_get(SmallCNN(num_classes=4).init(jax.random.PRNGKey(5), jnp.zeros((1, 16, 16, 3)))), source, "always"
    )
    assert reinit == ["head"] and not np.allclose(same["params"]["head"]["kernel"], source["params"]["head"]["kernel"])
    with pytest.raises(ValueError, match="reinit_head='never'"):
        warm_start.merge_pretrained(jax.device_get(fresh), source, "never")
    # fine-tuning through the loop: 0 learning-rate steps leave the loaded backbone as it was
    fine = tiny_config(config_lib.finetune_config(), learning_rate=0.0, bn_momentum="model")
    _run(
        tmp_path / "fine",
        fine,
        SmallCNN(num_classes=6, bn_momentum=1.0),
        steps=2,
        init_from=str(tmp_path / "pre"),
        num_classes=6,
    )
    tuned = checkpoint.load_variables(str(tmp_path / "fine"), use_ema=False)
    np.testing.assert_array_equal(tuned["params"]["conv0"]["kernel"], source["params"]["conv0"]["kernel"])
    assert tuned["params"]["head"]["kernel"].shape == (16, 6)


def test_finished_run_returns_at_once(tmp_path):
    c = tiny_config(config_lib.finetune_config())
    first = _run(tmp_path, c, SmallCNN(), steps=2)
    assert (
        _run(tmp_path, c, SmallCNN(), steps=2)
        == json.loads((tmp_path / "final.json").read_text())
        == json.loads(json.dumps(first))
    )


def test_prepare_model_config_sets_classes_dtype_bn():
    import ml_collections

    from trainer.train import prepare_model_config

    model_config = ml_collections.ConfigDict(
        {
            "name": "x",
            "num_classes": 1000,
            "image_size": 299,
            "dtype": "float32",
            "bn_momentum": 0.9997,
            "bn_axis_name": "",
        }
    )
    c = config_lib.finetune_config()
    c.compute_dtype, c.image_size, c.global_batch_size, c.parallelism = "bfloat16", 75, 100, "pmap"
    out = prepare_model_config(c, model_config, num_classes=37, num_records=3680)  # s = 37 steps/epoch
    assert (out.num_classes, out.image_size, out.dtype, out.bn_axis_name) == (37, 75, "bfloat16", "batch")
    assert out.bn_momentum == pytest.approx(0.9)  # max(1 - 10/37, 0.9)
    assert model_config.num_classes == 1000  # the caller's config is not modified


def test_runs_share_programs_across_seeds_and_results_do_not_depend_on_sharing(tmp_path):
    from trainer import programs

    c = tiny_config(config_lib.finetune_config(), seed=1)
    shared = programs.programs_for(c, SmallCNN(), 4, 1)
    c2 = tiny_config(config_lib.finetune_config(), seed=2, checkpoint_every_steps=7, log_every_steps=3)
    assert programs.programs_for(c2, SmallCNN(), 4, 1) is shared  # host-side fields only differ
    assert (
        programs.programs_for(tiny_config(config_lib.finetune_config(), learning_rate=0.5), SmallCNN(), 4, 1)
        is not shared
    )
    assert programs.programs_for(c, SmallCNN(width=4), 4, 1) is not shared
    assert programs.programs_for(c, SmallCNN(), 5, 1) is not shared

    seeded = _run(tmp_path / "a", c2, SmallCNN())  # runs on the shared (already traced) programs
    programs._build.cache_clear()
    fresh = _run(tmp_path / "b", c2, SmallCNN())  # rebuilt from nothing
    a = checkpoint.load_variables(str(tmp_path / "a"), use_ema=False)
    b = checkpoint.load_variables(str(tmp_path / "b"), use_ema=False)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert seeded["loss"] == fresh["loss"]
    _run(tmp_path / "c", c, SmallCNN())  # seed 1 on seed 2's programs: the seed is an argument, not a constant
    other_seed = checkpoint.load_variables(str(tmp_path / "c"), use_ema=False)
    assert not np.array_equal(other_seed["params"]["head"]["kernel"], a["params"]["head"]["kernel"])


def test_cpu_train_step_on_large_images_compiles_its_convolutions_to_xla_eigen_not_ynnpack():
    """trainer.programs compiles the CPU step with YNNPACK off from 150 px (1.28x less CPU per step at
    299 px, BENCHMARKS.md) and keeps it below; a plain jit of the same step uses YNNPACK, so the option
    is what changes it."""
    from trainer import programs

    assert programs._step_compiler_options(75) is None
    c = tiny_config(config_lib.finetune_config(), image_size=160)
    progs = programs.programs_for(c, SmallCNN(), 4, 1)
    state = progs.runner.put_state(progs.make_state(progs.init_variables(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)))
    images, labels = random_data(8, size=160, num_classes=4)
    batch = progs.runner.put_batch(next(MemoryIterator(images, labels, 8, 4)))
    ours = str(progs.runner._step.lower(state, batch).compile().as_text())
    plain = str(jax.jit(progs.runner._step.__wrapped__).lower(state, batch).compile().as_text())
    assert "ynn_fusion" not in ours and "convolution" in ours
    assert "ynn_fusion" in plain


def test_step_compiled_ahead_in_the_background_is_not_compiled_again_by_the_first_step():
    """trainer.programs.compile_step_ahead (what fit overlaps with initialisation): after wait(), the
    first step finds its executable (no XLA compile), while a batch of another size still compiles;
    a batch the step cannot take raises from wait()."""
    from jax._src.dispatch import BACKEND_COMPILE_EVENT

    from trainer import programs

    c = tiny_config(config_lib.finetune_config(), learning_rate=0.37)  # programs of its own
    progs = programs.programs_for(c, SmallCNN(), 4, 1)
    images, labels = random_data(16, num_classes=4)
    batch = progs.runner.put_batch(next(MemoryIterator(images, labels, 8, 4)))
    wait = programs.compile_step_ahead(progs, batch)
    state = progs.runner.put_state(progs.make_state(progs.init_variables(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)))
    wait()
    compiles: list[str] = []

    def listener(event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event == BACKEND_COMPILE_EVENT:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        state, metrics = progs.runner.step(state, batch)
        jax.block_until_ready(metrics)
        assert compiles == []
        state, metrics = progs.runner.step(state, progs.runner.put_batch(next(MemoryIterator(images, labels, 16, 4))))
        jax.block_until_ready(metrics)
        assert compiles  # the listener sees compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    wrong = dict(next(MemoryIterator(images, labels, 8, 4)), image=np.zeros((8, 16, 16, 5), np.float32))
    with pytest.raises(Exception, match="5"):
        programs.compile_step_ahead(progs, progs.runner.put_batch(wrong))()


def test_cpu_forward_programs_compile_their_convolutions_to_xla_eigen_at_every_size():
    """Evaluation, the importance-weights pass and scoring features (forward only) take Eigen
    convolutions on CPU at any image size (faster at 75 and 299 px, BENCHMARKS.md), through
    trainer.programs.forward_compiler_options; a plain jit of the same function keeps YNNPACK."""
    from selection import scoring, weights
    from trainer import evaluate

    model = SmallCNN()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    images, labels = random_data(8, size=16, num_classes=4)
    batch = {"image": images, "label": labels, "labels": np.eye(4, dtype=np.float32)[labels], "mask": np.ones(8, bool)}

    def apply_fn(v, x):
        return cast(ModelOutputs, model.apply(v, x, train=False))["logits"]

    counts = evaluate._counts_program(model, 4)
    sums = weights._masked_sums_program(apply_fn, 4, 2.0)
    programs: list[tuple[Any, tuple]] = [(counts, (variables, batch)), (sums, (variables, images, batch["mask"]))]
    for program, args in programs:
        ours = str(program.lower(*args).compile().as_text())
        plain = str(jax.jit(program.__wrapped__).lower(*args).compile().as_text())
        assert "ynn_fusion" not in ours and "convolution" in ours
        assert "ynn_fusion" in plain
    features = scoring.on_local_devices(apply_fn, variables, 8)
    np.testing.assert_allclose(features(images), apply_fn(variables, images), rtol=1e-4, atol=1e-5)


class _SlowIterator(MemoryIterator):
    """A MemoryIterator whose every batch takes `delay_s` to arrive (a starved input pipeline)."""

    def __init__(self, *args, delay_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s

    def __next__(self):
        time.sleep(self.delay_s)
        return super().__next__()


def _tensorboard_scalars(logdir) -> dict[str, list[float]]:
    from tensorboardX.proto import event_pb2

    from data import records

    scalars: dict[str, list[float]] = {}
    for name in os.listdir(logdir):
        for raw in records.iter_records(os.path.join(logdir, name)):
            event = event_pb2.Event.FromString(raw)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(value.simple_value)
    return scalars


def test_input_wait_is_measured_logged_and_written_to_tensorboard(tmp_path, capsys):
    c = tiny_config(config_lib.finetune_config(), warmup_steps=1, checkpoint_every_steps=100)
    images, labels = random_data(64)
    slow = fit(
        c,
        model=SmallCNN(),
        make_iterator=lambda: _SlowIterator(images, labels, 16, 4, delay_s=0.1),
        total_steps=10,
        warmup_steps=1,
        workdir=str(tmp_path / "slow"),
    )
    fast = fit(
        c,
        model=SmallCNN(),
        make_iterator=lambda: MemoryIterator(images, labels, 16, 4),
        total_steps=10,
        warmup_steps=1,
        workdir=str(tmp_path / "fast"),
    )
    # The last window (steps 6-10) is past the compile: a 0.1 s batch dwarfs a SmallCNN step.
    assert slow["input_wait_fraction"] > 0.6
    assert slow["input_wait_s_per_step"] == pytest.approx(0.1, abs=0.05)
    assert fast["input_wait_fraction"] < 0.3
    lines = [line for line in capsys.readouterr().out.splitlines() if "step 10/10" in line]
    assert len(lines) == 2 and all("input wait " in line for line in lines)
    assert f"input wait {100 * slow['input_wait_fraction']:.0f}%" in lines[0]
    logged = _tensorboard_scalars(tmp_path / "slow" / "tb")
    assert logged["train/input_wait_fraction"][-1] == pytest.approx(slow["input_wait_fraction"], rel=1e-5)
    assert len(logged["train/input_wait_fraction"]) == len(logged["train/loss"]) == 2


def test_bfloat16_step_computes_in_bf16_keeps_loss_and_batchnorm_statistics_in_float32():
    """compute_dtype bfloat16: every convolution and matmul takes bf16 operands; the loss, the
    BatchNorm statistics (batch and running) and every parameter and optimiser buffer stay float32."""
    from configs.models import inception_v3
    from models.registry import build_model

    model_config = inception_v3.get_config()
    model_config.width_multiplier, model_config.num_classes, model_config.dtype = 0.125, 5, "bfloat16"
    model = build_model(model_config)
    c = tiny_config(config_lib.pretrain_config(), image_size=75, compute_dtype="bfloat16", global_batch_size=2)
    schedule = schedules.warmup_cosine(0.1, 1, 10)
    tx = optim.build_optimizer(c, schedule)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)), train=False))
    state = jax.eval_shape(lambda v: create_state(v, tx, jax.random.PRNGKey(1), True), variables)
    batch = {
        "image": jax.ShapeDtypeStruct((2, 75, 75, 3), jnp.float32),
        "labels": jax.ShapeDtypeStruct((2, 5), jnp.float32),
        "weight": jax.ShapeDtypeStruct((2,), jnp.float32),
    }
    step = make_train_step(model, c, tx, schedule)
    new_state, step_metrics = jax.eval_shape(step, state, batch)
    assert step_metrics["loss"].dtype == jnp.float32
    leaves = jax.tree.leaves((new_state.params, new_state.opt_state, new_state.ema_params))
    assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves((new_state.batch_stats, new_state.ema_batch_stats))} == {
        jnp.dtype(jnp.float32)
    }
    jaxpr = jax.make_jaxpr(step)(state, batch)

    def equations(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from equations(sub)

    eqns = list(equations(jaxpr.jaxpr))
    convs = [e for e in eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
    assert len(convs) > 100  # forward and backward of every conv and of the head
    assert all(v.aval.dtype == jnp.bfloat16 for e in convs for v in e.invars)
    # BatchNorm's batch statistics: the means over the batch of x and x^2 are float32 reductions.
    means = [e for e in eqns if e.primitive.name == "reduce_sum" and e.invars[0].aval.ndim == 4]
    assert means and all(e.outvars[0].aval.dtype == jnp.float32 for e in means)
