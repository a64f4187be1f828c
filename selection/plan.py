"""Selection plans: how many draws each source label gets, from label counts and weights alone.

No image is read: a plan is a few arrays over the source labels (18,291 at JFT scale), computed in
milliseconds, and is the preview a user checks before the expensive write (`selection.write`).

Matchers (Ngiam et al. 2018, appendix 6.1 and Table 6), for a desired size S:

- same:     with replacement, every example of label y drawn at rate s * w(y), s set so the expected
            total is S: planned(y) = S * w(y) * count(y) / sum(w * count). For a single-label
            source w * count = Pt * N, so planned is proportional to Pt. Optionally restricted to
            the top-k labels by w (Table 6 compares same / uniform / reverse on the same labels).
- elastic:  without replacement: labels exhausted in decreasing order of w, the remainder re-planned
            over the rest (water-filling: planned(y) = min(count(y), s * w(y) * count(y)), the
            single s that makes the total exactly S).
- uniform:  with replacement, S / k draws for each of the top-k labels by w.
- reverse:  with replacement, the same-distribution sampling rates of the top-k labels swapped
            between the highest and the lowest (rank i gets the rate of rank k-1-i), rescaled to S.
- hierarchy subset: every example of every descendant of the chosen ancestor labels, once.
- weighted loss: every example once (no resampling); training weights the loss by w instead
  (section 4.1's alternative).
- entire source: every example once.

w is the weights stage's (`selection.weights.ImportanceWeights`, Ps = count / number of examples)
whenever it is passed as `weights=`; only the preview CLI derives it from Pt here. The method
registry (`selection.methods`) names the matchers and maps config parameters onto these functions.

`planned` is the expected number of draws per label (a float); `draws(seed)` turns it into exact
integers that sum to the plan's size (see there). `unique` is the expected number of distinct
examples. For a multi-label source the counts a plan applies to are the ATTRIBUTED counts (see
`selection.weights`); `replan` re-applies a plan's recipe to other counts, which the writer does
once it has attributed the source examples.

CLI (the preview):
  python -m selection.plan --label_stats=FILE.json --size=N --matcher=same|elastic|uniform|reverse \
      --out=plan.csv [--top_k=K] [--seed=S]
with FILE.json = {"A": {"count": 10, "pt": 0.5}, ...} (optional "num_examples" key at top level: N,
default the sum of counts).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from data import atomic
from selection import weights as weights_lib

_WITH_REPLACEMENT = {"same": True, "uniform": True, "reverse": True}
_EVERY_CHOSEN_EXAMPLE = ("hierarchy", "weighted_loss", "entire")  # planned = count on the chosen labels
CSV_COLUMNS = ("label", "count", "raw_count", "pt", "ps", "weight", "planned", "rate", "unique")


@dataclasses.dataclass(frozen=True)
class LabelPlan:
    """Expected draws per source label, and how they were decided."""

    label_names: list[str]
    count: np.ndarray  # examples the plan draws from per label (attributed counts when multi-label)
    pt: np.ndarray
    ps: np.ndarray
    weight: np.ndarray  # w = Pt / Ps (0 for excluded labels)
    planned: np.ndarray  # expected draws
    unique: np.ndarray  # expected distinct examples
    matcher: str
    size: float  # sum of planned
    with_replacement: bool
    raw_count: np.ndarray  # examples carrying the label (= count for a single-label source)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> np.ndarray:
        """Sample rate per label (Table 5's "sample rate"): planned / count."""
        return np.divide(self.planned, self.count, out=np.zeros_like(self.planned), where=self.count > 0)

    def draws(self, seed: int) -> np.ndarray:
        """Integer draws per label, summing exactly to round(size).

        Each label gets floor(planned) plus one more with probability frac(planned) (systematic
        sampling over the fractional parts with one seeded offset), so E[draws] = planned, a label
        with an integer plan gets exactly that, and draws never exceed count without replacement.
        """
        base = np.floor(self.planned + 1e-9)
        frac = np.clip(self.planned - base, 0.0, None)
        cum = np.concatenate([[0.0], np.cumsum(frac)])
        remainder = round(float(self.planned.sum())) - base.sum()
        if cum[-1] > 0:  # rescale away float drift: the total must come out exact, cum stays monotone
            cum *= remainder / cum[-1]
            cum[-1] = remainder
        offset = np.random.default_rng([int(seed), 0x5E1EC7]).random()
        extra = np.diff(np.floor(cum + offset))
        return (base + extra).astype(np.int64)

    def to_csv(self, path: str) -> None:
        """One row per label: label, count, raw_count, pt, ps, weight, planned, rate, unique."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        rate = self.rate
        for i, name in enumerate(self.label_names):
            writer.writerow(
                [
                    name,
                    int(self.count[i]),
                    int(self.raw_count[i]),
                    f"{self.pt[i]:.9g}",
                    f"{self.ps[i]:.9g}",
                    f"{self.weight[i]:.9g}",
                    f"{self.planned[i]:.6f}",
                    f"{rate[i]:.9g}",
                    f"{self.unique[i]:.6f}",
                ]
            )
        atomic.write_text(path, buffer.getvalue())

    def summary(self) -> dict[str, Any]:
        return {
            "matcher": self.matcher,
            "size": float(self.size),
            "with_replacement": self.with_replacement,
            "labels_sampled": int(np.sum(self.planned > 0)),
            "expected_unique": float(np.sum(self.unique)),
            **{k: v for k, v in self.params.items() if not isinstance(v, np.ndarray)},
        }


def expected_unique(planned: np.ndarray, count: np.ndarray, with_replacement: bool) -> np.ndarray:
    """Distinct examples expected from `planned` uniform draws among `count` examples."""
    planned = np.asarray(planned, np.float64)
    count = np.asarray(count, np.float64)
    if not with_replacement:
        return planned.copy()
    out = np.zeros_like(planned)
    ok = (count > 0) & (planned > 0)
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-1.0 / np.where(ok, count, 2.0))  # count 1: -inf, taken for sure
    out[ok] = count[ok] * -np.expm1(planned[ok] * log_miss[ok])
    return out


# ----------------------------------------------------------------------------------------------
# Planned draws for given counts and weights (the recipes; `replan` re-runs them).


def _same(counts: np.ndarray, w: np.ndarray, size: float) -> np.ndarray:
    mass = w * counts
    if mass.sum() <= 0:
        raise ValueError("no source label has both examples and a positive weight")
    return size * mass / mass.sum()


def _elastic(counts: np.ndarray, w: np.ndarray, size: float) -> np.ndarray:
    usable = (w > 0) & (counts > 0)
    available = counts[usable].sum()
    if size > available:
        raise ValueError(
            f"elastic matcher: size {size:g} exceeds the {available:g} examples of labels with w > 0 "
            "(it never takes an example twice)"
        )
    order = np.flatnonzero(usable)[np.argsort(-w[usable], kind="stable")]
    c, wo = counts[order], w[order]
    mass = wo * c
    taken = np.concatenate([[0.0], np.cumsum(c)])[:-1]  # examples of labels exhausted before k
    rest = mass[::-1].cumsum()[::-1]  # weight mass of labels k.. (not exhausted)
    scale = (size - taken) / rest
    k = int(np.argmax(scale * wo <= 1.0 + 1e-12))  # first label that is not exhausted
    planned = np.zeros_like(counts)
    planned[order[:k]] = c[:k]
    planned[order[k:]] = np.minimum(c[k:], scale[k] * mass[k:])
    return planned


def _top_k(w: np.ndarray, counts: np.ndarray, top_k: int) -> np.ndarray:
    usable = np.flatnonzero((w > 0) & (counts > 0))
    ranked = usable[np.argsort(-w[usable], kind="stable")]
    return ranked[:top_k] if top_k > 0 else ranked


def _restricted(w: np.ndarray, counts: np.ndarray, top_k: int) -> np.ndarray:
    """w on the top-k labels by w, 0 elsewhere (all of w when top_k is 0)."""
    if top_k <= 0:
        return w
    out = np.zeros_like(w)
    chosen = _top_k(w, counts, top_k)
    out[chosen] = w[chosen]
    return out


def _uniform(counts: np.ndarray, w: np.ndarray, size: float, top_k: int) -> np.ndarray:
    chosen = _top_k(w, counts, top_k)
    planned = np.zeros_like(counts)
    planned[chosen] = size / len(chosen)
    return planned


def _reverse(counts: np.ndarray, w: np.ndarray, size: float, top_k: int) -> np.ndarray:
    chosen = _top_k(w, counts, top_k)  # highest rate first: the same matcher's rate is s * w
    rate = np.zeros_like(counts)
    rate[chosen] = w[chosen[::-1]]
    return _same(counts, rate, size)


def _planned(matcher: str, counts: np.ndarray, w: np.ndarray, size: float, params: dict) -> np.ndarray:
    counts = np.asarray(counts, np.float64)
    if matcher == "same":
        return _same(counts, _restricted(w, counts, params.get("top_k", 0)), size)
    if matcher == "elastic":
        return _elastic(counts, w, size)
    if matcher == "uniform":
        return _uniform(counts, w, size, params.get("top_k", 0))
    if matcher == "reverse":
        return _reverse(counts, w, size, params.get("top_k", 0))
    if matcher in _EVERY_CHOSEN_EXAMPLE:
        return counts * np.asarray(params["chosen"], np.float64)
    if matcher == "given":
        return counts * np.asarray(params["rate"], np.float64)
    raise ValueError(f"unknown matcher {matcher!r}")


def _build(
    matcher: str,
    label_names: Sequence[str],
    counts: np.ndarray,
    pt: np.ndarray | None,
    size: float,
    num_examples: int | None,
    params: dict,
    with_replacement: bool | None = None,
    weights: weights_lib.ImportanceWeights | None = None,
) -> LabelPlan:
    counts = np.asarray(counts, np.float64)
    if len(label_names) != len(counts):
        raise ValueError(f"{len(label_names)} label names but {len(counts)} counts")
    if np.any(counts < 0):
        raise ValueError("label counts must be non-negative")
    if weights is not None:  # the weights stage's w: never recomputed with another N
        if list(weights.label_names) != list(label_names):
            raise ValueError("the importance weights are for other labels than the plan's")
        pt, ps, w = weights.pt, weights.ps, weights.w
    else:  # the preview: w from Pt, N = num_examples (default the sum of counts)
        n = float(num_examples) if num_examples else float(counts.sum())
        pt = np.zeros_like(counts) if pt is None else np.asarray(pt, np.float64)
        ps, w, _ = weights_lib.importance_weights(pt, counts, max(n, 1.0))
    planned = _planned(matcher, counts, w, size, params)
    if with_replacement is None:
        with_replacement = _WITH_REPLACEMENT.get(matcher, False)
    return LabelPlan(
        label_names=list(label_names),
        count=counts,
        pt=pt,
        ps=ps,
        weight=w,
        planned=planned,
        unique=expected_unique(planned, counts, with_replacement),
        matcher=matcher,
        size=float(planned.sum()),
        with_replacement=with_replacement,
        raw_count=counts.copy(),
        params=params,
    )


def replan(plan: LabelPlan, counts: np.ndarray) -> LabelPlan:
    """The same recipe (matcher, size, weights, parameters) applied to other per-label counts.

    The writer calls this with the attributed counts of a multi-label source; Pt, Ps, w and the raw
    counts stay those of the original plan.
    """
    counts = np.asarray(counts, np.float64)
    if counts.shape != plan.count.shape:
        raise ValueError(f"counts have shape {counts.shape}, the plan {plan.count.shape}")
    target = plan.params.get("target_size", plan.size)
    planned = _planned(plan.matcher, counts, plan.weight, target, plan.params)
    return dataclasses.replace(
        plan,
        count=counts,
        planned=planned,
        size=float(planned.sum()),
        unique=expected_unique(planned, counts, plan.with_replacement),
    )


# ----------------------------------------------------------------------------------------------
# Public constructors.


Weights = weights_lib.ImportanceWeights


def same_distribution(
    label_names: Sequence[str],
    counts: np.ndarray,
    pt: np.ndarray | None,
    size: float,
    *,
    top_k: int = 0,
    num_examples: int | None = None,
    weights: Weights | None = None,
) -> LabelPlan:
    """Same-distribution matcher (with replacement), over the top-k labels by w (0: all); see the module doc."""
    params = {"target_size": float(size), "top_k": int(top_k)}
    return _build("same", label_names, counts, pt, size, num_examples, params, weights=weights)


def elastic(
    label_names: Sequence[str],
    counts: np.ndarray,
    pt: np.ndarray | None,
    size: float,
    *,
    num_examples: int | None = None,
    weights: Weights | None = None,
) -> LabelPlan:
    """Elastic matcher (without replacement, exact size); see the module doc."""
    return _build("elastic", label_names, counts, pt, size, num_examples, {"target_size": float(size)}, weights=weights)


def uniform_top_k(
    label_names: Sequence[str],
    counts: np.ndarray,
    pt: np.ndarray | None,
    size: float,
    *,
    top_k: int = 0,
    num_examples: int | None = None,
    weights: Weights | None = None,
) -> LabelPlan:
    """Uniform over the top-k labels by w (0: all labels with w > 0), with replacement."""
    params = {"target_size": float(size), "top_k": int(top_k)}
    return _build("uniform", label_names, counts, pt, size, num_examples, params, weights=weights)


def reverse(
    label_names: Sequence[str],
    counts: np.ndarray,
    pt: np.ndarray | None,
    size: float,
    *,
    top_k: int = 0,
    num_examples: int | None = None,
    weights: Weights | None = None,
) -> LabelPlan:
    """Same-distribution rates of the top-k labels swapped highest <-> lowest, with replacement."""
    params = {"target_size": float(size), "top_k": int(top_k)}
    return _build("reverse", label_names, counts, pt, size, num_examples, params, weights=weights)


def weighted_source(label_names: Sequence[str], counts: np.ndarray, *, weights: Weights) -> LabelPlan:
    """Every source example once, for training with the loss weighted by w (Ngiam et al. section 4.1)."""
    chosen = np.ones(len(label_names))
    return _build("weighted_loss", label_names, counts, None, 0.0, None, {"chosen": chosen}, weights=weights)


def descendants(hierarchy: dict[str, list[str]], ancestors: Sequence[str]) -> set[str]:
    """The ancestors and everything below them in the label hierarchy (parent -> children)."""
    seen: set[str] = set()
    stack = list(ancestors)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(hierarchy.get(node, ()))
    return seen


def hierarchy_subset(
    label_names: Sequence[str],
    hierarchy: dict[str, list[str]],
    ancestors: Sequence[str],
    counts: np.ndarray,
    *,
    pt: np.ndarray | None = None,
    weights: Weights | None = None,
) -> LabelPlan:
    """Every example of every label under the chosen ancestors, once (Ngiam et al. Table 1).

    On a multi-label source an example belongs to the subset when ANY of its labels is under an
    ancestor: the writer must attribute by `chosen_labels(plan)` (1 on chosen labels, 0 elsewhere),
    so such an example is attributed to a chosen label and kept, with weight 1.
    """
    known = set(label_names) | set(hierarchy) | {c for cs in hierarchy.values() for c in cs}
    missing = [a for a in ancestors if a not in known]
    if missing:
        raise ValueError(f"ancestor label(s) {missing} are not in the label set or hierarchy")
    keep = descendants(hierarchy, ancestors)
    chosen = np.array([name in keep for name in label_names], np.float64)
    if not chosen.any():
        raise ValueError(f"no source label is under the ancestor(s) {list(ancestors)}")
    params = {"chosen": chosen, "ancestors": list(ancestors)}
    return _build("hierarchy", label_names, counts, pt, 0.0, None, params, weights=weights)


def chosen_labels(plan: LabelPlan) -> np.ndarray:
    """1.0 on the labels a subset plan (hierarchy, weighted_loss, entire) takes whole, 0.0 elsewhere."""
    return np.asarray(plan.params["chosen"], np.float64)


def entire_source(label_names: Sequence[str], counts: np.ndarray, *, pt: np.ndarray | None = None) -> LabelPlan:
    """The baseline: every source example once."""
    return _build("entire", label_names, counts, pt, 0.0, None, {"chosen": np.ones(len(label_names))})


def from_planned(
    label_names: Sequence[str],
    counts: np.ndarray,
    planned: np.ndarray,
    *,
    pt: np.ndarray | None = None,
    with_replacement: bool | None = None,
) -> LabelPlan:
    """Wraps per-label planned draws from another method (a baseline); `replan` keeps each label's rate.

    Without `with_replacement`, the plan samples with replacement only if some label needs more draws
    than it has examples.
    """
    counts = np.asarray(counts, np.float64)
    planned = np.asarray(planned, np.float64)
    if planned.shape != counts.shape or np.any(planned < 0):
        raise ValueError("planned must be non-negative, one value per label")
    if np.any((planned > 0) & (counts <= 0)):
        raise ValueError("planned draws for a label without examples")
    rate = np.divide(planned, counts, out=np.zeros_like(planned), where=counts > 0)
    if with_replacement is None:
        with_replacement = bool(np.any(rate > 1.0))
    return _build("given", label_names, counts, pt, 0.0, None, {"rate": rate}, with_replacement)


# ----------------------------------------------------------------------------------------------
# CLI


def load_label_stats(path: str) -> tuple[list[str], np.ndarray, np.ndarray, int | None]:
    """Reads {"label": {"count": c, "pt": p}, ..., optional "num_examples": N}."""
    raw = atomic.read_json(path)
    num_examples = raw.pop("num_examples", None)
    names = list(raw)
    try:
        counts = np.array([float(raw[n]["count"]) for n in names])
        pt = np.array([float(raw[n]["pt"]) for n in names])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: every label needs 'count' and 'pt' ({err})") from err
    return names, counts, pt, num_examples


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selection.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--label_stats", required=True, help='JSON {"label": {"count": c, "pt": p}, ...}')
    parser.add_argument("--size", required=True, type=float, help="desired number of selected examples")
    from selection import methods  # the registry imports this module

    matchers = [m.name for m in map(methods.get, methods.names()) if m.level == "label" and m.sized]
    parser.add_argument("--matcher", required=True, choices=matchers)
    parser.add_argument("--out", required=True, help="plan CSV path")
    parser.add_argument("--top_k", type=int, default=0, help="same/uniform/reverse: labels kept (0: all with w > 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the integer rounding shown in 'draws'")
    args = parser.parse_args(argv)
    try:
        names, counts, pt, n = load_label_stats(args.label_stats)
        method = methods.get(args.matcher)
        params = method.defaults()
        if "top_k" in params:
            params.top_k = args.top_k
        context = methods.PlanContext(
            label_names=names,
            counts=counts,
            num_examples=int(n or counts.sum()),
            hierarchy={},
            weights=weights_lib.ImportanceWeights.compute(names, pt, counts, int(n or counts.sum())),
            size=args.size,
            params=params,
        )
        plan = method.plan(context).plan
        if not isinstance(plan, LabelPlan):
            raise ValueError(f"{args.matcher} selects examples, not labels: no per-label plan to print")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plan.to_csv(args.out)
    draws = plan.draws(args.seed)
    print(json.dumps({**plan.summary(), "integer_draws": int(draws.sum()), "out": args.out}))
    order = np.argsort(-plan.planned)[:10]
    for i in order:
        print(
            f"  {names[i]}: count {int(counts[i])}  w {plan.weight[i]:.4g}  planned {plan.planned[i]:.2f}"
            f"  draws {int(draws[i])}  rate {plan.rate[i]:.2%}  unique {plan.unique[i]:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
