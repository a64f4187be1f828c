"""The pipeline's stages, each a function of (config, work dir) that is skipped once complete.

Work dir layout (every stage writes only under its own folder, and a stage is complete when its
marker `stages/<name>.json` exists, written atomically after all its outputs):

  config.json                       resolved config of the latest launch
  data/source, data/target/{train,test}   shard sets (prepare)
  pretrain/<choice>/                trainer work dirs: entire_source, same, elastic, ... (pretrain_*)
  weights/                          Pt, Ps, w per source label (weights)
  selected/<method>/                weighted TFRecord shards + manifest, plan.csv, stats (select)
  finetune/<choice>/seed_<s>/       fine-tuning runs and their test metrics (finetune)
  report.md, report.csv, *.png      the report (report)
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from data import atomic, manifest
from launch import config_cli

STAGE_NAMES = ("prepare", "pretrain_source", "weights", "select", "pretrain_selected", "finetune", "report")
MATCHERS = ("same", "elastic", "uniform", "reverse", "entire")
RANDOM_INIT = "random_init"
ENTIRE_SOURCE = "entire_source"


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Paths of one job's work dir."""

    root: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def source(self) -> str:
        return self.path("data", "source")

    def target(self, split: str) -> str:
        return self.path("data", "target", split)

    def pretrain(self, choice: str) -> str:
        return self.path("pretrain", choice)

    def selected(self, method: str) -> str:
        return self.path("selected", method)

    def finetune(self, choice: str, seed: int) -> str:
        return self.path("finetune", choice, f"seed_{seed}")

    def marker(self, stage: str) -> str:
        return self.path("stages", f"{stage}.json")


def select_stages(names: Sequence[str]) -> tuple[str, ...]:
    """Validates `--stages`; returns them in pipeline order (all when empty)."""
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise config_cli.ConfigError(f"unknown stage(s) {unknown}; known stages: {list(STAGE_NAMES)}")
    return tuple(n for n in STAGE_NAMES if not names or n in names)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Semantic checks that a type check cannot do; run before any compute."""
    from models import registry

    config_cli.validate(
        config,
        {
            "model.name": tuple(registry.model_names()),
            "pretrain.parallelism": ("pmap", "jit"),
            "finetune.parallelism": ("pmap", "jit"),
            "selection.methods": lambda methods: bool(methods) and all(m in MATCHERS for m in methods),
            "selection.size": lambda size: size > 0,
            "finetune.seeds": lambda seeds: len(seeds) > 0,
            "weights.temperature": lambda t: t > 0,
            "data.kind": ("embedded",),
        },
    )


def pretraining_choices(config: ml_collections.ConfigDict) -> list[str]:
    """Rows of the report: entire source, each selection method, and random initialisation."""
    return [ENTIRE_SOURCE, *config.selection.methods, RANDOM_INIT]


def _model_config(config: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    model_config.num_classes = num_classes
    return model_config


# ----------------------------------------------------------------------------------------------
# Stages


def stage_prepare(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    from data import embedded

    if not os.path.exists(os.path.join(ws.source, manifest.MANIFEST_NAME)):
        embedded.build_source(ws.source, config.data.embedded)
    if not all(os.path.exists(os.path.join(ws.target(s), manifest.MANIFEST_NAME)) for s in ("train", "test")):
        embedded.build_target(ws.path("data", "target"), config.data.embedded)
    source = manifest.load_manifest(ws.source)
    train, test = (manifest.load_manifest(ws.target(s)) for s in ("train", "test"))
    return {
        "source_examples": source.num_records,
        "source_labels": source.num_labels,
        "target_classes": train.num_labels,
        "target_train": train.num_records,
        "target_test": test.num_records,
    }


def _pretrain(config: ml_collections.ConfigDict, ws: Workspace, choice: str, train_dir: str) -> dict:
    from trainer import train

    source = manifest.load_manifest(ws.source, verify=False)
    return train.train(
        config.pretrain,
        model_config=_model_config(config, source.num_labels),
        train_dir=train_dir,
        workdir=ws.pretrain(choice),
        stage_name=f"pretrain/{choice}",
    )


def stage_pretrain_source(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    return _pretrain(config, ws, ENTIRE_SOURCE, ws.source)


def stage_weights(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """Pt from the entire-source model's predictions on target TRAIN images (labels unused)."""
    from data import pipeline
    from models import registry
    from selection import weights
    from trainer import checkpoint

    source = manifest.load_manifest(ws.source, verify=False)  # label names/counts only
    model = registry.build_model(_model_config(config, source.num_labels))
    variables = checkpoint.load_variables(ws.pretrain(ENTIRE_SOURCE), use_ema=config.pretrain.eval_with_ema)

    def apply_fn(variables, images):
        return model.apply(variables, images, train=False)["logits"]

    target = manifest.load_manifest(ws.target("train"), verify=False)  # eval_batches verifies it
    batches = pipeline.eval_batches(  # the batches carry target labels; Pt never reads them
        ws.target("train"),
        global_batch_size=config.weights.batch_size,
        image_size=config.model.image_size,
        num_classes=target.num_labels,
    )
    pt = weights.target_label_distribution(
        apply_fn, variables, batches, num_labels=source.num_labels, temperature=config.weights.temperature
    )
    ps, w, excluded = weights.importance_weights(pt, np.asarray(source.label_counts), source.num_records)
    label_stats = {
        name: {"count": int(c), "pt": float(p)} for name, c, p in zip(source.label_names, source.label_counts, pt)
    }
    atomic.write_json(ws.path("weights", "label_stats.json"), label_stats)
    atomic.write_json(
        ws.path("weights", "weights.json"),
        {
            "label_names": source.label_names,
            "pt": pt.tolist(),
            "ps": ps.tolist(),
            "w": w.tolist(),
            "excluded": [source.label_names[i] for i in np.flatnonzero(excluded)],
        },
    )
    order = np.argsort(-w)[:5]
    return {
        "top_labels": [[source.label_names[i], float(w[i])] for i in order],
        "excluded_labels": int(np.sum(excluded)),
    }


