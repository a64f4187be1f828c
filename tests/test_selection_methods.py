"""The method registry (selection/methods.py) and what the pipeline reads from it."""

import re

import ml_collections
import numpy as np
import pytest

from configs import demo
from launch import config_cli, report, stages, validate
from selection import methods
from selection import plan as plan_lib
from selection import weights as weights_lib
from trainer import config as trainer_config

NAMES = ["A", "B", "C", "D"]
COUNTS = np.array([10, 40, 50, 0])
PT = np.array([0.5, 0.3, 0.15, 0.05])


def test_registry_names_and_their_config_sections():
    assert methods.names()[:6] == ("same", "elastic", "uniform", "reverse", "hierarchy", "weighted_loss")
    config = methods.selection_config()
    for name in methods.names():
        method = methods.get(name)
        assert config[name].to_dict() == method.defaults().to_dict()
        assert report.row_title(name) == method.title
    assert config.uniform.top_k == 0 and config.hierarchy.ancestors == ("greek",)
    with pytest.raises(ValueError, match="unknown selection method 'nope'"):
        methods.get("nope")


def _context(name: str, size: int = 30, **params) -> methods.PlanContext:
    p = methods.get(name).defaults()
    p.update(params)
    w = weights_lib.ImportanceWeights.compute(NAMES, PT, COUNTS, 100)
    return methods.PlanContext(NAMES, COUNTS, 100, {"x": ["A", "B"]}, w, size, p)


def _label_plan(selection: methods.Selection) -> plan_lib.LabelPlan:
    assert isinstance(selection.plan, plan_lib.LabelPlan)  # a label-level method
    return selection.plan


def test_label_methods_plan_from_the_weights_stage_w():
    w = weights_lib.ImportanceWeights.compute(NAMES, PT, COUNTS, 100).w
    for name in ("same", "elastic", "uniform", "reverse", "weighted_loss"):
        plan = _label_plan(methods.get(name).plan(_context(name)))
        np.testing.assert_array_equal(plan.weight, w)  # never recomputed with another N
    same = _label_plan(methods.get("same").plan(_context("same"))).planned
    np.testing.assert_allclose(same, [*(30 * PT[:3] / PT[:3].sum()), 0])  # proportional to Pt
    top2 = _label_plan(methods.get("same").plan(_context("same", top_k=2)))
    assert top2.planned[2] == 0 and top2.planned.sum() == pytest.approx(30)  # same restricted like uniform
    whole = _label_plan(methods.get("weighted_loss").plan(_context("weighted_loss")))
    np.testing.assert_array_equal(whole.planned, COUNTS)  # every example once: no resampling
    subset = methods.get("hierarchy").plan(_context("hierarchy", ancestors=("x",)))
    np.testing.assert_array_equal(_label_plan(subset).planned, [10, 40, 0, 0])
    np.testing.assert_array_equal(subset.label_weights, [1, 1, 0, 0])


def test_resampled_shards_train_unweighted_with_the_trainers_defaults():
    config = demo.get_config("tiny")
    config.pretrain = trainer_config.pretrain_config()  # the trainer's own defaults, not the demo's
    config.selection.methods = ("same", "elastic", "uniform", "reverse", "hierarchy", "weighted_loss")
    for name in (None, "same", "elastic", "uniform", "reverse", "hierarchy"):
        assert not stages.pretrain_run_config(config, name).use_example_weights, name
    assert stages.pretrain_run_config(config, "weighted_loss").use_example_weights


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": ("same", "nope")}, "'selection.methods' = ('same', 'nope'): unknown method 'nope'"),
        ({"size": 0}, "'selection.size' = 0"),
        ({"methods": ("hierarchy",), "hierarchy": {"ancestors": ()}}, "'selection.hierarchy.ancestors' = ()"),
        ({"methods": ("uniform",), "uniform": {"top_k": -1}}, "'selection.uniform.top_k' = -1"),
        ({"methods": ("hierarchy",), "size": 0}, None),  # a subset has no size
    ],
)
def test_validate_config_reads_the_registry(change, message):
    config = demo.get_config("tiny")
    config.selection.update(change)
    if message is None:
        validate.check_config(config)
        return
    with pytest.raises(config_cli.ConfigError, match=re.escape(message)):
        validate.check_config(config)


def test_a_weighted_loss_set_by_hand_is_refused():
    config = demo.get_config("tiny")
    config.pretrain.use_example_weights = True
    with pytest.raises(config_cli.ConfigError, match="pretrain.use_example_weights"):
        validate.check_config(config)
    assert isinstance(config.selection, ml_collections.ConfigDict)
