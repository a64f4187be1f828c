"""Fidelity: the papers' findings on the embedded data, over several pre-training seeds (issue 14).

    python -m launch.main --config=configs/fidelity.py --workdir=workdirs/fidelity

The demo's data (configs/demo.py: 251 source labels, the 25-letter Greek target, 10 training images
a class; dedup on). Every pre-trained row at 3 pre-training seeds (`pretrain.seeds`), each
fine-tuned with 3 seeds: the entire source and three selections of 4,000 examples over the SAME top
50 labels by w (Table 6's comparison): the same-distribution matcher, uniform, reverse. The rows are
the small ConvNet (16-32-64, 32 px), 400 pre-training steps at batch 32 each; fine-tuning 100 steps at
lr 1e-3 (no validation grid: one point for every row).

Pt comes from its own source model (`weights.model` / `weights.pretrain`, `launch/pt_model.py`): the
same ConvNet with two convolutions a stage, trained on the entire source for 2,000 steps (78%
training accuracy), at T = 1. Measured reason for T = 1 rather than the paper's 2: that model names a
Greek letter for 79% of the target's training images, yet its softmax at T = 2 puts only 21% of Pt
on the 25 Greek labels (mean max softmax 0.08); at T = 1, 42% (0.31), and 20 of the top 25 labels
by w are Greek (13 at T = 2). With the rows' own 400-step model at T = 2 (the paper's way) Pt is flat
(README, "Fidelity").

Expected result (report.csv, 2026-11-30, this 2-core machine shared with other jobs, dedup on; Pt's
model was reused from a run on the source before dedup, which holds 169 more images, 0.9%): top-1 %,
mean over pre-training seeds (std over pre-training seeds; per seed 0 / 1 / 2):

    entire source     15.93 (0.87)  17.17 / 15.30 / 15.33
    same (top 50)     17.79 (1.04)  19.17 / 17.53 / 16.67
    uniform (top 50)  17.62 (0.48)  18.30 / 17.20 / 17.37
    reverse (top 50)  16.99 (0.57)  17.13 / 16.23 / 17.60
    random init       10.40

Finding 1 holds beyond the pre-training-seed spread (same - entire = 1.86 > 1.04) and at each seed;
Table 6's order holds in the means (same > uniform > reverse) but within the spread. Time: the stages
take about 51 min on this machine at load average 15-19 (prepare 101 s, dedup 970 s, Pt's model 927 s,
entire-source rows 216 s, select 17 s, selected rows 255 s, 39 fine-tuning runs 205 s); each process
got 17-24% of a core (its CPU time over its wall time), so on 2 quiet cores about 10-12 min. Bit for
bit on the same processor and software; another processor's XLA code may differ in the last bits,
which training can amplify (not measured on a second machine).
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
