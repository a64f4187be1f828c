"""The fine-tuning hyper-parameter grid (issue 11 item 8): grid per row, validation carve, validation."""

import re

import pytest

from configs import demo
from data import embedded, manifest, records
from launch import config_cli, stages, validate
from trainer import sweep


def test_grid_is_the_product_and_random_init_has_its_own():
    config = demo.get_config("tiny")
    config.finetune_sweep.learning_rates = (1e-3, 3e-3)
    config.finetune_sweep.weight_decays = (0.0, 1e-4)
    config.finetune_sweep.random_init_learning_rates = (1e-2,)
    config.finetune_sweep.random_init_weight_decays = (1e-5,)
    assert stages.finetune_grid(config, "same") == [(1e-3, 0.0), (1e-3, 1e-4), (3e-3, 0.0), (3e-3, 1e-4)]
    assert stages.finetune_grid(config, "entire_source") == stages.finetune_grid(config, "same")
    assert stages.finetune_grid(config, "random_init") == [(1e-2, 1e-5)]
    del config.finetune_sweep
    assert stages.finetune_grid(config, "same") == []  # no grid: finetune.learning_rate / weight_decay


@pytest.mark.parametrize(
    "change, message",
    [
        ({"learning_rates": (0.0,)}, "'finetune_sweep.learning_rates' = (0.0,)"),
        ({"weight_decays": (-1e-4,)}, "'finetune_sweep.weight_decays' = (-0.0001,)"),
        ({"random_init_weight_decays": ()}, "'finetune_sweep.random_init_weight_decays' = ()"),
        ({"validation_fraction": 0.0}, "'finetune_sweep.validation_fraction' = 0.0"),
    ],
)
def test_bad_grid_is_refused_before_compute(change, message):
    config = demo.get_config("tiny")
    config.finetune_sweep.update(change)
    with pytest.raises(config_cli.ConfigError, match=re.escape(message)):
        validate.check_config(config, check_paths=False)


def _ids(directory: str) -> list[bytes]:
    shard_set = manifest.load_manifest(directory)
    return [records.decode_example(r).example_id for f in shard_set.files for r in records.iter_records(f)]


def test_validation_carve_is_reproducible_per_class_and_disjoint(tmp_path):
    data = demo.get_config("demo").data.embedded  # 10 training images a class
    data.num_workers = 0
    embedded.build_target(str(tmp_path / "target"), data)
    train_dir = str(tmp_path / "target" / "train")
    first = sweep.split_train_val(train_dir, str(tmp_path / "a"), 0.2, 0)
    again = sweep.split_train_val(train_dir, str(tmp_path / "b"), 0.2, 0)
    other_seed = sweep.split_train_val(train_dir, str(tmp_path / "c"), 0.2, 1)
    assert [_ids(d) for d in first] == [_ids(d) for d in again]
    assert _ids(first[1]) != _ids(other_seed[1])
    sub_train, val = (set(_ids(d)) for d in first)
    assert not sub_train & val and sub_train | val == set(_ids(train_dir))
    assert manifest.load_manifest(first[1]).label_counts == [2] * 25  # 20% of each class's 10
