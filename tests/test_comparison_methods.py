"""The comparison methods (emd, domain_classifier, kmeans, random, huh) as pipeline methods: their
parameters are validated before any compute, and the tiny flow writes a shard set for all eleven."""

import os
import re
import shutil

import pytest

from configs import demo
from data import manifest
from launch import config_cli, stages, validate
from launch.workdir import Workspace
from selection import methods

ALL = (
    "same",
    "elastic",
    "uniform",
    "reverse",
    "hierarchy",
    "weighted_loss",
    "emd",
    "domain_classifier",
    "kmeans",
    "random",
    "huh",
)


def test_every_method_name_of_the_issue_is_registered_with_its_level():
    assert methods.names() == ALL
    levels = {name: methods.get(name).level for name in ALL}
    assert [n for n in ALL if levels[n] == "example"] == ["domain_classifier", "kmeans", "random"]
    assert not methods.get("huh").sized and methods.get("emd").sized
    config = demo.get_config("tiny")
    config.selection.methods = ALL
    validate.check_config(config)  # the working defaults pass


@pytest.mark.parametrize(
    "method, change, key",
    [
        ("kmeans", {"aggregate": "median"}, "selection.kmeans.aggregate"),
        ("kmeans", {"n_clusters": 0}, "selection.kmeans.n_clusters"),
        ("kmeans", {"p": 0.5}, "selection.kmeans.p"),
        ("domain_classifier", {"classifier": "svm"}, "selection.domain_classifier.classifier"),
        ("domain_classifier", {"holdout_fraction": 1.0}, "selection.domain_classifier.holdout_fraction"),
        ("emd", {"gamma": 0.0}, "selection.emd.gamma"),
        ("huh", {"coarsen": "sideways"}, "selection.huh.coarsen"),
        ("huh", {"split": "half"}, "selection.huh.split"),
        ("huh", {"split_part": "C"}, "selection.huh.split_part"),
    ],
)
def test_bad_method_parameters_stop_before_any_compute(method, change, key):
    config = demo.get_config("tiny")
    config.selection.methods = (method,)
    config.selection[method].update(change)
    with pytest.raises(config_cli.ConfigError, match=re.escape(f"'{key}'")):
        validate.check_config(config)


def test_a_helper_networks_trainer_config_is_validated():
    config = demo.get_config("tiny")
    config.selection.methods = ("kmeans",)
    config.selection.kmeans.helper.train.optimizer = "sgdd"
    with pytest.raises(config_cli.ConfigError, match=re.escape("'selection.kmeans.helper.train.optimizer'")):
        validate.check_config(config)


FIRST_STAGES = ["prepare", "dedup", "pretrain_source", "weights"]


@pytest.fixture(scope="module")
def first_stages(tmp_path_factory):
    """The tiny demo's stages that no test here changes, run once: each test copies them into its work
    dir (they are complete there, so its own run skips them) and runs the stages it is about."""
    done = tmp_path_factory.mktemp("first_stages")
    stages.run_pipeline(demo.get_config("tiny"), str(done), FIRST_STAGES)

    def copy_to(workdir) -> str:
        shutil.copytree(done, workdir, dirs_exist_ok=True)
        return str(workdir)

    return copy_to


@pytest.mark.slow
def test_tiny_flow_writes_a_shard_set_for_all_eleven_methods(tmp_path, first_stages):
    config = demo.get_config("tiny")
    config.selection.methods = ALL
    summaries = stages.run_pipeline(config, first_stages(tmp_path), [*FIRST_STAGES, "select"])
    ws = Workspace(str(tmp_path))
    select = summaries["select"]
    for name in ALL:
        shard_set = manifest.load_manifest(ws.selected(name))
        assert shard_set.num_records > 0, name
        if name in ("elastic", "emd", "domain_classifier", "kmeans", "random"):  # without replacement
            assert shard_set.extra["unique_examples"] == config.selection.size, name
        elif methods.get(name).sized:  # same, uniform, reverse draw with replacement: 60 draws
            assert shard_set.num_records == config.selection.size, name
    for name in ("domain_classifier", "kmeans"):
        assert select[name]["scoring_images"] >= 296  # the whole source forwarded once
        assert os.path.exists(os.path.join(ws.selection_scratch(name), "scores"))
    assert 0.0 <= select["domain_classifier"]["heldout_accuracy"] <= 1.0
    assert select["random"]["scoring_images"] == 0
    huh = manifest.load_manifest(ws.selected("huh"))
    assert huh.label_names == ["latin_upper", "greek_lower", "digit", "math"]  # merged to depth 1
    assert select["huh"]["pretraining_labels"] == 4


