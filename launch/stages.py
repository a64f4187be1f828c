"""The pipeline's stages, each a function of (config, work dir) that is skipped once complete.

Where each stage writes is `launch.workdir`; a stage is complete once its marker exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from etils import epath

from data import atomic, manifest, paths
from launch import config_cli, pt_model, report
from launch.workdir import (
    ENTIRE_SOURCE,
    RANDOM_INIT,
    SEEDED_STAGES,
    STAGE_NAMES,
    Workspace,
    pretrain_seeds,
    pretraining_choices,
    selection_choices,
)
from selection import methods as methods_lib
from selection import plan as plan_lib
from trainer import config as trainer_config


def select_stages(names: Sequence[str]) -> tuple[str, ...]:
    """Validates `--stages`; returns them in pipeline order (all when empty)."""
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise config_cli.ConfigError(f"unknown stage(s) {unknown}; known stages: {list(STAGE_NAMES)}")
    return tuple(n for n in STAGE_NAMES if not names or n in names)


def check_prerequisites(workdir: str, names: Sequence[str]) -> None:
    """Refuses a `--stages` subset that would read outputs no stage has written, before any compute.

    Every stage reads the outputs of the stages before it (the dedup stage decides which source all
    later stages read), so each earlier stage must be complete in the work dir or run in this launch.
    """
    ws = Workspace(paths.resolve(workdir))
    last = max((STAGE_NAMES.index(n) for n in names), default=-1)
    missing = [n for n in STAGE_NAMES[:last] if n not in names and not epath.Path(ws.marker(n)).exists()]
    if missing:
        raise config_cli.ConfigError(
            f"--stages={','.join(names)} needs stage(s) {','.join(missing)} first (not complete in {workdir}); "
            "add them to --stages"
        )


def _model_config(config: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    model_config.num_classes = num_classes
    return model_config


# ----------------------------------------------------------------------------------------------
# Stages


def stage_prepare(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """Both sides converted (or rendered) once into the record format; each process writes its part."""
    import jax

    from data import beam_prepare, prepare, sides

    sides.prepare_data(
        config.data,
        source_dir=ws.prepared_source,
        target_root=ws.target_root,
        target_dir=ws.target,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        barrier=_barrier,
        convert=beam_prepare.converter(config.data.beam) if config.data.preparer == "beam" else prepare.convert,
    )
    source = manifest.load_manifest(ws.prepared_source)
    train, test = (manifest.load_manifest(ws.target(s)) for s in ("train", "test"))
    summary = {
        "source_examples": source.num_records,
        "source_labels": source.num_labels,
        "target_classes": train.num_labels,
        "target_train": train.num_records,
        "target_test": test.num_records,
    }
    if epath.Path(os.path.join(ws.target("validation"), manifest.MANIFEST_NAME)).exists():
        summary["target_validation"] = manifest.load_manifest(ws.target("validation"), verify=False).num_records
    return summary


def stage_dedup(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """Removes source images that are near-duplicates of any target train/test image (Ngiam et al. 4.1).

    One streaming pass over the prepared source (target features in memory); process 0 writes the
    kept records and the pairs picture, the others wait. Disabled: later stages read the prepared source.
    """
    import jax

    from data import dedup

    if not config.dedup.enabled:
        return {"enabled": False}
    targets = [ws.target(s) for s in ("train", "validation", "test")]
    targets = [t for t in targets if epath.Path(t, manifest.MANIFEST_NAME).exists()]
    if jax.process_index() == 0:
        try:
            report = dedup.remove_near_duplicates(
                ws.prepared_source,
                targets,
                ws.source,
                features_fn=dedup.FEATURES[config.dedup.features],
                image_size=config.dedup.image_size,
                threshold=config.dedup.threshold,
                batch_size=config.dedup.batch_size,
                verify=config.dedup.verify,
                candidates=config.dedup.candidates,
                chroma_threshold=config.dedup.chroma_threshold,
            )
        except dedup.RemovesEverything as err:
            keys = f"'dedup.threshold' = {config.dedup.threshold}"
            if config.dedup.verify:
                keys += f" and 'dedup.chroma_threshold' = {config.dedup.chroma_threshold}"
            raise config_cli.ConfigError(
                f"config key(s) {keys}: {err}; raise them, or keep the source as prepared with dedup.enabled=False"
            ) from None
        dedup.plot_pairs(report, ws.prepared_source, ws.dedup_pairs_png)
    _barrier("dedup written")
    report = manifest.load_manifest(ws.source, verify=False).extra["dedup"]
    return {
        "source_records": report["source_records"],
        "removed": report["removed"],
        "kept": report["kept"],
        "threshold": report["threshold"],
        "chroma_threshold": report.get("chroma_threshold"),
        "features": config.dedup.features,
        "verify": bool(config.dedup.verify),
    }


def pretrain_run_config(config: ml_collections.ConfigDict, method: str | None) -> ml_collections.ConfigDict:
    """The trainer config of one pre-training run (`method` None: the entire source).

    Resampled (or subset) shards already follow the selection; weighting their loss too would apply
    w twice. Only a method whose shards are the source with weights (`weighted_loss`) weights it.
    """
    run_config = trainer_config.run_section(config.pretrain)
    run_config.use_example_weights = method is not None and methods_lib.get(method).weighted_loss
    section = config.get("pretrain_selected")
    if method is not None and section is not None and section.get("objective", "supervised") == "contrastive":
        # Chakraborty et al. pre-train the filtered subset with MoCo-v2: two augmented views, a
        # momentum key encoder (the weight EMA), the labels unused
        run_config.objective = "contrastive"
        run_config.augment = True
        run_config.ema_decay = float(run_config.ema_decay) or 0.99
    if method is not None and _continues_source(config) and config.pretrain_selected.steps:
        run_config.steps = int(config.pretrain_selected.steps)
        run_config.warmup_steps = min(int(run_config.warmup_steps), run_config.steps // 10)
    return run_config


def _continues_source(config: ml_collections.ConfigDict) -> bool:
    """`pretrain_selected.init` = 'entire_source': a selected set's pre-training continues the
    entire-source model (Chakraborty et al.'s sequential pre-training, 4.3, and their "ImageNet+":
    a pre-trained model tuned on the filtered subset for `pretrain_selected.steps` more steps)."""
    section = config.get("pretrain_selected")
    return section is not None and section.init == "entire_source"


def _pretrain(
    config: ml_collections.ConfigDict, ws: Workspace, choice: str, train_dir: str, method: str | None
) -> dict:
    from trainer import train

    source = manifest.load_manifest(ws.source, verify=False)
    run_config = pretrain_run_config(config, method)
    if ws.pretrain_seed is not None:  # pretrain.seeds: this view's seed
        run_config.seed = ws.pretrain_seed
    return train.train(
        run_config,
        model_config=_model_config(config, source.num_labels),
        train_dir=train_dir,
        workdir=ws.pretrain(choice),
        init_from=ws.pretrain(ENTIRE_SOURCE) if method is not None and _continues_source(config) else None,
        stage_name=f"pretrain/{choice}",
    )


def _train_pt_model(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """Pt's own source model (`launch.pt_model`) on the entire source, once per job: resumable, and a
    finished run returns at once (every pre-training seed reads it)."""
    from trainer import train

    source = manifest.load_manifest(ws.source, verify=False)
    return train.train(
        pt_model.run_config(config),
        model_config=pt_model.model_config(config, source.num_labels),
        train_dir=ws.source,
        workdir=ws.weights_model,
        stage_name="weights/model",
    )


def _source_run(config: ml_collections.ConfigDict, ws: Workspace, run: str) -> dict:
    """One of the runs on the entire source: the entire-source row, or Pt's own model ("weights/model")."""
    return (
        _pretrain(config, ws, ENTIRE_SOURCE, ws.source, None) if run == ENTIRE_SOURCE else _train_pt_model(config, ws)
    )


