"""Planning at JFT scale from label counts alone: 18,291 labels, 300M examples, an 80M selection.

Times every matcher's plan and its exact integer draws, then the writer's global allocation of those
draws over source shards (the only planning step whose size grows with the corpus: one entry per
non-zero (shard, label) count), and reports peak RSS.

  .venv/bin/python benchmarks/selection_plan.py [--shards=1024] [--labels=18291]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from selection import allocation, methods  # noqa: E402
from selection import plan as plan_lib  # noqa: E402
from selection import weights as weights_lib  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", type=int, default=18_291)
    parser.add_argument("--examples", type=int, default=300_000_000)
    parser.add_argument("--labels_per_example", type=float, default=1.26)
    parser.add_argument("--size", type=int, default=80_000_000)
    parser.add_argument("--shards", type=int, default=1024)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # heavy-tailed label frequencies, as in a web-scale multi-label corpus
    raw = rng.pareto(1.0, size=args.labels) + 1e-3
    raw_counts = np.maximum(1, (raw / raw.sum() * args.examples * args.labels_per_example)).astype(np.int64)
    attributed = np.maximum(1, (raw_counts / args.labels_per_example)).astype(np.int64)
    pt = rng.dirichlet(np.full(args.labels, 0.05))
    names = [f"label{i}" for i in range(args.labels)]
    print(
        f"labels {args.labels}, examples {args.examples:,}, label occurrences {raw_counts.sum():,}, "
        f"selection {args.size:,}"
    )

    w = weights_lib.ImportanceWeights.compute(names, pt, raw_counts, args.examples)

    def make_plan(matcher: str, top_k: int) -> plan_lib.LabelPlan:
        method = methods.get(matcher)
        params = method.defaults()
        if "top_k" in params:
            params.top_k = top_k
        plan = method.plan(methods.PlanContext(names, raw_counts, args.examples, {}, w, args.size, params)).plan
        assert isinstance(plan, plan_lib.LabelPlan), matcher
        return plan

    for matcher in ("same", "elastic", "uniform", "reverse"):
        start = time.perf_counter()
        plan = make_plan(matcher, 4000)
        planned = time.perf_counter()
        plan = plan_lib.replan(plan, attributed)
        draws = plan.draws(0)
        done = time.perf_counter()
        assert draws.sum() == args.size
        print(
            f"  {matcher:8s} plan {1e3 * (planned - start):7.2f} ms, replan on attributed counts + exact "
            f"integer draws {1e3 * (done - planned):7.2f} ms, expected unique {plan.unique.sum():,.0f}"
        )

    # per-shard attributed counts: every label's examples spread over the shards
    start = time.perf_counter()
    per_shard = rng.multinomial(attributed, np.full(args.shards, 1.0 / args.shards))  # [labels, shards]
    label, shard = np.nonzero(per_shard)
    count = per_shard[label, shard]
    del per_shard
    print(
        f"simulated {args.shards} shards: {len(count):,} non-zero (shard, label) counts "
        f"in {time.perf_counter() - start:.1f} s"
    )
    for matcher in ("same", "elastic"):
        plan = plan_lib.replan(make_plan(matcher, 0), attributed)
        draws = plan.draws(0)
        start = time.perf_counter()
        entry = allocation.allocate(shard, label, count, draws, seed=0, with_replacement=plan.with_replacement)
        seconds = time.perf_counter() - start
        assert entry.sum() == args.size and (plan.with_replacement or np.all(entry <= count))
        print(f"  allocation over shards ({matcher}): {seconds:.2f} s")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
