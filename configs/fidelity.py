"""Fidelity: the papers' findings on the embedded data, beyond the spread between pre-training seeds.

    python -m launch.main --config=configs/fidelity.py --workdir=workdirs/fidelity

DRAFT (being measured).
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
    c.model = small_cnn.get_config()
    c.model.image_size = 32
    c.model.stage_filters = (16, 32, 64)
    c.model.dropout_rate = 0.0
    for section in (c.pretrain, c.finetune):
        section.image_size = 32
    c.pretrain.steps, c.pretrain.warmup_steps = 400, 40
    c.pretrain.checkpoint_every_steps = 200
    c.pretrain.seeds = (0, 1, 2)
    c.finetune.steps, c.finetune.warmup_steps = 100, 10
    # One fine-tuning point for every row (finetune.learning_rate): the demo's validation grid would
    # triple the fine-tuning runs, and the rows compared here differ only in their pre-training data.
    _no_grid(c)

    c.weights.model = small_cnn.get_config()
    c.weights.model.image_size = 32
    c.weights.model.stage_filters = (16, 32, 64)
    c.weights.pretrain = ml_collections.ConfigDict({"steps": 3000, "checkpoint_every_steps": 1000})

    c.selection.methods = ("same", "uniform", "reverse")
    c.selection.size = 4000
    for name in ("same", "uniform", "reverse"):
        c.selection[name].top_k = 50
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