def stage_pretrain_source(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """The entire-source row. With Pt's own source model, that model trains side by side with it where
    cores allow (`concurrent_runs`): both read only the source, and the weights stage then finds it done."""
    from trainer import train

    pt_done = epath.Path(ws.weights_model, train.FINAL_NAME).exists()
    if not pt_model.own_model(config) or pt_done:
        return _pretrain(config, ws, ENTIRE_SOURCE, ws.source, None)
    entire, _ = _concurrently(config, _source_run, [(config, ws, ENTIRE_SOURCE), (config, ws, "weights/model")])
    return entire


def _entire_source_model(config: ml_collections.ConfigDict, ws: Workspace) -> tuple:
    """(model, variables) of the entire-source pre-training, for inference."""
    from models import registry
    from trainer import checkpoint

    source = manifest.load_manifest(ws.source, verify=False)  # label names/counts only
    model = registry.build_model(_model_config(config, source.num_labels))
    return model, checkpoint.load_variables(ws.pretrain(ENTIRE_SOURCE), use_ema=config.pretrain.eval_with_ema)


def _pt_source_model(config: ml_collections.ConfigDict, ws: Workspace) -> tuple:
    """(model, variables) of the source model that computes Pt: the entire-source row's (Ngiam et al.),
    or Pt's own source model (`launch.pt_model`: weights.model / weights.pretrain), trained here once
    per job on the entire source (resumable; a finished run is reused by every pre-training seed)."""
    from models import registry
    from trainer import checkpoint

    if not pt_model.own_model(config):
        return _entire_source_model(config, ws)
    _train_pt_model(config, ws)  # done already where it trained beside the entire-source row
    source = manifest.load_manifest(ws.source, verify=False)
    model = registry.build_model(pt_model.model_config(config, source.num_labels))
    return model, checkpoint.load_variables(ws.weights_model, use_ema=pt_model.run_config(config).eval_with_ema)


def stage_weights(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """Pt from a source model's predictions on target TRAIN images (labels unused): the entire-source
    model's, or Pt's own source model's (`launch.pt_model`)."""
    from data import pipeline
    from selection import weights

    source = manifest.load_manifest(ws.source, verify=False)  # label names/counts only
    model, variables = _pt_source_model(config, ws)

    def apply_fn(variables, images):
        return model.apply(variables, images, train=False)["logits"]

    target = manifest.load_manifest(ws.target("train"), verify=False)  # eval_batches verifies it
    batches = pipeline.eval_batches(  # the batches carry target labels; Pt never reads them
        ws.target("train"),
        global_batch_size=config.weights.batch_size,
        image_size=pt_model.image_size(config),  # the source model's resolution (may be below fine-tuning's)
        num_classes=target.num_labels,
    )
    pt = weights.target_label_distribution(
        apply_fn, variables, batches, num_labels=source.num_labels, temperature=config.weights.temperature
    )
    # w is computed here ONCE (Ps = count / number of examples); every later stage reads weights.json.
    iw = weights.ImportanceWeights.compute(source.label_names, pt, np.asarray(source.label_counts), source.num_records)
    label_stats = {
        "num_examples": source.num_records,  # the preview CLI (selection.plan) then computes the same w
        **{
            name: {"count": int(c), "pt": float(p)}
            for name, c, p in zip(source.label_names, source.label_counts, pt, strict=True)
        },
    }
    atomic.write_json(ws.label_stats_json, label_stats)
    iw.write(ws.weights_json)
    order = np.argsort(-iw.w)[:5]
    pt_sorted = np.sort(pt)[::-1]
    return {
        "pt_model": "own" if pt_model.own_model(config) else ENTIRE_SOURCE,
        "top_labels": [[source.label_names[i], float(iw.w[i])] for i in order],
        "excluded_labels": len(iw.excluded),
        # how peaked Pt is: its largest value, the mass of its top 10% of labels, its perplexity
        "pt_max": float(pt_sorted[0]),
        "pt_top10pct_mass": float(pt_sorted[: max(1, len(pt) // 10)].sum()),
        "pt_perplexity": float(np.exp(-np.sum(pt * np.log(np.maximum(pt, 1e-12))))),
    }


def _write_selected(config: ml_collections.ConfigDict, ws: Workspace, selection, out_dir: str) -> manifest.ShardSet:
    """One method's shard set, by `selection.writer`: every process's share of the in-process writer
    (on `selection.write_processes` worker processes per host), or one Beam job on `selection.beam`'s
    runner launched by process 0 (the same bytes either way)."""
    import jax

    from selection import beam_write, write

    kwargs = {
        "records_per_shard": config.selection.records_per_shard,
        "seed": config.seed,
        "example_weight_rule": config.selection.example_weight_rule,
        "label_weights": selection.label_weights,
        "label_index_dir": ws.source_label_index,  # shared by all methods
        "label_remap": selection.label_remap,
    }
    if config.selection.writer == "inprocess":
        records = manifest.load_manifest(ws.source, verify=False).num_records
        local = write.local_processes(int(config.selection.write_processes), records, jax.process_count())
        return write.write_selected(ws.source, selection.plan, out_dir, local_processes=local, **kwargs)
    if jax.process_index() == 0:
        beam_write.write_selected(ws.source, selection.plan, out_dir, beam_config=config.selection.beam, **kwargs)
    _barrier(f"select {out_dir}")
    return manifest.load_manifest(out_dir, verify=False)


def stage_select(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """Plans and writes every configured method's shard set from the weights stage's w."""
    from selection import stats
    from selection import weights as weights_lib

    source = manifest.load_manifest(ws.source)
    iw = weights_lib.ImportanceWeights.read(ws.weights_json) if epath.Path(ws.weights_json).exists() else None
    summary = {}
    for choice in selection_choices(config):
        name = choice.name
        method = methods_lib.get(choice.method)
        context = methods_lib.PlanContext(
            label_names=source.label_names,
            counts=np.asarray(source.label_counts),
            num_examples=source.num_records,
            hierarchy=source.hierarchy,
            weights=iw,
            size=choice.size,
            params=config.selection[choice.method],
            source_dir=ws.source,
            scratch_dir=ws.selection_scratch(choice.method),  # scores and helper networks serve every size
            target_dir=ws.target("train"),
            seed=config.seed,
            source_model=lambda: (*_entire_source_model(config, ws), int(config.pretrain.image_size)),
        )
        start = time.time()
        selection = method.plan(context)
        label_plan = selection.plan if isinstance(selection.plan, plan_lib.LabelPlan) else None
        if label_plan is not None:
            label_plan.to_csv(ws.plan_csv(name))
        shard_set = _write_selected(config, ws, selection, ws.selected(name))
        if label_plan is not None:
            table = stats.label_table(label_plan, shard_set)
            stats.write_tables(table, ws.selection_stats(name))
            summary[name] = {"records": shard_set.num_records, **stats.totals(table)}
        else:
            summary[name] = {"records": shard_set.num_records, "unique": shard_set.extra["unique_examples"]}
        # what the report's comparison shows: scoring cost (images forwarded), held-out accuracy, ...
        summary[name].update(selection.info, wall_s=round(time.time() - start, 1))
    if iw is not None:
        stats.plot_weights(iw.w, iw.label_names, ws.importance_weights_png, top=config.report.plot_top_labels)
    return summary


def _concurrently(config: ml_collections.ConfigDict, fn: Callable, calls: list[tuple]) -> list:
    """fn(*args) for each of a stage's independent runs, side by side where cores allow (launch.concurrent)."""
    from launch import concurrent

    workers = concurrent.resolve_workers(int(config.get("concurrent_runs", 1)), len(calls))
    return concurrent.run_all(fn, calls, workers, preload=("trainer.train", "trainer.evaluate", "data.pipeline"))


def stage_pretrain_selected(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """Pre-trains on every selection choice (each method, and each at the other `selection.sizes`)."""
    choices = selection_choices(config)
    calls = [(config, ws, c.name, ws.selected(c.name), c.method) for c in choices]
    return {c.name: result for c, result in zip(choices, _concurrently(config, _pretrain, calls), strict=True)}


def _finetune_run(
    config: ml_collections.ConfigDict,
    ws: Workspace,
    choice: str,
    seed: int,
    model_config: ml_collections.ConfigDict,
    point: dict,
) -> dict:
    """One fine-tuning run at its chosen point and its test metrics (written once; a rerun reads them)."""
    from trainer import evaluate, train

    finetune_config = ml_collections.ConfigDict(config.finetune.to_dict())
    finetune_config.seed = seed
    finetune_config.learning_rate = point["learning_rate"]
    finetune_config.weight_decay = point["weight_decay"]
    run_dir = ws.finetune(choice, seed)
    train.train(
        finetune_config,
        model_config=model_config,
        train_dir=ws.target("train"),
        workdir=run_dir,
        init_from=None if choice == RANDOM_INIT else ws.pretrain(choice),
        stage_name=f"finetune/{choice}/seed{seed}",
    )
    if balanced_steps(config):  # Cui et al.'s second stage on a class-balanced target subset
        finetune_config, run_dir = _finetune_balanced(config, ws, finetune_config, model_config, choice, seed)
    metrics_path = ws.test_metrics(choice, seed)
    if not epath.Path(metrics_path).exists():
        metrics = evaluate.evaluate(
            finetune_config, model_config=model_config, workdir=run_dir, data_dir=ws.target("test")
        )
        atomic.write_json(metrics_path, {**metrics, "seed": seed, "choice": choice, **point})
    return atomic.read_json(metrics_path)


def stage_finetune(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    """Fresh head on the target for every pre-training choice and seed; test metrics per run."""
    target = manifest.load_manifest(ws.target("train"), verify=False)
    model_config = _model_config(config, target.num_labels)
    choices = pretraining_choices(config)
    points = _finetune_points(config, ws, choices, model_config)
    calls = [
        (config, ws, choice, int(seed), model_config, points[choice])
        for choice in choices
        for seed in config.finetune.seeds
    ]
    finished = iter(_concurrently(config, _finetune_run, calls))
    results = {}
    for choice in choices:
        results[choice] = [next(finished) for _ in config.finetune.seeds]
        if config.report.get("induction") and choice != RANDOM_INIT and not epath.Path(ws.induction(choice)).exists():
            _induction(config, ws, choice)
    atomic.write_json(ws.finetune_results, results)
    return {c: float(np.mean([r["top1"] for r in runs])) for c, runs in results.items()}


def finetune_grid(config: ml_collections.ConfigDict, choice: str) -> list[tuple[float, float]]:
    """The (learning rate, weight decay) points a choice's fine-tuning is chosen from; [] when the
    config names none (then `finetune.learning_rate` / `weight_decay` are used as they are).
    Random initialisation has its own grid (Kornblith et al.: it wants larger rates)."""
    sweep = config.get("finetune_sweep")
    if sweep is None:
        return []
    prefix = "random_init_" if choice == RANDOM_INIT else ""
    return [(float(lr), float(wd)) for lr in sweep[prefix + "learning_rates"] for wd in sweep[prefix + "weight_decays"]]


def _finetune_points(
    config: ml_collections.ConfigDict, ws: Workspace, choices: list[str], model_config: ml_collections.ConfigDict
) -> dict[str, dict]:
    """The fine-tuning point of every choice: each grid point trained on the target's training split less
    a validation split carved from it (seeded, per class; or the prepared validation split when the data
    has one) and scored on that validation split; the best validation top-1 wins (ties: the first). All
    choices' grid runs go side by side where cores allow; each resumes from its checkpoints, and a
    choice's finetune/<choice>/grid.json, once written, is its answer."""
    import jax

    from trainer import sweep

    points: dict[str, dict] = {}
    pending: list[tuple[str, float, float]] = []
    for choice in choices:
        grid = finetune_grid(config, choice)
        if not grid:
            points[choice] = {
                "learning_rate": float(config.finetune.learning_rate),
                "weight_decay": float(config.finetune.weight_decay),
            }
        elif epath.Path(ws.finetune_grid_json(choice)).exists():
            points[choice] = atomic.read_json(ws.finetune_grid_json(choice))["chosen"]
        else:
            pending.extend((choice, lr, wd) for lr, wd in grid)
    if not pending:
        return points
    if epath.Path(ws.target("validation"), manifest.MANIFEST_NAME).exists():
        grid_train, validation = ws.target("train"), ws.target("validation")
    else:
        settings = config.finetune_sweep
        grid_train, validation = sweep.split_train_val(
            ws.target("train"), ws.finetune_split, float(settings.validation_fraction), int(settings.validation_seed)
        )
    if manifest.load_manifest(validation, verify=False).num_records == 0:
        raise ValueError(
            f"the fine-tuning grid's validation split {validation} is empty: raise finetune_sweep.validation_fraction"
        )
    calls = [(config, ws, choice, lr, wd, model_config, grid_train, validation) for choice, lr, wd in pending]
    scored = _concurrently(config, _finetune_grid_run, calls)
    for choice in dict.fromkeys(choice for choice, _, _ in pending):
        runs = [point for (c, _, _), point in zip(pending, scored, strict=True) if c == choice]
        best = max(runs, key=lambda p: p["val_top1"])  # max keeps the first of equals
        points[choice] = {"learning_rate": best["learning_rate"], "weight_decay": best["weight_decay"]}
        if jax.process_index() == 0:
            atomic.write_json(
                ws.finetune_grid_json(choice), {"points": runs, "chosen": points[choice], "validation": validation}
            )
    return {choice: points[choice] for choice in choices}


def _finetune_grid_run(
    config: ml_collections.ConfigDict,
    ws: Workspace,
    choice: str,
    lr: float,
    wd: float,
    model_config: ml_collections.ConfigDict,
    grid_train: str,
    validation: str,
) -> dict:
    """One grid point of a choice's fine-tuning, trained at the first fine-tuning seed and scored on the
    validation split."""
    from trainer import evaluate, train

    point_config = ml_collections.ConfigDict(config.finetune.to_dict())
    point_config.seed = int(config.finetune.seeds[0])
    point_config.learning_rate, point_config.weight_decay = lr, wd
    run_dir = ws.finetune_grid_run(choice, lr, wd)
    train.train(
        point_config,
        model_config=model_config,
        train_dir=grid_train,
        workdir=run_dir,
        init_from=None if choice == RANDOM_INIT else ws.pretrain(choice),
        stage_name=f"finetune_grid/{choice}/lr{lr:g}_wd{wd:g}",
    )
    scores = evaluate.evaluate(point_config, model_config=model_config, workdir=run_dir, data_dir=validation)
    return {
        "learning_rate": lr,
        "weight_decay": wd,
        "val_top1": scores["top1"],
        "val_mean_per_class": scores["mean_per_class"],
    }


def balanced_steps(config: ml_collections.ConfigDict) -> int:
    section = config.get("finetune_balanced")
    return int(section.steps) if section is not None else 0


def _balanced_target(config: ml_collections.ConfigDict, ws: Workspace) -> str:
    """The target training set with `finetune_balanced.per_class` images of every class (0: as many
    as the smallest class has), drawn with the job's seed; written once by the selected-set writer."""
    from selection import write

    out = ws.balanced_target
    if epath.Path(os.path.join(out, manifest.MANIFEST_NAME)).exists():
        return out
    target = manifest.load_manifest(ws.target("train"), verify=False)
    ids, labels = [], []
    for path in target.files:
        scan = write.scan_shard(path)
        ids.extend(scan.ids())
        labels.extend(scan.labels[scan.offsets[:-1]].tolist())  # an image's first label is its class
    labels_arr = np.array(labels)
    present = np.unique(labels_arr)
    per_class = int(config.finetune_balanced.per_class) or int(np.bincount(labels_arr)[present].min())
    rng = np.random.default_rng([int(config.seed), 0xBA1A])
    plan = {}
    for y in present.tolist():
        members = np.flatnonzero(labels_arr == y)
        for i in rng.permutation(members)[:per_class].tolist():
            plan[ids[i]] = 1
    write.write_selected(ws.target("train"), plan, out, records_per_shard=max(len(plan), 1), seed=int(config.seed))
    return out


def _finetune_balanced(
    config: ml_collections.ConfigDict,
    ws: Workspace,
    finetune_config: ml_collections.ConfigDict,
    model_config: ml_collections.ConfigDict,
    choice: str,
    seed: int,
) -> tuple[ml_collections.ConfigDict, str]:
    """Cui et al.'s long-tail fine-tuning: the fine-tuned model trained on for `finetune_balanced.steps`
    at `finetune_balanced.learning_rate` on a class-balanced subset of the target; returns the second
    stage's (trainer config, run dir), which the test metrics then evaluate."""
    from trainer import train

    section = config.finetune_balanced
    balanced = ml_collections.ConfigDict(finetune_config.to_dict())
    balanced.steps, balanced.epochs = int(section.steps), 0.0
    balanced.warmup_steps, balanced.warmup_epochs = 0, 0.0
    balanced.learning_rate = float(section.learning_rate)
    balanced.end_learning_rate = min(float(balanced.end_learning_rate), balanced.learning_rate)
    balanced.reinit_head = "never"  # same classes: continue the fine-tuned head
    second = ws.finetune_balanced(choice, seed)
    train.train(
        balanced,
        model_config=model_config,
        train_dir=_balanced_target(config, ws),
        workdir=second,
        init_from=ws.finetune(choice, seed),
        stage_name=f"finetune_balanced/{choice}/seed{seed}",
    )
    return balanced, second


def _induction(config: ml_collections.ConfigDict, ws: Workspace, choice: str) -> None:
    """Huh et al.'s induction accuracy of a pre-trained model's frozen features on the target (kNN)."""
    import jax

    from trainer import induction

    accuracy = induction.induction_accuracy(
        config.finetune,
        model_config=config.model,
        pretrain_dir=ws.pretrain(choice),
        pretrain_data_dir=ws.source if choice == ENTIRE_SOURCE else ws.selected(choice),
        train_dir=ws.target("train"),
        test_dir=ws.target("test"),
    )
    if jax.process_index() == 0:
        atomic.write_json(ws.induction(choice), accuracy)


def stage_report(config: ml_collections.ConfigDict, ws: Workspace) -> dict:
    return report.write_report(config, ws)


STAGES: dict[str, Callable[[ml_collections.ConfigDict, Workspace], dict]] = {
    "prepare": stage_prepare,
    "dedup": stage_dedup,
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


def _run_stage(config: ml_collections.ConfigDict, ws: Workspace, name: str, label: str) -> dict:
    """One stage (or one seed's part of a seeded stage) unless its marker says it is complete."""
    import jax

    marker = ws.marker(name)
    if epath.Path(marker).exists():
        print(f"== stage {label}: complete, skipped", flush=True)
        return atomic.read_json(marker)["summary"]
    print(f"== stage {label}: running", flush=True)
    start = time.time()
    summary = STAGES[name](config, ws)
    elapsed = time.time() - start
    _barrier(f"stage {label} done")
    if jax.process_index() == 0:
        atomic.write_json(marker, {"stage": name, "seconds": round(elapsed, 1), "summary": summary})
    print(f"== stage {label}: done in {elapsed:.0f}s  {summary}", flush=True)
    return summary


def run_pipeline(
    config: ml_collections.ConfigDict, workdir: str, names: Sequence[str] = STAGE_NAMES, shared: str = ""
) -> dict:
    """Runs the named stages in order, skipping complete ones; returns each stage's summary.

    Every process of a multi-host job runs every stage (each does its share); process 0 writes the
    marker once all have finished, so a job killed mid-stage reruns that stage on every process.
    `shared`: a grid's root, whose source (and entire-source model) this target's job uses.
    With `pretrain.seeds`, each seeded stage runs once per pre-training seed in that seed's view of the
    work dir (its own marker), and the stage's marker is written once every seed is complete.
    """
    import jax

    ws = Workspace(paths.resolve(workdir), dedup=bool(config.dedup.enabled), shared=shared)
    epath.Path(ws.root).mkdir(parents=True, exist_ok=True)
    config_cli.save_resolved(config, ws.root)
    seeds = pretrain_seeds(config)
    summaries = {}
    for number, name in enumerate(names, start=1):
        label = f"{number}/{len(names)} {name}"
        if not seeds or name not in SEEDED_STAGES or epath.Path(ws.marker(name)).exists():
            summaries[name] = _run_stage(config, ws, name, label)
            continue
        start = time.time()
        summary = {
            f"pretrain_seed_{p}": _run_stage(config, ws.for_pretrain_seed(p), name, f"{label} (pre-training seed {p})")
            for p in seeds
        }
        if jax.process_index() == 0:
            atomic.write_json(
                ws.marker(name), {"stage": name, "seconds": round(time.time() - start, 1), "summary": summary}
            )
        summaries[name] = summary
    return summaries
