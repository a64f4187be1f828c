"""Selection plans: the appendix's worked example, convergence to Pt, elastic exactness, other matchers, CLI."""

import csv
import json
import tracemalloc

import numpy as np
import pytest
from scipy import stats as scipy_stats

from selection import methods
from selection import plan as plan_lib
from selection import weights as weights_lib

NAMES = ["A", "B", "C"]
COUNTS = np.array([10, 40, 50])
PT = np.array([0.5, 0.3, 0.2])


def test_worked_example_same_distribution():
    plan = plan_lib.same_distribution(NAMES, COUNTS, PT, 30)
    np.testing.assert_allclose(plan.weight, [5, 0.75, 0.4])
    np.testing.assert_allclose(plan.planned, [15, 9, 6])
    assert plan.with_replacement and plan.draws(0).tolist() == [15, 9, 6]


def test_worked_example_elastic():
    plan = plan_lib.elastic(NAMES, COUNTS, PT, 30)
    assert plan.planned.tolist() == [10.0, 12.0, 8.0]
    assert not plan.with_replacement and plan.unique.tolist() == [10.0, 12.0, 8.0]
    for seed in range(5):
        assert plan.draws(seed).tolist() == [10, 12, 8]


def _random_problem(seed: int, labels: int = 400):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5000, size=labels)
    counts[rng.random(labels) < 0.1] = 0  # some labels have no source example: excluded
    pt = rng.dirichlet(np.full(labels, 0.3))
    return [f"l{i}" for i in range(labels)], counts, pt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_distribution_draws_converge_to_pt(seed):
    names, counts, pt = _random_problem(seed)
    size = 1_000_003
    draws = plan_lib.same_distribution(names, counts, pt, size).draws(seed)
    assert draws.sum() == size and np.all(draws[counts == 0] == 0)
    target = np.where(counts > 0, pt, 0.0)
    target /= target.sum()  # Pt restricted to labels that exist in the source
    expected = size * target
    # each label is within one draw of size * Pt: a tolerance no wrong distribution meets by accident
    assert np.max(np.abs(draws - expected)) < 1.0
    assert _chi_square_pvalue(draws, expected) > 0.99
    # negative control: the same tests reject the source's own label distribution and a shuffled Pt
    for wrong in (counts / counts.sum(), np.random.default_rng(seed).permutation(target)):
        assert np.max(np.abs(draws - size * wrong)) > 100
        assert _chi_square_pvalue(draws, size * wrong) < 1e-6