def _load_weights(ws: Workspace) -> dict:
    raw = atomic.read_json(ws.path("weights", "weights.json"))
    return {k: np.asarray(v) if k in ("pt", "ps", "w") else v for k, v in raw.items()}


def stage_select(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    from selection import plan as plan_lib
    from selection import stats, write

    source = manifest.load_manifest(ws.source)
    weights_info = _load_weights(ws)
    counts = np.asarray(source.label_counts)
    summary = {}
    for method in config.selection.methods:
        out_dir = ws.selected(method)
        label_plan = plan_lib.make_plan(
            method,
            label_names=source.label_names,
            counts=counts,
            pt=weights_info["pt"],
            size=config.selection.size,
            top_k=config.selection.top_k,
        )
        label_plan.to_csv(os.path.join(out_dir + ".plan.csv"))
        shard_set = write.write_selected(
            ws.source,
            label_plan,
            out_dir,
            records_per_shard=config.selection.records_per_shard,
            seed=config.seed,
            example_weight_rule=config.selection.example_weight_rule,
            label_index_dir=ws.path("selected", "source_label_index"),  # shared by all methods
        )
        table = stats.label_table(label_plan, shard_set)
        stats.write_tables(table, ws.path("selected", f"{method}.stats"))
        summary[method] = {"records": shard_set.num_records, **stats.totals(table)}
    stats.plot_weights(
        weights_info["w"],
        weights_info["label_names"],
        ws.path("importance_weights.png"),
        top=config.report.plot_top_labels,
    )
    return summary


def stage_pretrain_selected(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    return {m: _pretrain(config, ws, m, ws.selected(m)) for m in config.selection.methods}


def stage_finetune(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """Fresh head on the target for every pre-training choice and seed; test metrics per run."""
    from trainer import evaluate, train

    target = manifest.load_manifest(ws.target("train"), verify=False)
    model_config = _model_config(config, target.num_labels)
    results = {}
    for choice in pretraining_choices(config):
        runs = []
        for seed in config.finetune.seeds:
            finetune_config = ml_collections.ConfigDict(config.finetune.to_dict())
            finetune_config.seed = int(seed)
            run_dir = ws.finetune(choice, seed)
            train.train(
                finetune_config,
                model_config=model_config,
                train_dir=ws.target("train"),
                workdir=run_dir,
                init_from=None if choice == RANDOM_INIT else ws.pretrain(choice),
                stage_name=f"finetune/{choice}/seed{seed}",
            )
            metrics_path = os.path.join(run_dir, "test_metrics.json")
            if not os.path.exists(metrics_path):
                metrics = evaluate.evaluate(
                    finetune_config, model_config=model_config, workdir=run_dir, data_dir=ws.target("test")
                )
                atomic.write_json(metrics_path, {**metrics, "seed": int(seed), "choice": choice})
            runs.append(atomic.read_json(metrics_path))
        results[choice] = runs
    atomic.write_json(ws.path("finetune", "results.json"), results)
    return {c: float(np.mean([r["top1"] for r in runs])) for c, runs in results.items()}


def stage_report(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    from launch import report

    return report.write_report(config, ws)


STAGES: dict[str, Callable[[ml_collections.ConfigDict, Workspace], dict]] = {
    "prepare": stage_prepare,
    "pretrain_source": stage_pretrain_source,
    "weights": stage_weights,
    "select": stage_select,
    "pretrain_selected": stage_pretrain_selected,
    "finetune": stage_finetune,
    "report": stage_report,
}


def _barrier(name: str) -> None:
    """Multi-host jobs: no process marks a stage complete before every process has finished it."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_pipeline(config: ml_collections.ConfigDict, workdir: str, names: Sequence[str] = STAGE_NAMES) -> dict:
    """Runs the named stages in order, skipping complete ones; returns each stage's summary.

    Every process of a multi-host job runs every stage (each does its share); process 0 writes the
    marker once all have finished, so a job killed mid-stage reruns that stage on every process.
    """
    import jax

    ws = Workspace(os.path.abspath(workdir))
    os.makedirs(ws.root, exist_ok=True)
    config_cli.save_resolved(config, ws.root)
    summaries = {}
    for number, name in enumerate(names, start=1):
        marker = ws.marker(name)
        if os.path.exists(marker):
            print(f"== stage {number}/{len(names)} {name}: complete, skipped", flush=True)
            summaries[name] = atomic.read_json(marker)["summary"]
            continue
        print(f"== stage {number}/{len(names)} {name}: running", flush=True)
        start = time.time()
        summary = STAGES[name](config, ws)
        elapsed = time.time() - start
        _barrier(f"stage {name} done")
        if jax.process_index() == 0:
            atomic.write_json(marker, {"stage": name, "seconds": round(elapsed, 1), "summary": summary})
        print(f"== stage {number}/{len(names)} {name}: done in {elapsed:.0f}s  {summary}", flush=True)
        summaries[name] = summary
    return summaries
