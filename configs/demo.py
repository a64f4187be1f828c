"""Demo: the whole target-conditioned pre-training flow on the embedded glyph corpus, on CPU.

Command (the README's main job):
    bash scripts/demo.sh
  = python -m launch.main --config=configs/demo.py --workdir=workdirs/demo

`configs/demo.py:tiny` is the variant the end-to-end test runs: the same flow on a few hundred images
with a small ConvNet, under 10 s a launch.

Rows compared on the same target, equal pre-training steps for every pre-trained row: the entire
source, the same-distribution matcher's shards, the elastic matcher's shards, random initialisation.
Expected result: see README.md ("The demo's numbers").
"""

from __future__ import annotations

import ml_collections

from configs.models import inception_v3, small_cnn
from data import beam_runner, dedup, embedded
from selection import methods
from trainer import config as trainer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size = arg or "demo"
    if size not in ("demo", "tiny"):
        raise ValueError(f"configs/demo.py takes 'demo' or 'tiny', not {size!r}")
    tiny = size == "tiny"
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Independent runs of a stage (selected-set pre-trainings, fine-tuning seeds) at once, one process
    # per core (launch/concurrent.py): 0 = as many as this CPU host has cores; 1 = one after another.
    # Tiny runs last a second: a worker's start and its own compiles cost more than they save
    # (BENCHMARKS.md: stages 5-6 of the tiny flow took 90-95 s side by side against 58-93 s in turn).
    c.concurrent_runs = 1 if tiny else 0

    c.data = ml_collections.ConfigDict()
    c.data.kind = "embedded"
    c.data.target_name = "greek_glyphs"
    c.data.embedded = embedded.default_config()
    # "beam": external sides (data.kind = "external") are converted by an Apache Beam job on data.beam's
    # runner (data/beam_prepare.py: unreadable images skipped and listed, not fatal).
    c.data.preparer = "inprocess"
    c.data.beam = beam_runner.default_config()
    # A source a CPU-budget Inception can learn, so that Pt follows letter identity: 251 labels (whole
    # Latin and Greek alphabets, 6 sampled characters from each other group), 60-150 images per label,
    # drawn like the target (dark ink on paper) but in other fonts. With the builder's default
    # (527 labels, random colours, 1.25 labels per image) this model stays at the label prior for
    # 1-2k steps and Pt is uniform (README, "The demo's numbers").
    source = c.data.embedded.source
    source.max_labels_per_group = 6
    source.whole_groups = "latin_lower,latin_upper,greek_lower,greek_upper"
    source.min_images_per_label, source.max_images_per_label = 60, 150
    source.multi_label_fraction = 0.0
    source.style.palette = "paper"
    source.style.noise_std_max, source.style.clutter_prob, source.style.blur_prob = 0.05, 0.1, 0.2
    source.style.em_min, source.style.max_rotation_deg = 0.7, 8.0
    if tiny:
        c.data.embedded.num_workers = 0
        c.data.embedded.source.groups = "latin_upper,greek_lower,digit,math"
        c.data.embedded.source.max_labels_per_group = 6
        c.data.embedded.source.min_images_per_label = 4
        c.data.embedded.source.max_images_per_label = 8
        c.data.embedded.source.num_shards = 2
        c.data.embedded.target.train_per_class = 2
        c.data.embedded.target.test_per_class = 3

    if tiny:
        # The tiny run tests the flow, not the model: a small ConvNet compiles in about a second where
        # Inception-v3 takes tens (Inception's own training is tested in tests/test_trainer_embedded.py).
        c.model = small_cnn.get_config()
        c.model.stage_filters = (16, 32, 64)
        c.model.image_size = 32
        c.model.bn_momentum = 0.5  # a handful of steps
    else:
        c.model = inception_v3.get_config()
        c.model.width_multiplier = 0.25
        c.model.image_size = 75
        c.model.aux_head = False
        c.model.bn_momentum = 0.9  # Slim's 0.9997 is for millions of steps; these runs are ~1k steps
    c.model.dropout_rate = 0.0

    c.pretrain = trainer_config.pretrain_config()
    # Pre-training seeds: () = one run per row at pretrain.seed; e.g. (0, 1, 2) trains every row at each
    # seed in one job (pretrain_seed_<p>/; one Pt, so the same selected sets) and reports both spreads.
    c.pretrain.seeds = ()
    c.pretrain.global_batch_size = 16 if tiny else 32
    c.pretrain.steps = 6 if tiny else 1500  # Inception leaves the label prior only after ~500 steps here
    c.pretrain.warmup_steps = 2 if tiny else 50
    # Adam, not the papers' SGD: at ~1k CPU steps SGD leaves this model near chance (README).
    c.pretrain.optimizer = "adam"
    c.pretrain.learning_rate = 2e-3
    c.pretrain.checkpoint_every_steps = 3 if tiny else 500
    c.pretrain.log_every_steps = 2 if tiny else 100
    c.pretrain.image_size = c.model.image_size
    # The renderer already varies size, position and rotation; crops and label smoothing slowed
    # learning at this budget (Greek Pt/Ps after 1500 steps: 1.37 with them, 1.60 without).
    c.pretrain.augment = False
    c.pretrain.label_smoothing = 0.0
    # Glyphs: a mirror image or a 10% crop changes or loses the character.
    c.pretrain.flip = False
    c.pretrain.min_crop_area = 0.5
    c.pretrain.ema_decay = 0.0  # an EMA over ~1k steps would mostly average untrained weights
    c.pretrain.eval_with_ema = False
    c.pretrain.aux_loss_weight = 0.0

    # Near-duplicates of target images leave the source before anything trains on it (dedup stage);
    # the demo plants some (shifted, rescaled, recoloured copies of target images) to show it working.
    c.dedup = dedup.default_config()
    c.data.embedded.source.planted_duplicates = 20 if tiny else 100

    c.weights = ml_collections.ConfigDict()
    c.weights.temperature = 2.0
    c.weights.batch_size = 32 if tiny else 128
    if not tiny:
        # Pt from its own source model (launch/pt_model.py), still trained on the entire source from
        # scratch: after the rows' 1,500 Inception steps Pt is flat (max 0.01, perplexity 222 of 251
        # labels at T = 2, 2026-11-30), so the matchers resample nearly the source itself. This ConvNet
        # (two convolutions a stage, 2,000 steps at 32 px) names the right Greek letter for 79% of the
        # target images; T = 1, not the paper's 2, because at T = 2 its Pt puts 21% on Greek, at T = 1
        # 42% (README, "Fidelity"). Seed fixed: every pre-training seed of the rows reads the same Pt.
        c.weights.model = small_cnn.get_config()
        c.weights.model.image_size = 32
        c.weights.model.stage_filters = (16, 32, 64)
        c.weights.model.convs_per_stage = 2
        c.weights.pretrain = ml_collections.ConfigDict(
            {"steps": 2000, "image_size": 32, "seed": 0, "checkpoint_every_steps": 500}
        )
        c.weights.temperature = 1.0

    # Every method's parameters sit at selection.<name> (selection/methods.py): e.g.
    # --config.selection.methods="('same','uniform','hierarchy')" --config.selection.uniform.top_k=50.
    # Ngiam et al. sample by the weights: the resampled shards train with an unweighted loss; the
    # `weighted_loss` method (the entire source, loss weighted by w) is the paper's alternative.
    c.selection = methods.selection_config()
    c.selection.methods = ("same", "elastic")
    c.selection.size = 60 if tiny else 12000
    c.selection.records_per_shard = 100 if tiny else 2000
    c.selection.hierarchy.ancestors = ("greek",)  # script -> group -> character
    # Table 6: the same-distribution matcher over the 50 labels of largest w (0: every label).
    c.selection.same.top_k = 0 if tiny else 50
    # The comparison methods' helper networks (domain classifier, k-means feature extractor) see the
    # glyphs at their rendered 32 px; tiny: a few steps, as every other run of the tiny flow.
    for name in ("domain_classifier", "kmeans"):
        helper = c.selection[name].helper
        helper.train.image_size = helper.model.image_size = 32
        if tiny:
            helper.train.steps, helper.train.warmup_steps = 6, 1
            helper.train.global_batch_size, helper.train.eval_batch_size = 16, 32
            helper.train.checkpoint_every_steps, helper.train.log_every_steps = 6, 3
            helper.model.stage_filters = (8, 16)
            c.selection[name].batch_size = 32
    c.selection.emd.batch_size = 32 if tiny else 256

    # "scratch": every selected set is pre-trained from random weights (Ngiam et al.); "entire_source":
    # it continues the entire-source model for `steps` more steps (0: pretrain.steps), Chakraborty et
    # al.'s sequential pre-training / ImageNet+ (the new head is kept: the label set is the same).
    # `objective`: "supervised", or "contrastive" (the selected sets pre-trained MoCo-style, labels
    # unused, as Chakraborty et al. pre-train their filtered subsets with MoCo-v2; trainer/step.py).
    c.pretrain_selected = ml_collections.ConfigDict({"init": "scratch", "steps": 0, "objective": "supervised"})

    # Cui et al.'s long-tail fine-tuning: after fine-tuning, `steps` more at `learning_rate` on a
    # class-balanced subset of the target (`per_class` images per class, 0: the smallest class's
    # count); the test metrics are then the second stage's. 0 steps: off (the demo target is balanced).
    c.finetune_balanced = ml_collections.ConfigDict({"steps": 0, "learning_rate": 1e-4, "per_class": 0})

    c.finetune = trainer_config.finetune_config()
    c.finetune.global_batch_size = 16 if tiny else 32
    c.finetune.steps = 4 if tiny else 150
    c.finetune.warmup_steps = 1 if tiny else 15
    c.finetune.optimizer = "adam"
    c.finetune.learning_rate = 1e-3
    c.finetune.checkpoint_every_steps = 4 if tiny else 100  # tiny: the final step only
    c.finetune.log_every_steps = 2 if tiny else 50
    c.finetune.image_size = c.model.image_size
    c.finetune.flip = False
    c.finetune.min_crop_area = 0.5
    c.finetune.aux_loss_weight = 0.0
    c.finetune.seeds = (0, 1) if tiny else (0, 1, 2)

    # Fine-tuning hyper-parameters chosen as the papers do: each (learning rate, weight decay) of the
    # grid trained on 80% of the target's training split and scored on the rest (per class, seeded);
    # the best is re-trained on the whole training split over the seeds. Random initialisation has its
    # own grid (larger rates). The demo's grid is small (2 points a row) to stay within its time.
    c.finetune_sweep = ml_collections.ConfigDict()
    c.finetune_sweep.learning_rates = (1e-3, 3e-3)
    c.finetune_sweep.weight_decays = (1e-4,)
    c.finetune_sweep.random_init_learning_rates = (3e-3, 1e-2)
    c.finetune_sweep.random_init_weight_decays = (1e-4,)
    c.finetune_sweep.validation_fraction = 0.5 if tiny else 0.2  # tiny: 2 images a class, one to validate
    c.finetune_sweep.validation_seed = 0

    c.report = ml_collections.ConfigDict()
    c.report.top_labels = 10 if tiny else 20
    c.report.plot_top_labels = 50 if tiny else 200
    # Huh et al.'s kNN induction accuracy of every pre-trained model's frozen features on the target
    # (finetune stage, report columns induction_top1/5): a feature pass over the target per row.
    c.report.induction = tiny
    return c
