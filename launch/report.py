"""The job's report: tables shaped like Ngiam et al.'s Table 3 and Table 5, and Figure 1's plot.

report.md  - results per pre-training choice (mean and spread over fine-tuning seeds), the top source
             labels by importance weight with their sample rates per matcher, selection totals
report.csv - one row per pre-training choice: pretraining_data, target, top1_mean, top1_std,
             mean_per_class_mean, mean_per_class_std, seeds, and the comparison's cost columns:
             unique_examples, images_seen (pre-training steps x batch), scoring_images (images
             forwarded to select), select_wall_s, pretrain_wall_s
importance_weights.png (written by the select stage), results.png
"""

from __future__ import annotations

import csv
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from data import atomic  # noqa: E402
from launch import workdir  # noqa: E402
from selection import methods  # noqa: E402

CSV_COLUMNS = (
    "pretraining_data",
    "target",
    "top1_mean",
    "top1_std",
    "mean_per_class_mean",
    "mean_per_class_std",
    "seeds",
    "unique_examples",
    "images_seen",
    "scoring_images",
    "select_wall_s",
    "pretrain_wall_s",
)


def row_title(choice: str) -> str:
    """A report row's title: the fixed rows, else the selection method's title (selection.methods)."""
    if choice == workdir.ENTIRE_SOURCE:
        return "Entire source"
    if choice == workdir.RANDOM_INIT:
        return "Random initialization"
    return methods.get(choice).title


def summarise_runs(runs: list[dict]) -> dict:
    """Mean and population standard deviation over seeds, in percent."""
    top1 = 100.0 * np.array([r["top1"] for r in runs])
    per_class = 100.0 * np.array([r["mean_per_class"] for r in runs])
    return {
        "top1_mean": float(top1.mean()),
        "top1_std": float(top1.std()),
        "mean_per_class_mean": float(per_class.mean()),
        "mean_per_class_std": float(per_class.std()),
        "seeds": len(runs),
    }


def results_rows(results: dict[str, list[dict]], target: str) -> list[dict]:
    return [{"pretraining_data": choice, "target": target, **summarise_runs(runs)} for choice, runs in results.items()]


def cost_fields(choice: str, ws: workdir.Workspace, select_summary: dict) -> dict:
    """What a pre-training choice cost: distinct examples it pre-trained on, images seen, images
    forwarded to select them, and wall time of the selection and of the pre-training (blank where a
    stage has not run; random initialisation costs nothing)."""
    from data import manifest
    from trainer import train

    fields: dict = {"unique_examples": "", "images_seen": 0, "scoring_images": 0, "select_wall_s": 0.0}
    fields["pretrain_wall_s"] = 0.0
    if choice == workdir.RANDOM_INIT:
        return fields
    if choice == workdir.ENTIRE_SOURCE:
        if os.path.exists(os.path.join(ws.source, manifest.MANIFEST_NAME)):
            fields["unique_examples"] = manifest.load_manifest(ws.source, verify=False).num_records
    else:
        if os.path.exists(os.path.join(ws.selected(choice), manifest.MANIFEST_NAME)):
            selected = manifest.load_manifest(ws.selected(choice), verify=False)
            fields["unique_examples"] = int(selected.extra.get("unique_examples", selected.num_records))
        summary = select_summary.get(choice, {})
        fields["scoring_images"] = int(summary.get("scoring_images", 0))
        fields["select_wall_s"] = float(summary.get("wall_s", 0.0))
    final = os.path.join(ws.pretrain(choice), train.FINAL_NAME)
    if os.path.exists(final):
        run = atomic.read_json(final)
        fields["images_seen"] = int(run["steps"]) * int(run["global_batch_size"])
        fields["pretrain_wall_s"] = float(run.get("wall_s", 0.0))
    return fields


