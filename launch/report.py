"""The job's report: tables shaped like Ngiam et al.'s Tables 3 and 5, Figures 1 and 2.

report.md  - results per pre-training choice (mean and spread over fine-tuning seeds; Table 3 holds each
             method at selection.size), accuracy against selected-set size (with selection.sizes), the
             top and bottom source labels by importance weight with the sample rates each method wrote,
             selection totals
report.csv - one row per pre-training choice (every size): pretraining_data, target, top1_mean, top1_std,
             mean_per_class_mean, mean_per_class_std, seeds, and the comparison's cost columns:
             unique_examples, images_seen (pre-training steps x batch), scoring_images (images
             forwarded to select), select_wall_s, pretrain_wall_s, induction_top1/5 (with
             report.induction: Huh et al.'s kNN accuracy on the target in the frozen pre-trained features)
importance_weights.png (written by the select stage), results.png, accuracy_vs_size.png
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
from etils import epath

from data import atomic  # noqa: E402
from launch import pt_model, workdir  # noqa: E402
from selection import methods  # noqa: E402
from selection import weights as weights_lib  # noqa: E402

CSV_COLUMNS = (
    "pretraining_data",
    "target",
    "top1_mean",
    "top1_std",
    "mean_per_class_mean",
    "mean_per_class_std",
    "seeds",
    "finetune_learning_rate",
    "finetune_weight_decay",
    "unique_examples",
    "images_seen",
    "scoring_images",
    "select_wall_s",
    "pretrain_wall_s",
    "induction_top1",
    "induction_top5",
)


# report.csv with pretrain.seeds: every pre-trained row at several pre-training seeds. top1_mean is the
# mean over pre-training seeds of each seed's mean over fine-tuning seeds; top1_std_pretrain the spread
# of those per-seed means; top1_std_finetune the mean over pre-training seeds of the spread over
# fine-tuning seeds; top1_per_pretrain_seed each seed's mean, in `pretrain.seeds` order.
SEEDED_CSV_COLUMNS = (
    "pretraining_data",
    "target",
    "top1_mean",
    "top1_std_pretrain",
    "top1_std_finetune",
    "pretrain_seeds",
    "finetune_seeds",
    "top1_per_pretrain_seed",
    "mean_per_class_mean",
    *CSV_COLUMNS[7:],
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
        # the fine-tuning point every seed of the row ran (chosen on validation with finetune_sweep)
        "finetune_learning_rate": f"{runs[0]['learning_rate']:g}" if "learning_rate" in runs[0] else "",
        "finetune_weight_decay": f"{runs[0]['weight_decay']:g}" if "weight_decay" in runs[0] else "",
    }


def results_rows(results: dict[str, list[dict]], target: str) -> list[dict]:
    return [{"pretraining_data": choice, "target": target, **summarise_runs(runs)} for choice, runs in results.items()]


def seeded_rows(results: dict[int, dict[str, list[dict]]], target: str) -> list[dict]:
    """Rows over pre-training seeds (`results`: seed -> choice -> fine-tuning runs), SEEDED_CSV_COLUMNS.

    A row missing at some seed is summarised over the seeds that have it (random initialisation is
    one set of runs, the same at every seed, so its spread over pre-training seeds is 0)."""
    choices = list(dict.fromkeys(c for by_choice in results.values() for c in by_choice))
    rows = []
    for choice in choices:
        per_seed = [summarise_runs(by_choice[choice]) for by_choice in results.values() if choice in by_choice]
        means = np.array([r["top1_mean"] for r in per_seed])
        rows.append(
            {
                "pretraining_data": choice,
                "target": target,
                "top1_mean": float(means.mean()),
                "top1_std_pretrain": float(means.std()),
                "top1_std_finetune": float(np.mean([r["top1_std"] for r in per_seed])),
                "pretrain_seeds": len(per_seed),
                "finetune_seeds": per_seed[0]["seeds"],
                "top1_per_pretrain_seed": " ".join(f"{m:.2f}" for m in means),
                "mean_per_class_mean": float(np.mean([r["mean_per_class_mean"] for r in per_seed])),
                "mean_per_class_std": float(np.std([r["mean_per_class_mean"] for r in per_seed])),
                "finetune_learning_rate": per_seed[0]["finetune_learning_rate"],  # the first seed's point
                "finetune_weight_decay": per_seed[0]["finetune_weight_decay"],
                "top1_std": float(means.std()),  # results.png's error bar (not a CSV column)
            }
        )
    return rows


def run_facts(ws: workdir.Workspace) -> str:
    """The machine, the job's wall time (its stages' markers) and what reproduces where."""
    import platform

    import jax

    cpu = platform.processor() or platform.machine()
    try:
        lines = epath.Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    seconds = sum(
        float(atomic.read_json(ws.marker(name)).get("seconds", 0.0))
        for name in workdir.STAGE_NAMES
        if name != "report" and epath.Path(ws.marker(name)).exists()
    )
    return (
        f"Machine: {cpu}, {os.cpu_count()} CPU core(s), JAX {jax.__version__} on {jax.default_backend()} "
        f"({jax.device_count()} device(s)). Wall time of the stages: {seconds / 60:.1f} min (summed over "
        "launches; a resumed stage counts its last launch). Every run is seeded and the input order is "
        "deterministic, so the same machine type, core count and software give the same numbers bit for bit, "
        "whether a stage's runs went side by side or one after another (`concurrent_runs`). A run's floats "
        "depend on the threads XLA starts with, one per usable core (its ops split their work over them), "
        "and on the processor's instruction set; training can amplify such differences up "
        "to the seed spread reported here."
    )


def _induction_cell(row: dict) -> str:
    if row["induction_top1"] == "":
        return ""
    return f"{row['induction_top1']:.1f} / {row['induction_top5']:.1f}"


def cost_fields(choice: str, ws: workdir.Workspace, select_summary: dict) -> dict:
    """What a pre-training choice cost: distinct examples it pre-trained on, images seen, images
    forwarded to select them, and wall time of the selection and of the pre-training (blank where a
    stage has not run; random initialisation costs nothing)."""
    from data import manifest
    from trainer import train

    fields: dict = {"unique_examples": "", "images_seen": 0, "scoring_images": 0, "select_wall_s": 0.0}
    fields.update(pretrain_wall_s=0.0, induction_top1="", induction_top5="")
    if choice == workdir.RANDOM_INIT:
        return fields
    if choice == workdir.ENTIRE_SOURCE:
        if epath.Path(os.path.join(ws.source, manifest.MANIFEST_NAME)).exists():
            fields["unique_examples"] = manifest.load_manifest(ws.source, verify=False).num_records
    else:
        if epath.Path(os.path.join(ws.selected(choice), manifest.MANIFEST_NAME)).exists():
            selected = manifest.load_manifest(ws.selected(choice), verify=False)
            fields["unique_examples"] = int(selected.extra.get("unique_examples", selected.num_records))
        summary = select_summary.get(choice, {})
        fields["scoring_images"] = int(summary.get("scoring_images", 0))
        fields["select_wall_s"] = float(summary.get("wall_s", 0.0))
    if epath.Path(ws.induction(choice)).exists():  # report.induction: kNN accuracy of the frozen features, in %
        knn = atomic.read_json(ws.induction(choice))
        fields["induction_top1"], fields["induction_top5"] = 100.0 * knn["top1"], 100.0 * knn["top5"]
    final = os.path.join(ws.pretrain(choice), train.FINAL_NAME)
    if epath.Path(final).exists():
        run = atomic.read_json(final)
        fields["images_seen"] = int(run["steps"]) * int(run["global_batch_size"])
        fields["pretrain_wall_s"] = float(run.get("wall_s", 0.0))
    return fields


def _read_stats(path: str) -> dict[str, dict]:
    text = epath.Path(path).read_text(encoding="utf-8")
    return {row["label"]: row for row in csv.DictReader(io.StringIO(text, newline=""))}


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


def _finetune_point(ws: workdir.Workspace, row: dict) -> str:
    """'lr / wd', with how many grid points it was chosen from when a grid chose it."""
    if not row.get("finetune_learning_rate"):
        return ""
    point = f"{row['finetune_learning_rate']} / {row['finetune_weight_decay']}"
    grid_path = ws.finetune_grid_json(row["pretraining_data"])
    if os.path.exists(grid_path):
        point += f" (best of {len(atomic.read_json(grid_path)['points'])} on validation)"
    return point


def _plot_accuracy_vs_size(points: dict[str, list[dict]], baselines: list[dict], path: str) -> None:
    """Figure 2's shape: target top-1 against selected-set size, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for method, rows in points.items():
        rows = sorted(rows, key=lambda r: r["size"])
        ax.errorbar(
            [r["size"] for r in rows],
            [r["top1_mean"] for r in rows],
            yerr=[r["top1_std"] for r in rows],
            marker="o",
            capsize=3,
            label=row_title(method),
        )
    for row, style in zip(baselines, ("--", ":"), strict=False):
        ax.axhline(row["top1_mean"], linestyle=style, color="grey", label=row_title(row["pretraining_data"]))
    ax.set_xlabel("selected pre-training examples")
    ax.set_ylabel("target top-1 accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())


def _label_table(config: ml_collections.ConfigDict, ws: workdir.Workspace, choices: list[str]) -> list[str]:
    """Table 5's shape: the top and bottom source labels by w, with the sample rates each choice wrote.

    w and Pt come from weights.json (the one w of the job); a rate is realised draws / examples the
    label's plan drew from, as the writer counted the copies it wrote (`selection.stats`).
    """
    iw = weights_lib.ImportanceWeights.read(ws.weights_json)
    stats = {c: _read_stats(ws.selection_stats_csv(c)) for c in choices}
    present = [i for i, name in enumerate(iw.label_names) if name not in iw.excluded]
    by_w = sorted(present, key=lambda i: -iw.w[i])
    k = config.report.top_labels
    top, bottom = by_w[:k], [i for i in by_w[-k:] if i not in by_w[:k]]
    header = ["#", "Source label", "# Examples", "Pt", "w = Pt/Ps", *[f"Sample rate ({c})" for c in choices]]
    rows = []
    for i in [*top, *bottom]:
        name = iw.label_names[i]
        rank = by_w.index(i) + 1
        count = next(iter(stats.values()))[name]["source_count"] if stats else ""
        rates = [f"{100 * float(stats[c][name]['realised_rate'] or 0):.2f}%" for c in choices]
        rows.append([str(rank), name, str(count), f"{iw.pt[i]:.4g}", f"{iw.w[i]:.6g}", *rates])
        if i == top[-1] and bottom:
            rows.append(["...", "", "", "", "", *["" for _ in choices]])
    return [
        f"Top {len(top)} and bottom {len(bottom)} of {len(present)} source labels by importance weight; "
        "sample rate = copies written / examples of the label (realised, from the written shard sets).",
        "",
        _markdown_table(header, rows),
    ]


def _transfer_table(config: ml_collections.ConfigDict, ws: workdir.Workspace, rows: list[dict]) -> list[str]:
    table = _markdown_table(
        ["Pre-training data", "Top-1 (%)", "Mean per-class (%)", "Seeds", "Fine-tuning lr / wd"],
        [
            [
                row_title(r["pretraining_data"]),
                f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}",
                f"{r['mean_per_class_mean']:.2f} ± {r['mean_per_class_std']:.2f}",
                str(r["seeds"]),
                _finetune_point(ws, r),
            ]
            for r in rows
        ],
    )
    sweep = (
        "Each row's fine-tuning learning rate / weight decay is the best on a validation split carved "
        "from the target's training split (grid: `finetune_sweep`, random initialisation its own), "
        "then re-trained on the whole training split for every seed. "
        if config.get("finetune_sweep") is not None
        else ""
    )
    return [table, "", "Mean ± standard deviation over fine-tuning seeds. " + sweep + "![results](results.png)"]


