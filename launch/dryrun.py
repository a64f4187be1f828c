"""`launch.main --dry_run`: what a job would run and what it costs, computed without running it.

For each stage: whether it would run or is complete in the work dir; for each training run: steps,
global batch, images seen, training FLOPs (3 x the forward FLOPs of `models.card`, at the run's
resolution) and the estimated time on the configured hardware; for FSDP runs, the per-device memory
of the sharded train state (parameters, optimizer state, EMA) on the configured mesh.

Time estimates: training FLOPs / (devices x peak bf16 FLOP/s x utilisation). The default utilisation
0.35 is what the measured reference points give (shared/FACTS.md): ResNet-50 trains at about 2,000
img/s per TPU v3 chip, two devices of 61.5 TFLOP/s (3 x 8.2 GFLOP x 2,000 / 123 TFLOP/s = 40%), and
Inception-v3 at 0.65x ResNet-50's images/s, about 1,300 img/s per chip = 35% of peak at 3 x 11.0
GFLOP per image. Nothing here was measured on a TPU: treat the times as +-2x.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import ml_collections
from etils import epath

from launch import pt_model
from launch.workdir import (
    ENTIRE_SOURCE,
    RANDOM_INIT,
    Workspace,
    pretrain_seeds,
    pretraining_choices,
    selection_choices,
)

GIB = 2**30
# Peak dense bf16 FLOP/s and memory per JAX device (vendor figures; a TPU v3 chip is two devices).
ACCELERATORS: dict[str, tuple[float, float]] = {
    "tpu_v3": (61.5e12, 16 * GIB),
    "tpu_v4": (275e12, 32 * GIB),
    "tpu_v5e": (197e12, 16 * GIB),
    "tpu_v5p": (459e12, 95 * GIB),
    "a100": (312e12, 80 * GIB),
    "h100": (989e12, 80 * GIB),
    "h200": (989e12, 141 * GIB),
}
DEFAULT_UTILISATION = 0.35


def hardware_config(accelerator: str = "tpu_v3", devices: int = 8, utilisation: float = DEFAULT_UTILISATION):
    """`config.hardware`: what the job is planned for (the dry run's estimates; nothing else reads it)."""
    return ml_collections.ConfigDict(dict(accelerator=accelerator, devices=devices, utilisation=utilisation))


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    steps: int | None  # None: set in epochs, known once the data is prepared
    batch: int
    flops_per_image: float  # forward

    @property
    def images(self) -> int | None:
        return None if self.steps is None else self.steps * self.batch

    @property
    def train_flops(self) -> float | None:
        return None if self.images is None else 3.0 * self.flops_per_image * self.images


@functools.lru_cache(maxsize=16)
def _forward_flops(model_json: str) -> float:
    from models import card

    return float(card.model_card(ml_collections.ConfigDict(json.loads(model_json)))["flops"])


def _model_at(
    config: ml_collections.ConfigDict,
    section: ml_collections.ConfigDict,
    model_config: ml_collections.ConfigDict | None = None,
) -> str:
    """The model config at the run's resolution, as a hashable string (FLOPs are cached per model)."""
    model = (model_config or config.model).to_dict()
    model["image_size"] = int(section.image_size)
    model["dtype"] = "float32"  # FLOPs do not depend on it; float32 traces everywhere
    return json.dumps(model, sort_keys=True, default=list)


def _runs(config: ml_collections.ConfigDict) -> dict[str, list[Run]]:
    from launch import stages

    def run(name: str, section: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None = None) -> Run:
        steps = int(section.steps) or None
        flops = _forward_flops(_model_at(config, section, model))
        return Run(name, steps, int(section.global_batch_size), flops)

    choices = pretraining_choices(config)
    seeds = pretrain_seeds(config)
    views = [f"pretrain_seed_{p}/" for p in seeds] or [""]  # pretrain.seeds: every pre-trained row per seed

    def finetune_runs(prefix: str, section: ml_collections.ConfigDict) -> list[Run]:
        """Every (view, choice, seed) run; random initialisation once (it has no pre-training seed)."""
        return [
            run(f"{v if c != RANDOM_INIT else ''}{prefix}/{c}/seed_{s}", section)
            for v in views
            for c in choices
            for s in config.finetune.seeds
            if c != RANDOM_INIT or v == views[0]
        ]

    finetunes = [
        run(f"{v if c != RANDOM_INIT else ''}finetune/{c}/grid/lr{lr:g}_wd{wd:g}", config.finetune)  # finetune_sweep
        for v in views
        for c in choices
        for lr, wd in stages.finetune_grid(config, c)
        if c != RANDOM_INIT or v == views[0]
    ]
    finetunes += finetune_runs("finetune", config.finetune)
    if stages.balanced_steps(config):  # long-tail fine-tuning's second stage (finetune_balanced)
        balanced = ml_collections.ConfigDict(config.finetune.to_dict())
        balanced.steps = stages.balanced_steps(config)
        finetunes += finetune_runs("finetune_balanced", balanced)
    helpers = [  # the example-level methods' own networks (selection.example_level)
        run(f"{v}select/{name}", config.selection[name].helper.train, config.selection[name].helper.model)
        for v in views
        for name in dict.fromkeys(c.method for c in selection_choices(config))
        if "helper" in config.selection[name]
        and (name != "domain_classifier" or config.selection[name].classifier == "cnn")
    ]
    runs = {
        "pretrain_source": [run(f"{v}pretrain/{ENTIRE_SOURCE}", config.pretrain) for v in views],
        "select": helpers,
        "pretrain_selected": [
            run(f"{v}pretrain/{c.name}", stages.pretrain_run_config(config, c.method))
            for v in views
            for c in selection_choices(config)
        ],
        "finetune": finetunes,
    }
    if pt_model.own_model(config):  # Pt's own source model, trained once in the weights stage
        pt_run = pt_model.run_config(config)
        flops = _forward_flops(_model_at(config, pt_run, pt_model.model_config(config, config.model.num_classes)))
        runs["weights"] = [Run("weights/model", int(pt_run.steps) or None, int(pt_run.global_batch_size), flops)]
    targets = tuple(config.grid.targets) if config.get("grid") else ()
    if targets:  # a grid (launch.grid): the entire-source model once (without dedup), the rest per target
        per_target = [s for s in runs if s != "pretrain_source" or config.dedup.enabled]
        for stage in per_target:
            runs[stage] = [dataclasses.replace(r, name=f"targets/{t}/{r.name}") for t in targets for r in runs[stage]]
    return runs


def train_state_bytes_per_device(config: ml_collections.ConfigDict, section: str, devices: int) -> tuple[int, int]:
    """(total bytes of the train state, bytes on one device) with the section's FSDP sharding over
    `devices` (replicated without fsdp). Abstract: no weights are allocated."""
    import jax
    import jax.numpy as jnp

    from models import registry, sharding
    from trainer import optim, schedules
    from trainer.state import create_state

    c = config[section]
    model_config = ml_collections.ConfigDict(json.loads(_model_at(config, c, None)))
    model = registry.build_model(model_config)
    tx = optim.build_optimizer(c, schedules.warmup_cosine(float(c.learning_rate), 1, 2))
    images = jax.ShapeDtypeStruct((1, c.image_size, c.image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    state = jax.eval_shape(lambda v: create_state(v, tx, jax.random.key(0), float(c.ema_decay) > 0), variables)
    total = per_device = 0
    for leaf in jax.tree.leaves(state):
        nbytes = int(leaf.size) * leaf.dtype.itemsize
        spec = sharding.partition_spec(tuple(leaf.shape), "fsdp", devices if c.fsdp else 1, int(c.fsdp_min_size))
        total += nbytes
        per_device += nbytes // devices if any(axis is not None for axis in spec) else nbytes
    return total, per_device


def _fmt_count(value: float | None) -> str:
    if value is None:
        return "(epochs: known after prepare)"
    return f"{value:.2e}" if value >= 1e6 else f"{value:,.0f}"


def _fmt_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"


def plan(config: ml_collections.ConfigDict, workdir: str, stages: tuple[str, ...]) -> dict[str, Any]:
    """Everything the dry run prints, as data (tests read it)."""
    hardware = config.get("hardware") or hardware_config()
    peak, memory = ACCELERATORS[hardware.accelerator]
    rate = hardware.devices * peak * hardware.utilisation
    ws = Workspace(workdir)
    runs = _runs(config)
    out: dict[str, Any] = {
        "hardware": dict(hardware),
        "stages": [],
        "runs": [],
        "total_images": 0,
        "total_train_flops": 0.0,
        "estimated_seconds": 0.0,
    }
    for name in stages:
        done = epath.Path(ws.marker(name)).exists() if "://" not in workdir else False
        out["stages"].append({"stage": name, "status": "complete (skipped)" if done else "to run"})
        for r in runs.get(name, []) if not done else []:
            seconds = None if r.train_flops is None else r.train_flops / rate
            out["runs"].append(
                {
                    "run": r.name,
                    "steps": r.steps,
                    "batch": r.batch,
                    "images": r.images,
                    "train_flops": r.train_flops,
                    "seconds": seconds,
                }
            )
            out["total_images"] += r.images or 0
            out["total_train_flops"] += r.train_flops or 0.0
            out["estimated_seconds"] += seconds or 0.0
    out["memory"] = {}
    for section in ("pretrain", "finetune"):
        if config[section].fsdp:
            total, per_device = train_state_bytes_per_device(config, section, hardware.devices)
            out["memory"][section] = {"state_bytes": total, "per_device_bytes": per_device, "device_bytes": memory}
    return out


def format_plan(p: dict[str, Any], config: ml_collections.ConfigDict, workdir: str) -> str:
    hw = p["hardware"]
    lines = [
        f"dry run: nothing computed or written. work dir {workdir}",
        f"model {config.model.name} @ pretrain {config.pretrain.image_size} px / finetune "
        f"{config.finetune.image_size} px; hardware {hw['devices']} x {hw['accelerator']} "
        f"at {hw['utilisation']:.0%} of peak bf16 FLOP/s",
        "stages: " + ", ".join(f"{s['stage']} [{s['status']}]" for s in p["stages"]),
        f"{'run':<44} {'steps':>10} {'batch':>6} {'images':>10} {'train FLOPs':>12} {'est. time':>10}",
    ]
    for r in p["runs"]:
        lines.append(
            f"{r['run']:<44} {r['steps'] or '?':>10} {r['batch']:>6} {_fmt_count(r['images']):>10} "
            f"{_fmt_count(r['train_flops']):>12} {_fmt_time(r['seconds']):>10}"
        )
    lines.append(
        f"total: {len(p['runs'])} training runs, {_fmt_count(p['total_images'])} images seen, "
        f"{_fmt_count(p['total_train_flops'])} training FLOPs, estimated {_fmt_time(p['estimated_seconds'])} "
        "(training steps only; prepare, weights, select and evaluation come on top)"
    )
    for section, m in p["memory"].items():
        lines.append(
            f"{section}: sharded train state {_fmt_bytes(m['state_bytes'])} in all, "
            f"{_fmt_bytes(m['per_device_bytes'])} per device over {hw['devices']} devices "
            f"(of {m['device_bytes'] / GIB:.0f} GiB; activations come on top)"
        )
    return "\n".join(lines)
