"""Fidelity: the papers' findings on the embedded data, over several pre-training seeds (issue 14).

    python -m launch.main --config=configs/fidelity.py --workdir=workdirs/fidelity

The demo's data (configs/demo.py: 251 source labels, the 25-letter Greek target, 10 training images
a class; dedup on). Every pre-trained row at 3 pre-training seeds (`pretrain.seeds`), each
fine-tuned with 3 seeds, every selected set 2,000 examples (11% of the source):
- finding 1: the entire source against the same-distribution matcher;
- finding 2 (Ngiam et al. Table 6): same, uniform and reverse over the SAME top 100 labels by w;
- finding 3 (Chakraborty et al. Table 1): the domain classifier against 2,000 random examples.
The rows: a ConvNet with two convolutions a stage (16-32-64, 32 px), 1,000 pre-training steps at
batch 32 each; fine-tuning 100 steps at lr 1e-3 (no validation grid: one point for every row).

Pt comes from the demo's own source model (`weights.model` / `weights.pretrain`, launch/pt_model.py):
the same ConvNet, trained on the entire source for 2,000 steps (78% training accuracy), at T = 1.
Measured reason for T = 1 rather than the paper's 2: that model names a Greek letter for 79% of the
target's training images, yet its softmax at T = 2 puts only 21% of Pt on the 25 Greek labels (mean
max softmax 0.08); at T = 1, 42% (0.31). The domain classifier is the logistic regression on each
seed's entire-source model's features (Chakraborty et al.'s CNN separates source from target by the
target's heavier noise and clutter here: README, "Fidelity").

Expected result (report.csv, 2026-11-30, commit 94cb476, this 2-core AMD EPYC shared with the 3-seed
demo and two other jobs, load average 15-22): top-1 %, mean over pre-training seeds (std over
pre-training seeds; per seed 0 / 1 / 2), Greek share of the selected set:

    entire source                67.87 (2.96)  69.33 / 63.73 / 70.53   10%
    same (top 100)               75.77 (1.69)  74.17 / 78.10 / 75.03   47%
    uniform (top 100)            73.93 (0.99)  74.33 / 74.90 / 72.57   25%
    reverse (top 100)            72.14 (0.25)  72.43 / 72.17 / 71.83   13%
    random 2,000                 63.83 (1.58)  65.70 / 63.97 / 61.83    9%
    domain classifier 2,000      76.08 (0.45)  75.87 / 76.70 / 75.67   26-29%
    random init                  16.80

Finding 1: same - entire = 7.90 > 2.96 (the larger std over pre-training seeds), and at each seed.
Finding 2: same - uniform = 1.84 > 1.69 (thin: seed 0 has uniform 0.16 ahead), uniform - reverse =
1.79 > 0.99. Finding 3: domain classifier - random = 12.25 > 1.58, and at each seed. Time: 43.1 min of
stages on this loaded machine (the process got 13% of a CPU over its wall time: prepare 42 s, dedup
203 s, the entire-source rows 247 + 102 + 101 s with Pt's model beside the first, select 69 s,
selected rows 456 + 449 + 456 s, 57 fine-tuning runs 454 s). Bit for bit on the same processor,
core count and software; another processor's XLA code may differ in the last bits, which training
can amplify (no second machine was available to measure it).
"""

from __future__ import annotations

import ml_collections

from configs import demo
from configs.models import small_cnn


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size = arg or "fidelity"
    if size not in ("fidelity", "tiny"):
        raise ValueError(f"configs/fidelity.py takes 'fidelity' or 'tiny', not {size!r}")
    if size == "tiny":
        return _tiny()
    c = demo.get_config("demo")
    # The rows: the ConvNet that computes Pt (two convolutions a stage, 16-32-64, 32 px), 1,000 steps.
    # At a quarter of its FLOPs (one convolution a stage, 400 steps) the rows reached 37-43% training
    # accuracy and fine-tuned to 15-18%, barely above random init's 10%, and no finding cleared the seeds.
    c.model = small_cnn.get_config()
    c.model.image_size = 32
    c.model.stage_filters = (16, 32, 64)
    c.model.convs_per_stage = 2
    c.model.dropout_rate = 0.0
    for section in (c.pretrain, c.finetune):
        section.image_size = 32
    c.pretrain.steps, c.pretrain.warmup_steps = 1000, 50
    c.pretrain.checkpoint_every_steps = 500
    c.pretrain.seeds = (0, 1, 2)
    c.finetune.steps, c.finetune.warmup_steps = 100, 10
    # One fine-tuning point for every row (finetune.learning_rate): the demo's validation grid would
    # triple the fine-tuning runs, and the rows compared here differ only in their pre-training data.
    _no_grid(c)
    # Pt: the demo's own source model (configs/demo.py: this ConvNet, 2,000 steps, T = 1).

    # Table 6 (same / uniform / reverse over the SAME top labels by w) and Chakraborty et al.'s Table 1
    # (a filtered subset against a random one of the same size), every selected set 2,000 examples
    # (11% of the source; Chakraborty et al. filter 6-12% of ImageNet).
    c.selection.methods = ("same", "uniform", "reverse", "random", "domain_classifier")
    c.selection.size = 2000
    # The top 100 labels by w: Greek is 47% of the same matcher's draws, 25% of uniform's and 6% of
    # reverse's (pilot Pt); over the top 50 the three held 62 / 48 / 37% Greek, all past the point where
    # more Greek helps (pilot, seed 0: 79.5 / 81.0 / 77.5 against the entire source's 69.6).
    for name in ("same", "uniform", "reverse"):
        c.selection[name].top_k = 100
    # The domain classifier on the entire-source model's features (the cheaper variant of Algorithm 2):
    # the CNN variant, trained on 250 target and 250 source images, separates them by the target's
    # heavier noise, blur and clutter (78% held out) and keeps 13% Greek, the random set's share;
    # on the source model's features it keeps 22% (pilot, seed 0: 74.3 against random's 66.5).
    c.selection.domain_classifier.classifier = "logistic"
    return c


def _tiny() -> ml_collections.ConfigDict:
    """The same flow on demo.py:tiny's data and model in seconds a run (tests/test_fidelity.py): two
    pre-training seeds, Pt from its own smaller source model trained longer than the rows."""
    c = demo.get_config("tiny")
    _no_grid(c)
    c.pretrain.seeds = (0, 1)
    c.weights.model = ml_collections.ConfigDict(c.model.to_dict())
    c.weights.model.stage_filters = (8, 16)
    c.weights.pretrain = ml_collections.ConfigDict({"steps": 8, "seed": 5})
    c.selection.methods = ("same", "uniform")
    c.selection.uniform.top_k = 10
    c.report.induction = False
    return c


def _no_grid(c: ml_collections.ConfigDict) -> None:
    """One fine-tuning point for every row (`finetune.learning_rate` / `weight_decay`), no validation grid."""
    for prefix in ("", "random_init_"):
        c.finetune_sweep[prefix + "learning_rates"], c.finetune_sweep[prefix + "weight_decays"] = (), ()