def _seeded_table(rows: list[dict], seeds: tuple[int, ...]) -> list[str]:
    """pretrain.seeds: per row, the mean and both spreads, and each pre-training seed's mean."""
    table = _markdown_table(
        [
            "Pre-training data",
            "Top-1 (%)",
            "Std over pre-training seeds",
            "Std over fine-tuning seeds",
            *[f"Pre-training seed {p}" for p in seeds],
        ],
        [
            [
                row_title(r["pretraining_data"]),
                f"{r['top1_mean']:.2f}",
                f"{r['top1_std_pretrain']:.2f}",
                f"{r['top1_std_finetune']:.2f}",
                *(r["top1_per_pretrain_seed"].split() + [""] * len(seeds))[: len(seeds)],
            ]
            for r in rows
        ],
    )
    return [
        table,
        "",
        f"Top-1: mean over {len(seeds)} pre-training seeds of the mean over "
        f"{rows[0]['finetune_seeds'] if rows else 0} fine-tuning seeds; the spread over pre-training seeds is "
        "that of the per-seed means, the spread over fine-tuning seeds the mean of each seed's spread "
        "(population standard deviations). Random initialisation does not depend on the pre-training seed. "
        "The sections below are pre-training seed "
        f"{seeds[0]}'s. ![results](results.png)",
    ]