def _chi_square_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's test, labels expected fewer than 5 times pooled into one bin (the usual validity rule)."""
    small = expected < 5
    obs, exp = observed[~small], expected[~small]
    if expected[small].sum() > 0:
        obs, exp = np.append(obs, observed[small].sum()), np.append(exp, expected[small].sum())
    return float(scipy_stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_elastic_never_repeats_and_hits_the_size(seed):
    names, counts, pt = _random_problem(seed)
    plan0 = plan_lib.same_distribution(names, counts, pt, 1)
    available = counts[plan0.weight > 0].sum()
    size = int(np.random.default_rng(seed).integers(available // 10, available))
    plan = plan_lib.elastic(names, counts, pt, size)
    assert np.all(plan.planned <= counts) and plan.planned.sum() == pytest.approx(size)
    draws = plan.draws(seed)
    assert draws.sum() == size and np.all(draws <= counts)
    # water-filling: exhausted labels have the largest w; the others keep rates proportional to w
    exhausted = (plan.planned >= counts) & (counts > 0) & (plan.weight > 0)
    open_ = (plan.planned < counts) & (plan.weight > 0)
    assert exhausted.any() and open_.any()
    assert plan.weight[exhausted].min() >= plan.weight[open_].max()
    ratio = plan.rate[open_] / plan.weight[open_]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    with pytest.raises(ValueError, match="exceeds"):
        plan_lib.elastic(names, counts, pt, available + 1)


def test_uniform_and_reverse():
    names, counts, pt = _random_problem(4, labels=50)
    uniform = plan_lib.uniform_top_k(names, counts, pt, 1000, top_k=10)
    top = np.argsort(-uniform.weight)[:10]
    np.testing.assert_allclose(uniform.planned[top], 100.0)
    assert uniform.planned.sum() == pytest.approx(1000) and np.count_nonzero(uniform.planned) == 10
    same = plan_lib.same_distribution(names, counts, pt, 1000)
    rev = plan_lib.reverse(names, counts, pt, 1000, top_k=10)
    assert rev.planned.sum() == pytest.approx(1000) and np.count_nonzero(rev.planned) == 10
    # the highest label now has the lowest's rate and vice versa (up to the common rescaling)
    scale = rev.rate[top[0]] / same.rate[top[-1]]
    np.testing.assert_allclose(rev.rate[top], same.rate[top[::-1]] * scale, rtol=1e-9)


def test_hierarchy_subset_and_entire_source():
    names = ["car", "truck", "sparrow", "eagle", "rock"]
    hierarchy = {"vehicle": ["car", "truck"], "animal": ["bird"], "bird": ["sparrow", "eagle"]}
    counts = np.array([5, 3, 2, 4, 9])
    plan = plan_lib.hierarchy_subset(names, hierarchy, ["animal"], counts)
    assert plan.planned.tolist() == [0, 0, 2, 4, 0] and not plan.with_replacement
    assert plan_lib.entire_source(names, counts).planned.tolist() == counts.tolist()
    with pytest.raises(ValueError, match="not in the label set"):
        plan_lib.hierarchy_subset(names, hierarchy, ["plant"], counts)


def test_replan_keeps_recipe_for_attributed_counts():
    plan = plan_lib.elastic(NAMES, COUNTS, PT, 30)
    attributed = np.array([10, 30, 40])  # multi-label source: fewer examples attributed to B and C
    again = plan_lib.replan(plan, attributed)
    assert again.size == pytest.approx(30) and np.all(again.planned <= attributed)
    np.testing.assert_allclose(again.weight, plan.weight)
    np.testing.assert_array_equal(again.raw_count, COUNTS)


def test_full_scale_label_count_plan_stays_label_level():
    """JFT scale (18,291 labels, 300M examples, 80M drawn): every matcher plans per label. The memory it
    allocates shows it (an array per drawn example would be 640 MB at least); its speed is measured in
    benchmarks/selection_plan.py, not here."""
    rng = np.random.default_rng(0)
    labels = 18_291
    counts = (rng.pareto(1.2, size=labels) * 2000 + 1).astype(np.int64)
    counts = (counts * (300e6 * 1.26 / counts.sum())).astype(np.int64) + 1
    pt = rng.dirichlet(np.full(labels, 0.05))
    names = [str(i) for i in range(labels)]
    tracemalloc.start()
    try:
        w = weights_lib.ImportanceWeights.compute(names, pt, counts, 300_000_000)
        for matcher in ("same", "elastic", "uniform", "reverse"):
            params = methods.get(matcher).defaults()
            if "top_k" in params:
                params.top_k = 4000
            context = methods.PlanContext(names, counts, 300_000_000, {}, w, 80_000_000, params)
            plan = methods.get(matcher).plan(context).plan
            assert isinstance(plan, plan_lib.LabelPlan) and plan.draws(0).sum() == 80_000_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_cli_writes_plan_csv(tmp_path, capsys):
    stats = tmp_path / "stats.json"
    label_stats = {n: {"count": int(c), "pt": float(p)} for n, c, p in zip(NAMES, COUNTS, PT, strict=True)}
    stats.write_text(json.dumps(label_stats))
    out = tmp_path / "plan.csv"
    assert plan_lib.main([f"--label_stats={stats}", "--size=30", "--matcher=elastic", f"--out={out}"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {"label", "count", "pt", "ps", "weight", "planned", "unique"} <= set(rows[0])
    assert [float(r["planned"]) for r in rows] == [10, 12, 8]
    assert '"matcher": "elastic"' in capsys.readouterr().out
    assert plan_lib.main([f"--label_stats={stats}", "--size=1000", "--matcher=elastic", f"--out={out}"]) == 2