@pytest.mark.slow
def test_sequential_pretraining_continues_the_entire_source_model(tmp_path, capsys, first_stages):
    import numpy as np

    from trainer import checkpoint

    config = demo.get_config("tiny")
    config.selection.methods = ("random", "huh")
    config.pretrain_selected.init = "entire_source"
    config.pretrain_selected.steps = 2
    summaries = stages.run_pipeline(config, first_stages(tmp_path), [*FIRST_STAGES, "select", "pretrain_selected"])
    ws = Workspace(str(tmp_path))
    out = capsys.readouterr().out
    assert f"[pretrain/random] initialised from {ws.pretrain('entire_source')}" in out
    assert summaries["pretrain_selected"]["random"]["steps"] == 2  # pretrain_selected.steps, not pretrain.steps
    source = checkpoint.load_variables(ws.pretrain("entire_source"), use_ema=False)["params"]
    tuned = checkpoint.load_variables(ws.pretrain("random"), use_ema=False)["params"]
    coarse = checkpoint.load_variables(ws.pretrain("huh"), use_ema=False)["params"]
    assert tuned["head"]["kernel"].shape == source["head"]["kernel"].shape  # same labels: head kept
    assert coarse["head"]["kernel"].shape[-1] == 4  # Huh's coarse labels: a new head
    # Two steps away from the source model, far closer to it than a fresh initialisation is.
    drift = np.abs(tuned["stage_0"]["ConvBN_0"]["conv"]["kernel"] - source["stage_0"]["ConvBN_0"]["conv"]["kernel"])
    assert float(drift.max()) < 0.05


@pytest.mark.slow
def test_long_tail_fine_tuning_second_stage_on_a_balanced_target_subset(tmp_path, capsys, first_stages):
    config = demo.get_config("tiny")
    config.selection.methods = ("random",)
    config.finetune.seeds = (0,)
    config.finetune_balanced.steps = 2
    config.finetune_balanced.per_class = 1
    stages.run_pipeline(config, first_stages(tmp_path), [*FIRST_STAGES, "select", "pretrain_selected", "finetune"])
    ws = Workspace(str(tmp_path))
    balanced = manifest.load_manifest(ws.balanced_target)
    assert balanced.num_records == 25 and set(balanced.label_counts) == {1}  # one image of each class
    out = capsys.readouterr().out
    assert f"[finetune_balanced/random/seed0] initialised from {ws.finetune('random', 0)}" in out
    for choice in ("entire_source", "random", "random_init"):
        assert os.path.exists(os.path.join(ws.finetune_balanced(choice, 0), "final.json"))


def test_info_nce_known_answer():
    import jax.numpy as jnp
    import numpy as np

    from trainer import losses

    q = jnp.eye(4) * 3.0  # normalised away
    loss, hit = losses.info_nce(q, jnp.eye(4), temperature=0.5)
    # own key at similarity 1, the 3 others at 0: -log(e^2 / (e^2 + 3))
    np.testing.assert_allclose(loss, np.log1p(3 * np.exp(-2.0)), rtol=1e-5)
    assert bool(hit.all())
    _, hit = losses.info_nce(q, jnp.eye(4)[::-1], temperature=0.1)
    assert not bool(hit.any())


@pytest.mark.slow
def test_contrastive_pretraining_of_a_selected_set(tmp_path, first_stages):
    from trainer import checkpoint

    config = demo.get_config("tiny")
    config.selection.methods = ("random",)
    config.finetune.seeds = (0,)
    config.pretrain_selected.objective = "contrastive"
    validate.check_config(config)
    summaries = stages.run_pipeline(
        config, first_stages(tmp_path), [*FIRST_STAGES, "select", "pretrain_selected", "finetune"]
    )
    ws = Workspace(str(tmp_path))
    run = summaries["pretrain_selected"]["random"]
    assert run["steps"] == config.pretrain.steps and 0 < run["loss"] < 10
    head = checkpoint.load_variables(ws.pretrain("random"), use_ema=False)["params"]["head"]["kernel"]
    assert head.shape[-1] == 128  # a projection, not the source labels
    assert checkpoint.load_variables(ws.pretrain("entire_source"), use_ema=False)["params"]["head"]["kernel"].shape[
        -1
    ] == len(manifest.load_manifest(ws.source).label_names)  # the entire source stays supervised
    assert 0.0 <= summaries["finetune"]["random"] <= 1.0  # fine-tuned from it with a fresh head
    assert os.path.exists(ws.induction("random"))  # kNN induction reads the projection-headed model
    bad = demo.get_config("tiny")
    bad.pretrain_selected.objective = "simclr"
    with pytest.raises(config_cli.ConfigError, match="'pretrain_selected.objective'"):
        validate.check_config(bad)
