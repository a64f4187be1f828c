"""Fine-tuning sweeps: a learning-rate x weight-decay grid chosen on a validation split carved from
the training set, then several seeds of the chosen setting trained on all of train and scored on test
(mean and spread over seeds), as Kornblith et al. and Ngiam et al. report fine-tuning results."""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from data import manifest, paths, records, shards
from trainer.evaluate import evaluate
from trainer.train import train


def kornblith_grid() -> list[tuple[float, float]]:
    """7 learning rates 1e-4..1e-1 x (7 weight-decay/lr ratios 1e-6..1e-3, and no decay)."""
    return [(float(lr), float(ratio * lr)) for lr in np.logspace(-4, -1, 7) for ratio in [0.0, *np.logspace(-6, -3, 7)]]


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def split_train_val(train_dir: str, out_dir: str, val_fraction: float = 0.2, seed: int = 0) -> tuple[str, str]:
    """Writes `out_dir/train` and `out_dir/val`: a seeded random `val_fraction` of the records, per
    class where possible (every class keeps a training example). Skipped when both manifests exist."""
    train_out, val_out = os.path.join(out_dir, "train"), os.path.join(out_dir, "val")
    if all(epath.Path(os.path.join(d, manifest.MANIFEST_NAME)).exists() for d in (train_out, val_out)):
        return train_out, val_out
    source = manifest.load_manifest(train_dir)
    examples = [data for path in source.files for data in records.iter_records(path)]
    labels = [records.decode_example(d).labels for d in examples]
    first_label = np.array([(y or (-1,))[0] for y in labels])
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(examples), bool)
    for label in np.unique(first_label):
        members = rng.permutation(np.flatnonzero(first_label == label))
        take = min(int(round(val_fraction * len(members))), len(members) - 1)
        is_val[members[:take]] = True

    def write(directory: str, chosen: np.ndarray) -> None:
        picked = [(examples[i], labels[i]) for i in np.flatnonzero(chosen)]
        shards.write_shard_set(
            directory,
            lambda _: picked,  # one shard
            num_shards=1,
            label_names=source.label_names,
            prefix="split",
            hierarchy=source.hierarchy,
            extra={"split_of": paths.resolve(train_dir), "val_fraction": val_fraction, "seed": seed},
            resume=False,
            # every process of a multi-host job gets here: one writes, all wait for the manifest
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            barrier=_barrier,
        )

    write(train_out, ~is_val)
    write(val_out, is_val)
    return train_out, val_out


def _with(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in values.items():
        config[key] = value
    return config


def finetune_seeds(
    config: ml_collections.ConfigDict,
    *,
    model_config: ml_collections.ConfigDict,
    train_dir: str,
    test_dir: str,
    workdir: str,
    init_from: str | None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
) -> dict:
    """Fine-tunes once per seed (each in `workdir/seed_<s>`, resumable) and scores on test."""
    runs = []
    for seed in seeds:
        run_dir = os.path.join(workdir, f"seed_{seed}")
        train(
            _with(config, seed=int(seed)),
            model_config=model_config,
            train_dir=train_dir,
            workdir=run_dir,
            init_from=init_from,
            stage_name=f"finetune seed {seed}",
        )
        runs.append(
            {"seed": int(seed), **evaluate(config, model_config=model_config, workdir=run_dir, data_dir=test_dir)}
        )
    top1 = np.array([r["top1"] for r in runs])
    mpc = np.array([r["mean_per_class"] for r in runs])
    return {
        "top1_mean": float(top1.mean()),
        "top1_std": float(top1.std(ddof=1)) if len(runs) > 1 else 0.0,
        "mean_per_class_mean": float(mpc.mean()),
        "mean_per_class_std": float(mpc.std(ddof=1)) if len(runs) > 1 else 0.0,
        "seeds": runs,
    }


def run_sweep(
    config: ml_collections.ConfigDict,
    *,
    model_config: ml_collections.ConfigDict,
    train_dir: str,
    test_dir: str,
    workdir: str,
    init_from: str | None,
    grid: Sequence[tuple[float, float]] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    val_fraction: float = 0.2,
    select_on: str = "top1",
) -> list[dict]:
    """One row per (learning_rate, weight_decay) with its validation score; the chosen row (best
    `select_on` on validation) also carries `selected=True` and the test mean/std over `seeds`."""
    sub_train, val = split_train_val(train_dir, os.path.join(workdir, "split"), val_fraction, int(config.seed))
    rows = []
    for lr, wd in grid if grid is not None else kornblith_grid():
        name = f"lr{lr:.3g}_wd{wd:.3g}"
        point = _with(config, learning_rate=float(lr), weight_decay=float(wd))
        run_dir = os.path.join(workdir, "grid", name)
        train(
            point,
            model_config=model_config,
            train_dir=sub_train,
            workdir=run_dir,
            init_from=init_from,
            stage_name=f"grid {name}",
        )
        scores = evaluate(point, model_config=model_config, workdir=run_dir, data_dir=val)
        rows.append(
            {
                "learning_rate": float(lr),
                "weight_decay": float(wd),
                "val_top1": scores["top1"],
                "val_mean_per_class": scores["mean_per_class"],
                "selected": False,
            }
        )
    best = max(rows, key=lambda r: r[f"val_{select_on}"])
    best["selected"] = True
    chosen = _with(config, learning_rate=best["learning_rate"], weight_decay=best["weight_decay"])
    best.update(
        finetune_seeds(
            chosen,
            model_config=model_config,
            train_dir=train_dir,
            test_dir=test_dir,
            workdir=os.path.join(workdir, "final"),
            init_from=init_from,
            seeds=seeds,
        )
    )
    return rows
