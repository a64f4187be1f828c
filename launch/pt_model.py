"""Which source-trained model computes Pt (the weights stage), and how that model is pre-trained.

Ngiam et al. compute Pt with the model pre-trained on the entire source, and that is the default:
`weights.model` and `weights.pretrain` empty. On a CPU budget that model can be too weak for Pt to
say anything (README, "The demo's numbers": after 1,500 Inception steps its mean max softmax at
T = 2 is 0.05 and Pt is nearly flat), so a job may give Pt its own source model, still trained on
the entire source from scratch, as the paper's method asks:

- `weights.model`: a complete model config (e.g. a faster network than the rows'); empty: `model`;
- `weights.pretrain`: fields that override `pretrain` for it (e.g. more `steps`); empty: `pretrain`.

It is trained once per job (every pre-training seed of `pretrain.seeds` reads the same Pt) in the
work dir's `weights/model/`, and resumes like every training run. The rows being compared (the
entire source, every selected set) keep `model` and `pretrain`: the same architecture and the same
pre-training budget. The report names the model that computed Pt (`describe`).
"""

from __future__ import annotations

import ml_collections

from trainer import config as trainer_config


def own_model(config: ml_collections.ConfigDict) -> bool:
    """Whether Pt comes from its own source model rather than the entire-source row's."""
    weights = config.weights
    return bool(len(weights.get("model") or {})) or bool(len(weights.get("pretrain") or {}))


def model_config(config: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
    """The model config of Pt's source model, over the source's `num_classes` labels."""
    base = config.weights.get("model") or ml_collections.ConfigDict()
    model = ml_collections.ConfigDict((base if len(base) else config.model).to_dict())
    model.num_classes = num_classes
    return model


def run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The trainer config of Pt's own source model: `pretrain` with `weights.pretrain`'s fields over it.

    Trained on the entire source with an unweighted loss; `pretrain.seeds` (the rows' seeds) does not
    apply: its seed is `weights.pretrain.seed` if set, else `pretrain.seed`."""
    run = trainer_config.run_section(config.pretrain)
    overrides = config.weights.get("pretrain") or ml_collections.ConfigDict()
    run.update(overrides.to_dict())
    run.use_example_weights = False
    return run


def image_size(config: ml_collections.ConfigDict) -> int:
    """The resolution Pt's model sees the target images at (its own pre-training resolution)."""
    return int(run_config(config).image_size) if own_model(config) else int(config.pretrain.image_size)


def describe(config: ml_collections.ConfigDict) -> str:
    """One line for the report: which model computed Pt, at which budget and temperature."""
    temperature = float(config.weights.temperature)
    if not own_model(config):
        return (
            f"Pt computed by the entire-source model (the rows' `{config.model.name}`, {int(config.pretrain.steps)} "
            f"steps; Ngiam et al.), T = {temperature:g}."
        )
    model = model_config(config, 0)
    run = run_config(config)
    width = f" width x{model.width_multiplier}" if "width_multiplier" in model else ""
    return (
        f"Pt computed by its own source model (weights.model / weights.pretrain): `{model.name}`{width} at "
        f"{int(run.image_size)} px, trained on the entire source for {int(run.steps)} steps at batch "
        f"{int(run.global_batch_size)}, seed {int(run.seed)}; T = {temperature:g}. The rows compared keep "
        f"`{config.model.name}` and {int(config.pretrain.steps)} pre-training steps each."
    )
