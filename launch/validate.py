"""Semantic checks of a job's config and work dir, run before any compute or write.

A bad value found late costs a prepare stage or a pre-training run, or worse, runs to completion
at chance (a negative learning rate trains fine). So every field a stage reads is checked here
first, and the first bad one stops the job with one line naming the key and what it accepts:

    config key 'pretrain.global_batch_size' = 0: must be an integer > 0

`check_config` and `check_workdir` need no JAX; `check_devices` needs the process and device
counts, so `launch.main` calls it after `jax.distributed.initialize()` and before the first stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from launch.config_cli import ConfigError

TRAINER_SECTIONS = ("pretrain", "finetune")
_MISSING = object()


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _fail(key: str, value: Any, accepts: str) -> ConfigError:
    return ConfigError(f"config key '{key}' = {value!r}: must be {accepts}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Rule builders: each returns (predicate, what the key accepts).
Rule = tuple[Callable[[Any], bool], str]


def int_at_least(low: int) -> Rule:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}" if low != 1 else "an integer > 0"


def number_above(low: float) -> Rule:
    return (lambda v: _is_number(v) and v > low), f"a number > {low:g}"


def number_at_least(low: float) -> Rule:
    return (lambda v: _is_number(v) and v >= low), f"a number >= {low:g}"


def fraction(*, open_low: bool = False, closed_high: bool = False) -> Rule:
    lo, hi = "(" if open_low else "[", "]" if closed_high else ")"

    def ok(v: Any) -> bool:
        return _is_number(v) and (v > 0 if open_low else v >= 0) and (v <= 1 if closed_high else v < 1)

    return ok, f"a number in {lo}0, 1{hi}"


def one_of(choices: Sequence[str]) -> Rule:
    return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


def is_bool() -> Rule:
    return (lambda v: isinstance(v, bool)), "True or False"


def _section_rules(section: str, min_size: int) -> dict[str, Rule]:
    from models.layers import DTYPES
    from trainer import losses, optim, parallel, warm_start

    rules: dict[str, Rule] = {
        "parallelism": one_of(parallel.PARALLELISMS),
        "fsdp": is_bool(),
        "global_batch_size": int_at_least(1),
        "steps": int_at_least(0),
        "epochs": number_at_least(0),
        "warmup_steps": int_at_least(0),
        "warmup_epochs": number_at_least(0),
        "optimizer": one_of(optim.OPTIMIZERS),
        "learning_rate": number_above(0),
        "end_learning_rate": number_at_least(0),
        "momentum": fraction(),
        "rmsprop_decay": fraction(),
        "rmsprop_epsilon": number_above(0),
        "weight_decay": number_at_least(0),
        "weight_decay_mode": one_of(optim.WEIGHT_DECAY_MODES),
        "label_smoothing": fraction(),
        "aux_loss_weight": number_at_least(0),
        "multi_label_loss": one_of(losses.MULTI_LABEL_LOSSES),
        "ema_decay": fraction(),
        "image_size": int_at_least(min_size),
        "min_crop_area": fraction(open_low=True, closed_high=True),
        "compute_dtype": one_of(tuple(DTYPES)),
        "bn_momentum": (
            lambda v: v in ("model", "auto") or (_is_number(v) and 0 <= v < 1),
            "'model', 'auto' or a number in [0, 1)",
        ),
        "reinit_head": one_of(warm_start.REINIT_HEAD_CHOICES),
        "checkpoint_every_steps": int_at_least(1),
        "keep_checkpoints": int_at_least(1),
        "log_every_steps": int_at_least(1),
        "eval_batch_size": int_at_least(1),
        "worker_count": int_at_least(0),
        "seed": int_at_least(0),
    }
    return {f"{section}.{k}": v for k, v in rules.items()}


def _check(config: ml_collections.ConfigDict, rules: dict[str, Rule], required: bool = True) -> None:
    for key, (ok, accepts) in rules.items():
        value = _get(config, key)
        if value is _MISSING:
            if required:
                raise ConfigError(f"config key '{key}' is missing: the config must set it ({accepts})")
            continue
        if not ok(value):
            raise _fail(key, value, accepts)


def _check_trainer(config: ml_collections.ConfigDict, section: str, min_size: int) -> None:
    _check(config, _section_rules(section, min_size))
    c = _get(config, section)
    if c.steps == 0 and c.epochs == 0:
        raise ConfigError(f"config keys '{section}.steps' and '{section}.epochs' are both 0: set one to a value > 0")
    if c.steps and c.warmup_steps >= c.steps:
        raise _fail(f"{section}.warmup_steps", c.warmup_steps, f"smaller than {section}.steps = {c.steps}")
    if c.fsdp and c.parallelism != "jit":
        raise _fail(
            f"{section}.fsdp", c.fsdp, f"False when {section}.parallelism is {c.parallelism!r} (fsdp needs 'jit')"
        )
    if c.end_learning_rate > c.learning_rate:
        raise _fail(f"{section}.end_learning_rate", c.end_learning_rate, f"<= {section}.learning_rate")


def _check_pt_model(config: ml_collections.ConfigDict) -> None:
    """`weights.model` (a complete model config, or empty) and `weights.pretrain` (fields of `pretrain`
    that Pt's own source model overrides, or empty): checked as the model and recipe they resolve to."""
    from launch import pt_model
    from models import registry

    if not pt_model.own_model(config):
        return
    model = config.weights.get("model") or ml_collections.ConfigDict()
    if len(model):
        _check(config, {"weights.model.name": one_of(tuple(registry.model_names()))})
        min_size = registry.min_image_size(model.name)
        _check(config, {"weights.model.image_size": int_at_least(min_size)})
    else:
        min_size = registry.min_image_size(config.model.name)
    overrides = config.weights.get("pretrain") or {}
    for key in overrides.keys():
        if key not in config.pretrain:
            raise ConfigError(
                f"unknown config key 'weights.pretrain.{key}': it overrides a field of 'pretrain', which has no '{key}'"
            )
    resolved = ml_collections.ConfigDict({"weights": {"pretrain": pt_model.run_config(config).to_dict()}})
    _check_trainer(resolved, "weights.pretrain", min_size)


def _check_seeds(key: str, seeds: Any) -> None:
    if not isinstance(seeds, (tuple, list)) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise _fail(key, seeds, "a non-empty tuple of integers >= 0, e.g. (0, 1, 2)")
    if len(set(seeds)) != len(seeds):
        raise _fail(key, seeds, "a tuple of distinct seeds")


WRITERS = ("inprocess", "beam")  # selection.writer, data.preparer


def _check_beam(config: ml_collections.ConfigDict, prefix: str) -> None:
    """A Beam runner block (data.beam_runner.default_config): names, counts, and the options its runner needs."""
    from data import beam_runner

    _check(
        config,
        {
            f"{prefix}.runner": one_of(beam_runner.RUNNERS),
            f"{prefix}.direct_running_mode": one_of(beam_runner.RUNNING_MODES),
            f"{prefix}.direct_num_workers": int_at_least(1),
        },
    )
    try:
        beam_runner.option_flags(_get(config, prefix), prefix=prefix)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _method_param_rules() -> dict[str, Rule]:
    """Rules for the parameters the comparison methods share names for (selection.methods)."""
    return {
        "batch_size": int_at_least(1),
        "gamma": number_above(0),
        "classifier": one_of(("cnn", "logistic")),
        "holdout_fraction": fraction(open_low=True),
        "C": number_above(0),
        "n_clusters": int_at_least(1),
        "aggregate": one_of(("min", "mean")),
        "p": number_at_least(1),
        "per_class": int_at_least(0),
        "num_classes": int_at_least(0),
        "coarsen": one_of(("none", "depth", "bottom_up")),
        "coarsen_depth": int_at_least(0),
        "coarsen_iterations": int_at_least(0),
        "split": one_of(("none", "random", "minimal")),
        "split_depth": int_at_least(0),
        "split_part": one_of(("A", "B")),
    }


def _check_selection(config: ml_collections.ConfigDict) -> None:
    """`selection.methods` and each selected method's parameters, against the registry (selection.methods)."""
    from selection import methods as methods_lib
    from selection import weights

    key = "selection.methods"
    known = methods_lib.names()
    methods = config.selection.methods
    accepts = "a non-empty tuple of distinct names from " + ", ".join(repr(m) for m in known)
    if not isinstance(methods, (tuple, list)) or not methods:
        raise _fail(key, methods, accepts)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(
            f"config key '{key}' = {tuple(methods)!r}: unknown method {unknown[0]!r}; known: "
            + ", ".join(repr(m) for m in known)
        )
    if len(set(methods)) != len(methods):
        raise _fail(key, tuple(methods), accepts)
    rules: dict[str, Rule] = {
        "selection.records_per_shard": int_at_least(1),
        "selection.example_weight_rule": one_of(weights.EXAMPLE_WEIGHT_RULES),
        "selection.writer": one_of(WRITERS),
        "selection.write_processes": int_at_least(0),
    }
    if any(methods_lib.get(m).sized for m in methods):
        rules["selection.size"] = number_above(0)
        rules["selection.sizes"] = (
            lambda v: isinstance(v, (tuple, list)) and len(set(v)) == len(v) and all(_is_int(s) and s > 0 for s in v),
            "a tuple of distinct integers > 0 (more selected-set sizes, Figure 2), e.g. (3000, 6000)",
        )
    for name in methods:
        if _get(config, f"selection.{name}") is _MISSING:
            raise ConfigError(
                f"config key 'selection.{name}' is missing: the method's parameters "
                "(selection.methods.selection_config() makes them)"
            )
        if "top_k" in config.selection[name]:
            rules[f"selection.{name}.top_k"] = int_at_least(0)
        for field, rule in _method_param_rules().items():
            if field in config.selection[name]:
                rules[f"selection.{name}.{field}"] = rule
    _check(config, rules)
    if config.selection.writer == "beam":
        _check_beam(config, "selection.beam")
    for name in methods:
        if "helper" in config.selection[name]:  # a helper network's trainer config (selection.example_level)
            _check_trainer(config, f"selection.{name}.helper.train", 1)
    if "hierarchy" in methods:
        ancestors = config.selection.hierarchy.ancestors
        if not isinstance(ancestors, (tuple, list)) or not ancestors or not all(isinstance(a, str) for a in ancestors):
            raise _fail("selection.hierarchy.ancestors", ancestors, "a non-empty tuple of label or group names")
    for section in TRAINER_SECTIONS:
        if _get(config, f"{section}.use_example_weights") is True:
            raise _fail(
                f"{section}.use_example_weights",
                True,
                "False: the selection method decides the loss (resampled shards train unweighted; "
                "the 'weighted_loss' method weights it by w)",
            )


def _check_finetune_sweep(config: ml_collections.ConfigDict) -> None:
    """The optional fine-tuning grid (`finetune_sweep`): rates > 0, decays >= 0, a validation fraction."""
    if _get(config, "finetune_sweep") is _MISSING:
        return

    def numbers(low: float, strict: bool) -> Rule:
        ok = (lambda v: v > low) if strict else (lambda v: v >= low)
        return (
            lambda v: isinstance(v, (tuple, list)) and all(_is_number(x) and ok(x) for x in v),
            f"a tuple of numbers {'>' if strict else '>='} {low:g} (empty: no grid)",
        )

    _check(
        config,
        {
            "finetune_sweep.learning_rates": numbers(0, True),
            "finetune_sweep.weight_decays": numbers(0, False),
            "finetune_sweep.random_init_learning_rates": numbers(0, True),
            "finetune_sweep.random_init_weight_decays": numbers(0, False),
            "finetune_sweep.validation_fraction": fraction(open_low=True),
            "finetune_sweep.validation_seed": int_at_least(0),
        },
    )
    sweep = config.finetune_sweep
    for prefix in ("", "random_init_"):
        if bool(sweep[prefix + "learning_rates"]) != bool(sweep[prefix + "weight_decays"]):
            raise _fail(
                f"finetune_sweep.{prefix}weight_decays",
                sweep[prefix + "weight_decays"],
                f"non-empty when finetune_sweep.{prefix}learning_rates is (the grid is their product)",
            )


def _check_dedup(config: ml_collections.ConfigDict) -> None:
    from data import dedup

    _check(
        config,
        {
            "dedup.enabled": is_bool(),
            "dedup.features": one_of(tuple(dedup.FEATURES)),
            "dedup.verify": is_bool(),
            "dedup.candidates": int_at_least(1),
            "dedup.threshold": (lambda v: _is_number(v) and -1 <= v <= 1, "a number in [-1, 1] (a similarity)"),
            "dedup.chroma_threshold": (lambda v: _is_number(v) and -1 <= v <= 1, "a number in [-1, 1] (a correlation)"),
            "dedup.image_size": int_at_least(8),
            "dedup.batch_size": int_at_least(1),
        },
    )


def check_config(config: ml_collections.ConfigDict, check_paths: bool = True) -> None:
    """Every semantic check that needs neither JAX devices nor the work dir; raises ConfigError.

    `check_paths=False` (a dry run planning for another machine) leaves out the data paths' existence."""
    from data import sides
    from models import registry
    from models.layers import DTYPES

    _check(config, {"seed": int_at_least(0), "model.name": one_of(tuple(registry.model_names()))})
    min_size = registry.min_image_size(config.model.name)
    name = config.model.name
    _check(
        config,
        {
            "model.image_size": (
                (lambda v: _is_int(v) and v >= min_size),
                f"an integer >= {min_size} ({name}'s smallest input)" if min_size > 1 else "an integer > 0",
            ),
            "model.width_multiplier": number_above(0),
            "model.dropout_rate": fraction(),
            "model.dtype": one_of(tuple(DTYPES)),
        },
    )
    for section in TRAINER_SECTIONS:
        _check_trainer(config, section, min_size)
    _check_seeds("finetune.seeds", config.finetune.seeds)
    if tuple(config.pretrain.get("seeds", ())):
        _check_seeds("pretrain.seeds", config.pretrain.seeds)
    _check(config, {"weights.temperature": number_above(0), "weights.batch_size": int_at_least(1)})
    _check_pt_model(config)
    _check_selection(config)
    _check(
        config,
        {
            "pretrain_selected.init": one_of(("scratch", "entire_source")),
            "pretrain_selected.steps": int_at_least(0),
            "pretrain_selected.objective": one_of(("supervised", "contrastive")),
            "finetune_balanced.steps": int_at_least(0),
            "finetune_balanced.learning_rate": number_above(0),
            "finetune_balanced.per_class": int_at_least(0),
        },
        required=False,
    )
    _check(config, {"data.preparer": one_of(WRITERS)})
    if _get(config, "data.preparer") == "beam":
        _check_beam(config, "data.beam")
    _check_dedup(config)
    _check_finetune_sweep(config)
    _check(config, {"report.top_labels": int_at_least(1), "report.plot_top_labels": int_at_least(1)}, required=False)
    _check(config, {"concurrent_runs": int_at_least(0)}, required=False)  # launch.concurrent
    try:
        sides.check_data_config(config.data, check_paths)
    except sides.DataConfigError as err:
        raise ConfigError(str(err)) from None


def check_grid(config: ml_collections.ConfigDict, check_paths: bool = True) -> None:
    """`config.grid` (optional): distinct target names, each giving a valid job (launch.grid)."""
    from launch import grid

    if "grid" not in config or not config.grid.targets:
        return
    targets = tuple(config.grid.targets)
    if len(set(targets)) != len(targets) or not all(isinstance(t, str) and t and "/" not in t for t in targets):
        raise _fail("grid.targets", targets, "distinct target names (folder names, no '/')")
    if config.data.kind != "embedded":
        missing = [t for t in targets if t not in config.grid.sides]
        if missing:
            raise _fail("grid.targets", targets, f"names with a side config at grid.sides (missing: {missing})")
    for name in targets:
        try:
            check_config(grid.target_config(config, name), check_paths)
        except ConfigError as err:
            raise ConfigError(f"grid target {name!r}: {err}") from None


def check_hardware(config: ml_collections.ConfigDict) -> None:
    """`config.hardware` (optional): what a dry run plans for; its devices must split every batch."""
    from launch import dryrun

    if "hardware" not in config:
        return
    _check(
        config,
        {
            "hardware.accelerator": one_of(tuple(dryrun.ACCELERATORS)),
            "hardware.devices": int_at_least(1),
            "hardware.utilisation": fraction(open_low=True, closed_high=True),
        },
    )
    check_devices(config, 1, config.hardware.devices)


def check_workdir(workdir: str | None) -> None:
    """The work dir must be a directory this job can create or write; a bucket must exist."""
    if not workdir:
        raise ConfigError("--workdir is required: a local directory or a gs:// path, new or existing")
    from data import paths

    problem = paths.unusable_dir(workdir)
    if problem:
        raise ConfigError(f"--workdir {workdir}: {problem}")


def batch_sizes(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Every global batch size a stage splits over processes and devices."""
    keys = [f"{s}.{k}" for s in TRAINER_SECTIONS for k in ("global_batch_size", "eval_batch_size")]
    return {key: _get(config, key) for key in [*keys, "weights.batch_size"]}


def check_devices(config: ml_collections.ConfigDict, process_count: int, local_device_count: int) -> None:
    """Each batch is split evenly over processes, then over each process's devices."""
    for key, size in batch_sizes(config).items():
        if size % process_count or (size // process_count) % local_device_count:
            unit = process_count * local_device_count
            raise _fail(
                key,
                size,
                f"a multiple of {unit} ({process_count} process(es) x {local_device_count} local device(s))",
            )