def write_report(config: ml_collections.ConfigDict, ws: workdir.Workspace) -> dict:
    """Builds report.md / report.csv / results.png (and accuracy_vs_size.png) from the stage outputs."""
    seeds = workdir.pretrain_seeds(config)
    top = ws
    ws = ws.for_pretrain_seed(seeds[0] if seeds else None)  # per-seed sections: the first seed's
    target = config.data.target_name
    choices = {c.name: c for c in workdir.selection_choices(config)}
    listed = workdir.pretraining_choices(config)  # JSON keys come back sorted

    def results_of(view: workdir.Workspace) -> dict[str, list[dict]]:
        results = atomic.read_json(view.finetune_results)
        return {c: results[c] for c in listed if c in results}

    if seeds:
        all_rows = seeded_rows({p: results_of(top.for_pretrain_seed(p)) for p in seeds}, target)
    else:
        all_rows = results_rows(results_of(top), target)
    select_summary = (
        atomic.read_json(ws.marker("select"))["summary"] if epath.Path(ws.marker("select")).exists() else {}
    )
    for row in all_rows:
        row.update(cost_fields(row["pretraining_data"], ws, select_summary))
    rows = [r for r in all_rows if r["pretraining_data"] not in choices or choices[r["pretraining_data"]].main]

    csv_buffer = io.StringIO()
    columns = SEEDED_CSV_COLUMNS if seeds else CSV_COLUMNS
    writer = csv.DictWriter(csv_buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in all_rows:
        writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic.write_text(top.report_csv, csv_buffer.getvalue())
    _plot_results(rows, top.results_png)

    size_section: list[str] = []
    if config.selection.sizes:
        points: dict[str, list[dict]] = {}
        for r in all_rows:
            choice = choices.get(r["pretraining_data"])
            if choice is not None and choice.size:
                points.setdefault(choice.method, []).append({**r, "size": choice.size})
        baselines = [r for r in rows if r["pretraining_data"] in (workdir.ENTIRE_SOURCE, workdir.RANDOM_INIT)]
        _plot_accuracy_vs_size(points, baselines, top.accuracy_vs_size_png)
        size_rows = [
            [row_title(m), str(p["size"]), f"{p['top1_mean']:.2f} ± {p['top1_std']:.2f}"]
            for m, ps in points.items()
            for p in sorted(ps, key=lambda p: p["size"])
        ]
        size_section = [
            "## Accuracy against selected-set size (Figure 2's shape)",
            "",
            _markdown_table(["Method", "Selected examples", "Top-1 (%)"], size_rows),
            "",
            "Same source model and weights for every size. ![accuracy vs size](accuracy_vs_size.png)",
            "",
        ]

    rate_choices = [
        c for c, choice in choices.items() if choice.main and epath.Path(ws.selection_stats_csv(c)).exists()
    ]
    stats_lines = [
        f"- **{c}**: " + ", ".join(f"{k} {v}" for k, v in select_summary[c].items())
        for c in choices
        if c in select_summary
    ]

    dedup_section: list[str] = []
    if epath.Path(ws.marker("dedup")).exists() and config.dedup.enabled:
        removal = atomic.read_json(ws.marker("dedup"))["summary"]
        dedup_section = [
            "## Near-duplicates of target images removed from the source",
            "",
            f"{removal['removed']} of {removal['source_records']} source images removed "
            f"({100 * removal['removed'] / max(removal['source_records'], 1):.2f}%) before any training: "
            f"features `{removal['features']}`"
            + (
                f", verified by aligned grey correlation >= {removal['threshold']} and chroma correlation >= "
                f"{removal.get('chroma_threshold')}"
                if removal["verify"]
                else f", cosine >= {removal['threshold']}"
            )
            + ". Removed pairs of lowest similarity and the nearest kept ones (top: source, bottom: its "
            "nearest target image; grey / chroma correlation above): ![pairs](dedup_pairs.png)",
            "",
        ]

    md = [
        f"# Target-conditioned pre-training report: {target}",
        "",
        f"Model `{config.model.name}` (width x{config.model.width_multiplier}, {config.model.image_size} px); "
        f"pre-training {config.pretrain.steps} steps at batch {config.pretrain.global_batch_size} for every "
        f"pre-trained row; fine-tuning {config.finetune.steps} steps, seeds {list(config.finetune.seeds)}.",
        "",
        *dedup_section,
        pt_model.describe(config),
        "",
        run_facts(top),
        "",
        "## Transfer results (Table 3's shape)",
        "",
        *(_seeded_table(rows, seeds) if seeds else _transfer_table(config, ws, rows)),
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
                "kNN induction top-1 / top-5 (%)",
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
                    _induction_cell(r),
                ]
                for r in rows
            ],
        ),
        "",
        "Every pre-trained row runs the same number of steps at the same batch (images seen); scoring "
        "cost counts the images a method forwards through its own networks to choose its data; kNN "
        "induction (report.induction) classifies target test images by their nearest target training "
        "images in the frozen pre-trained features (Huh et al.).",
        "",
        *size_section,
        "## Source labels by importance weight (Table 5's shape)",
        "",
        *_label_table(config, ws, rate_choices),
        "",
        "## Selected datasets",
        "",
        *stats_lines,
        "",
        "## Importance weight distribution (Figure 1's shape)",
        "",
        f"![importance weights]({os.path.relpath(ws.importance_weights_png, top.root)})",
        "",
    ]
    atomic.write_text(top.report_md, "\n".join(md))
    return {r["pretraining_data"]: round(r["top1_mean"], 2) for r in all_rows}