def _read_plan(path: str) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {row["label"]: row for row in csv.DictReader(handle)}


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plot_results(rows: list[dict], path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [row_title(r["pretraining_data"]) for r in rows]
    ax.barh(names, [r["top1_mean"] for r in rows], xerr=[r["top1_std"] for r in rows], color="#4477aa")
    ax.invert_yaxis()
    ax.set_xlabel("target top-1 accuracy (%), mean and std over seeds")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def write_report(config: ml_collections.ConfigDict, ws: workdir.Workspace) -> dict:
    """Builds report.md / report.csv / results.png from the finetune, weights and select outputs."""
    results = atomic.read_json(ws.finetune_results)
    target = config.data.target_name
    order = [c for c in workdir.pretraining_choices(config) if c in results]  # JSON keys come back sorted
    rows = results_rows({c: results[c] for c in order}, target)
    select_marker = ws.marker("select")
    select_summary = atomic.read_json(select_marker)["summary"] if os.path.exists(select_marker) else {}
    for row in rows:
        row.update(cost_fields(row["pretraining_data"], ws, select_summary))

    csv_buffer = io.StringIO()
    writer = csv.DictWriter(csv_buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic.write_text(ws.report_csv, csv_buffer.getvalue())
    _plot_results(rows, ws.results_png)

    weights_info = atomic.read_json(ws.weights_json)
    w = np.asarray(weights_info["w"])
    names = weights_info["label_names"]
    methods = [m for m in config.selection.methods if os.path.exists(ws.plan_csv(m))]
    plans = {m: _read_plan(ws.plan_csv(m)) for m in methods}
    top = np.argsort(-w)[: config.report.top_labels]
    label_rows = []
    for rank, i in enumerate(top, start=1):
        name = names[i]
        count = next(iter(plans.values()))[name]["count"] if plans else ""
        rates = [
            f"{100 * float(plans[m][name]['planned']) / max(float(plans[m][name]['count']), 1):.2f}%" for m in methods
        ]
        label_rows.append([str(rank), name, str(count), f"{weights_info['pt'][i]:.4f}", f"{w[i]:.3f}", *rates])

    stats_lines = []
    for m in methods:
        marker = ws.marker("select")
        if os.path.exists(marker):
            summary = atomic.read_json(marker)["summary"].get(m, {})
            stats_lines.append(f"- **{m}**: " + ", ".join(f"{k} {v}" for k, v in summary.items()))

    md = [
        f"# Target-conditioned pre-training report: {target}",
        "",
        f"Model `{config.model.name}` (width x{config.model.width_multiplier}, {config.model.image_size} px); "
        f"pre-training {config.pretrain.steps} steps at batch {config.pretrain.global_batch_size} for every "
        f"pre-trained row; fine-tuning {config.finetune.steps} steps, seeds {list(config.finetune.seeds)}.",
        "",
        "## Transfer results (Table 3's shape)",
        "",
        _markdown_table(
            ["Pre-training data", "Top-1 (%)", "Mean per-class (%)", "Seeds"],
            [
                [
                    row_title(r["pretraining_data"]),
                    f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}",
                    f"{r['mean_per_class_mean']:.2f} ± {r['mean_per_class_std']:.2f}",
                    str(r["seeds"]),
                ]
                for r in rows
            ],
        ),
        "",
        "Mean ± standard deviation over fine-tuning seeds. ![results](results.png)",
        "",
        "## Methods compared at one budget",
        "",
        _markdown_table(
            [
                "Pre-training data",
                "Unique examples",
                "Images seen",
                "Scoring cost (images forwarded)",
                "Wall time: select + pre-train (s)",
                "Top-1 (%)",
                "Mean per-class (%)",
            ],
            [
                [
                    row_title(r["pretraining_data"]),
                    str(r["unique_examples"]),
                    str(r["images_seen"]),
                    str(r["scoring_images"]),
                    f"{r['select_wall_s']:.1f} + {r['pretrain_wall_s']:.1f}",
                    f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}",
                    f"{r['mean_per_class_mean']:.2f} ± {r['mean_per_class_std']:.2f}",
                ]
                for r in rows
            ],
        ),
        "",
        "Every pre-trained row runs the same number of steps at the same batch (images seen); scoring "
        "cost counts the images a method forwards through its own networks to choose its data.",
        "",
        "## Top source labels by importance weight (Table 5's shape)",
        "",
        _markdown_table(
            ["#", "Source label", "# Examples", "Pt", "w = Pt/Ps", *[f"Sample rate ({m})" for m in methods]],
            label_rows,
        ),
        "",
        "## Selected datasets",
        "",
        *stats_lines,
        "",
        "## Importance weight distribution (Figure 1's shape)",
        "",
        "![importance weights](importance_weights.png)",
        "",
    ]
    atomic.write_text(ws.report_md, "\n".join(md))
    return {r["pretraining_data"]: round(r["top1_mean"], 2) for r in rows}
