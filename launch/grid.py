"""A Table-3-shaped grid in one command: rows = pre-training choices, columns = targets.

`config.grid.targets` names the targets; each runs as an ordinary job in `<workdir>/targets/<name>`
(its own prepare of the target, weights pass, selection, selected pre-training, fine-tuning and
report), all sharing the grid root's source and, without dedup, its one entire-source model, which
the first target's job trains and the others find finished. Finished stages of every cell are
skipped, so the command resumes, and `grid.md` / `grid.csv` are assembled from the cells that are
done, with Kornblith et al.'s mean column: the accuracies averaged in logit space (a row with a
missing cell gets none).

A target name selects the target: with embedded data, the glyph group it renders
(`data.embedded.target.groups`, e.g. "greek_lower", "cyrillic_lower"); with external data, the side
config `config.grid.sides.<name>` (data.sides.side_config) that replaces `data.target`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

import ml_collections
from etils import epath

from data import atomic, paths
from launch import config_cli, report, stages
from launch.workdir import Workspace, pretraining_choices


def grid_config(targets: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`config.grid`: the target names and, for external data, each one's side config."""
    return ml_collections.ConfigDict({"targets": tuple(targets), "sides": ml_collections.ConfigDict()})


def target_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The job of one column: the grid's config with its target."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.target_name = name
    if c.data.kind == "embedded":
        c.data.embedded.target.groups = name
    else:
        c.data.target = ml_collections.ConfigDict(config.grid.sides[name].to_dict())
    return c


def _mean_logit(values: list[float]) -> float:
    """Kornblith et al.'s average over datasets: the mean of logit(accuracy), mapped back to %."""
    clipped = [min(max(v / 100.0, 1e-4), 1 - 1e-4) for v in values]
    mean = sum(math.log(p / (1 - p)) for p in clipped) / len(clipped)
    return 100.0 / (1.0 + math.exp(-mean))


def table(config: ml_collections.ConfigDict, root: Workspace) -> list[dict]:
    """One row per pre-training choice: top-1 (mean over fine-tuning seeds) per finished target."""
    targets = list(config.grid.targets)
    cells: dict[str, dict[str, float]] = {}
    for name in targets:
        results_path = Workspace(root.grid_target(name)).finetune_results
        if not epath.Path(results_path).exists():
            continue
        for choice, runs in atomic.read_json(results_path).items():
            cells.setdefault(choice, {})[name] = report.summarise_runs(runs)["top1_mean"]
    rows = []
    for choice in pretraining_choices(config):
        done = cells.get(choice, {})
        row = {"pretraining_data": choice, **{t: done.get(t) for t in targets}}
        row["mean_logit"] = _mean_logit([done[t] for t in targets]) if len(done) == len(targets) else None
        rows.append(row)
    return rows


def write_table(config: ml_collections.ConfigDict, root: Workspace) -> list[dict]:
    """grid.md and grid.csv (blank cells: not finished yet); returns the rows."""
    rows = table(config, root)
    targets = list(config.grid.targets)

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    lines = [
        f"# Grid: top-1 (%) after fine-tuning, mean over seeds {list(config.finetune.seeds)}",
        "",
        "| Pre-training data | " + " | ".join(targets) + " | Mean (logit) |",
        "|---|" + "---|" * (len(targets) + 1),
    ]
    for row in rows:
        title = (
            report.row_title(row["pretraining_data"]) if "@" not in row["pretraining_data"] else row["pretraining_data"]
        )
        lines.append(f"| {title} | " + " | ".join(cell(row[t]) for t in targets) + f" | {cell(row['mean_logit'])} |")
    atomic.write_text(root.grid_md, "\n".join(lines) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["pretraining_data", *targets, "mean_logit"])
    for row in rows:
        writer.writerow([row["pretraining_data"], *(cell(row[t]) for t in targets), cell(row["mean_logit"])])
    atomic.write_text(root.grid_csv, buffer.getvalue())
    return rows


def run_grid(config: ml_collections.ConfigDict, workdir: str, names: Sequence[str]) -> list[dict]:
    """Every target's job in turn (finished stages skipped), then the table."""
    import jax

    root = Workspace(paths.resolve(workdir), dedup=bool(config.dedup.enabled))
    epath.Path(root.root).mkdir(parents=True, exist_ok=True)
    config_cli.save_resolved(config, root.root)
    for number, name in enumerate(config.grid.targets, start=1):
        print(f"=== grid target {number}/{len(config.grid.targets)} {name}", flush=True)
        stages.run_pipeline(target_config(config, name), root.grid_target(name), names, shared=root.root)
    rows = write_table(config, root) if jax.process_index() == 0 else table(config, root)
    print(epath.Path(root.grid_md).read_text() if jax.process_index() == 0 else "", flush=True)
    return rows
