"""Selection statistics: Table 5's per-label columns, unique/repeated totals, Figure 1's weight plot.

Per label: source count (examples carrying it), attributed count (examples the plan draws from,
see `selection.weights`), Pt, Ps, w, planned and realised draws and sample rates (draws / attributed
count, Table 5's "sample rate"), expected and realised unique examples. Realised numbers come from
the written shard set's manifest (`selection.write`), which also holds the plan as re-applied to
the attributed counts.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data import atomic, manifest  # noqa: E402
from selection import plan as plan_lib  # noqa: E402

COLUMNS = (
    "label",
    "source_count",
    "attributed_count",
    "pt",
    "ps",
    "weight",
    "planned",
    "planned_rate",
    "realised",
    "realised_rate",
    "expected_unique",
    "unique",
)


def _rate(draws: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.divide(draws, count, out=np.zeros(len(count)), where=count > 0)


def label_table(plan: plan_lib.LabelPlan, shard_set: manifest.ShardSet | None = None) -> list[dict]:
    """One row per label (plan order). Without a shard set, realised columns are empty (preview)."""
    count = np.asarray(plan.count, np.float64)
    planned, expected_unique = plan.planned, plan.unique
    realised = unique = None
    if shard_set is not None:
        written = shard_set.extra.get("plan", {})
        if "planned" in written:  # the plan as the writer applied it (attributed counts)
            count = np.asarray(written["count"], np.float64)
            planned = np.asarray(written["planned"], np.float64)
            expected_unique = np.asarray(written["expected_unique"], np.float64)
        realised = np.asarray(shard_set.extra["realised"]["draws"], np.float64)
        unique = np.asarray(shard_set.extra["realised"]["unique"], np.float64)
    planned_rate = _rate(planned, count)
    realised_rate = _rate(realised, count) if realised is not None else None
    rows = []
    for i, name in enumerate(plan.label_names):
        rows.append(
            {
                "label": name,
                "source_count": int(plan.raw_count[i]),
                "attributed_count": int(count[i]),
                "pt": float(plan.pt[i]),
                "ps": float(plan.ps[i]),
                "weight": float(plan.weight[i]),
                "planned": float(planned[i]),
                "planned_rate": float(planned_rate[i]),
                "realised": None if realised is None else int(realised[i]),
                "realised_rate": None if realised_rate is None else float(realised_rate[i]),
                "expected_unique": float(expected_unique[i]),
                "unique": None if unique is None else int(unique[i]),
            }
        )
    return rows


def totals(table: Sequence[dict]) -> dict:
    """Selected examples in all, distinct ones, and repeats (realised when written, else expected)."""
    written = bool(table) and table[0]["realised"] is not None
    total = sum(r["realised"] if written else r["planned"] for r in table)
    unique = sum(r["unique"] if written else r["expected_unique"] for r in table)
    return {
        "examples": int(round(total)),
        "unique": int(round(unique)),
        "repeated": int(round(total - unique)),
        "labels_sampled": sum(1 for r in table if (r["realised"] if written else r["planned"]) > 0),
        "realised": written,
    }


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def to_csv(table: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: _fmt(row[k]) for k in COLUMNS})
    return buffer.getvalue()


def to_markdown(table: Sequence[dict], top: int = 20) -> str:
    """Table 5's shape: the `top` labels by importance weight, then the totals."""
    rows = sorted(table, key=lambda r: -r["weight"])[:top]
    header = ["#", "Source label", "# Examples", "Pt", "w", "Sample rate (planned)", "Sample rate (realised)", "Unique"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, r in enumerate(rows, start=1):
        realised = "" if r["realised_rate"] is None else f"{100 * r['realised_rate']:.2f}%"
        unique = r["unique"] if r["unique"] is not None else f"{r['expected_unique']:.1f} (expected)"
        lines.append(
            f"| {rank} | {r['label']} | {r['source_count']} | {r['pt']:.4g} | {r['weight']:.4g} | "
            f"{100 * r['planned_rate']:.2f}% | {realised} | {unique} |"
        )
    t = totals(table)
    lines += [
        "",
        f"Selected examples: {t['examples']}; unique: {t['unique']}; repeated: {t['repeated']}; "
        f"labels sampled: {t['labels_sampled']} ({'realised' if t['realised'] else 'expected'}).",
    ]
    return "\n".join(lines) + "\n"


def write_tables(table: Sequence[dict], prefix: str, top: int = 20) -> tuple[str, str]:
    """Writes `prefix.csv` (every label) and `prefix.md` (top labels and totals); returns the paths."""
    atomic.write_text(prefix + ".csv", to_csv(table))
    atomic.write_text(prefix + ".md", to_markdown(table, top))
    return prefix + ".csv", prefix + ".md"


def plot_weights(weights: Sequence[float] | np.ndarray, label_names: Sequence[str], path: str, top: int = 100) -> None:
    """Figure 1's shape: the `top` importance weights sorted in decreasing order, log scale, as PNG."""
    w = np.asarray(weights, np.float64)
    order = np.argsort(-w, kind="stable")[:top]
    order = order[w[order] > 0]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(np.arange(len(order)), w[order], width=1.0, color="#4477aa")
    ax.set_yscale("log")
    ax.set_xlabel(f"top {len(order)} source labels sorted by importance weight")
    ax.set_ylabel("importance weight w = Pt / Ps")
    if len(order) <= 30:
        ax.set_xticks(np.arange(len(order)), [label_names[i] for i in order], rotation=90, fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
