"""The sampling and ordering rules of a selected-set write: the one implementation every writer calls.

A write turns a plan into copies of source examples at output positions. Every random choice here is
seeded by the write's seed and a label, shard or position, never by who computes it, so the
in-process multi-process writer (`selection.write`) and the Beam pipeline (`selection.beam_write`)
produce the same bytes from the same plan and seed, whatever their process or worker count:

1. integer draws per label: `LabelPlan.draws(seed)` (re-planned first when the source's attributed
   counts differ from the plan's, `plan_allocation`);
2. each label's draws over the shards holding its examples: a multivariate hypergeometric (without
   replacement) or multinomial (with replacement) draw seeded by (seed, label), `allocate`;
3. within a shard, a (seed, shard)-seeded generator picks the examples: for each label the k
   examples with the smallest random keys, or k uniform draws with replacement, `shard_copies`;
4. copy number g (shards in order, records in order, a record's copies together) goes to output
   position pi(g), pi a seeded Feistel bijection of [0, total): a global shuffle with O(1) state,
   `copy_positions`;
5. output shard k holds positions [bounds[k], bounds[k+1]), sizes differing by at most one,
   `output_bounds`; each selected record is the source record with `image/weight` appended,
   `weighted_record`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from data import records
from selection import plan as plan_lib


def permute(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded bijection of [0, n) applied to x: 4-round Feistel network with cycle walking."""
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    keys = np.random.default_rng([int(seed), 0xFE157E1]).integers(0, 2**63, size=4, dtype=np.uint64)

    def rounds(y: np.ndarray) -> np.ndarray:
        left, right = y >> half, y & mask
        for key in keys:
            z = right ^ key
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
            left, right = right, left ^ (z & mask)
        return (left << half) | right

    y = rounds(np.asarray(x, np.uint64))
    outside = np.flatnonzero(y >= np.uint64(n))
    while len(outside):  # cycle walking: a bijection of [0, 2^bits) restricted to [0, n)
        y[outside] = rounds(y[outside])
        outside = outside[y[outside] >= np.uint64(n)]
    return y.astype(np.int64)


def allocate(
    shard: np.ndarray, label: np.ndarray, count: np.ndarray, draws: np.ndarray, *, seed: int, with_replacement: bool
) -> np.ndarray:
    """Splits each label's integer draws over the shards holding its examples.

    (shard, label, count) lists the non-zero attributed counts; returns the draws of each entry.
    Seeded by (seed, label) only, so every process computes the same allocation.
    """
    order = np.lexsort((shard, label))
    result = np.zeros(len(count), np.int64)
    drawn = np.flatnonzero(draws > 0)
    bounds = np.searchsorted(label[order], np.stack([drawn, drawn + 1]))  # each drawn label's entries
    for y, lo, hi in zip(drawn.tolist(), *bounds.tolist(), strict=True):
        if lo == hi:
            raise ValueError(f"label {y} has {draws[y]} planned draws but no examples in the source")
        entries = order[lo:hi]
        if hi - lo == 1 and (with_replacement or draws[y] <= count[entries[0]]):
            result[entries] = draws[y]  # one shard: the draw is certain (and the label's generator unused)
            continue
        rng = np.random.default_rng([int(seed), 0xA110C, int(y)])
        colors = count[entries].astype(np.int64)
        if with_replacement:
            result[entries] = rng.multinomial(int(draws[y]), colors / colors.sum())
        else:
            result[entries] = rng.multivariate_hypergeometric(colors, int(draws[y]))
    return result


def plan_allocation(
    label_plan: plan_lib.LabelPlan, summaries: Sequence[tuple[np.ndarray, np.ndarray]], seed: int
) -> tuple[np.ndarray, np.ndarray, plan_lib.LabelPlan]:
    """The global allocation from each source shard's attributed label counts, in shard order.

    `summaries[s]` = (labels, counts) of shard s. Returns (COO [shard; label; draws] in shard order,
    copies per shard, the plan realised for the attributed counts).
    """
    num_shards = len(summaries)
    parts = (
        [np.full(len(labels), s, np.int64) for s, (labels, _) in enumerate(summaries)],
        [np.asarray(labels, np.int64) for labels, _ in summaries],
        [np.asarray(counts, np.int64) for _, counts in summaries],
    )
    shard, label, count = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in parts)
    attributed = np.bincount(label, weights=count, minlength=len(label_plan.count))
    if not np.array_equal(attributed, label_plan.count):
        label_plan = plan_lib.replan(label_plan, attributed)
    draws = label_plan.draws(seed)
    entry_draws = allocate(shard, label, count, draws, seed=seed, with_replacement=label_plan.with_replacement)
    totals = np.bincount(shard, weights=entry_draws, minlength=num_shards).astype(np.int64)
    return np.stack([shard, label, entry_draws]), totals, label_plan


def shard_summary(attributed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, counts) of one shard's attributed examples: its input to `plan_allocation`. (`np.unique`'s
    result, by a count instead of a sort: 6x faster.)"""
    counts = np.bincount(attributed[attributed >= 0])
    labels = np.flatnonzero(counts)
    return labels, counts[labels]


def choose_copies(
    attributed: np.ndarray, label_draws: np.ndarray, *, rng: np.random.Generator, with_replacement: bool
) -> np.ndarray:
    """Copies per example of one shard given each label's draws in this shard (vectorised).

    `attributed` is each example's label (-1: none); `label_draws[y]` the draws for label y.
    """
    n = len(attributed)
    groups = np.where(attributed >= 0, attributed, len(label_draws))
    need = np.append(label_draws, 0)
    if with_replacement:
        # stable: radix sort for labels that fit 16 bits (8x faster than on int64), the same order
        order = np.argsort(groups.astype(np.uint16) if len(need) <= 1 << 16 else groups, kind="stable")
        start = np.searchsorted(groups[order], np.arange(len(need)))
        size = np.bincount(groups, minlength=len(need))
        labels = np.repeat(np.arange(len(need)), need)
        if np.any(size[labels] == 0):
            raise ValueError("draws for a label without examples in this shard")
        picks = order[start[labels] + rng.integers(0, size[labels])]
        return np.bincount(picks, minlength=n)
    keys = rng.random(n)
    order = np.lexsort((keys, groups))
    sorted_groups = groups[order]
    rank = np.arange(n) - np.searchsorted(sorted_groups, sorted_groups)
    if np.any(need > np.bincount(groups, minlength=len(need))):
        raise ValueError("more draws than examples for a label in this shard (without replacement)")
    copies = np.zeros(n, np.int64)
    copies[order[rank < need[sorted_groups]]] = 1
    return copies


def shard_copies(
    coo: np.ndarray, shard: int, attributed: np.ndarray, num_labels: int, *, seed: int, with_replacement: bool
) -> np.ndarray:
    """Copies per record of source shard `shard` under the allocation `coo` (`plan_allocation`)."""
    lo, hi = np.searchsorted(coo[0], [shard, shard + 1])  # entries are in shard order
    mine = coo[:, lo:hi]
    label_draws = np.zeros(num_labels, np.int64)
    label_draws[mine[1]] = mine[2]
    rng = np.random.default_rng([int(seed), 0x5E1EC7ED, int(shard)])
    return choose_copies(attributed, label_draws, rng=rng, with_replacement=with_replacement)


def example_copies(ids: Sequence[bytes], example_plan: Mapping[bytes, int]) -> np.ndarray:
    """Copies per record for an example plan (example id -> copies)."""
    return np.array([int(example_plan.get(i, 0)) for i in ids], np.int64)


def copy_positions(copies: np.ndarray, base: int, total: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(record index, output position) of each copy of a shard, sorted by position.

    `base` is the number of copies in the shards before this one, `total` in the whole output.
    """
    record_of_copy = np.repeat(np.arange(len(copies)), copies)
    positions = permute(base + np.arange(int(copies.sum())), total, seed)
    order = np.argsort(positions)
    return record_of_copy[order], positions[order]


def output_bounds(total: int, records_per_shard: int) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, bounds) of the output shards: ceil(total / records_per_shard) shards, sizes within one."""
    num_out = -(-total // records_per_shard)
    sizes = np.full(num_out, total // max(num_out, 1), np.int64)
    sizes[: total - int(sizes.sum())] += 1
    return sizes, np.concatenate([[0], np.cumsum(sizes)])


def weight_suffix(weight: float, labels: list[int] | None = None) -> bytes:
    """A serialized Example holding only `image/weight` (and, under a label remap, `image/label`).

    Appended to a source record it adds the weight without decoding or re-encoding the image:
    protobuf merges repeated message fields, so the parsed record is the source record plus the weight;
    an appended `image/label` replaces the source's labels (a map entry parsed later wins).
    Records share few distinct suffixes (a weight per label), so each is serialized once.
    """
    return _suffix(float(weight), None if labels is None else tuple(int(v) for v in labels))


@functools.lru_cache(maxsize=1 << 16)
def _suffix(weight: float, labels: tuple[int, ...] | None) -> bytes:
    return records.encode_weight_suffix(weight, labels)


def shard_stats(
    attributed: np.ndarray,
    offsets: np.ndarray,
    labels: np.ndarray,
    copies: np.ndarray,
    num_labels: int,
    remap: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """A shard's part of the manifest's realised counts: draws and unique examples per attributed
    label, and copies per carried label (per written label under a `remap`, fine label -> coarse
    label, where a record counts once per coarse label)."""
    has = attributed >= 0
    owner = np.repeat(np.arange(len(copies)), np.diff(offsets))
    written, num_written = labels, num_labels
    if remap is not None:
        num_written = int(remap.max()) + 1 if len(remap) else 0
        pairs = np.unique(owner * num_written + remap[labels])
        owner, written = pairs // num_written, pairs % num_written
    return {
        "draws": np.bincount(attributed[has], weights=copies[has], minlength=num_labels).astype(np.int64),
        "unique": np.bincount(attributed[has], weights=copies[has] > 0, minlength=num_labels).astype(np.int64),
        "label_copies": np.bincount(written, weights=copies[owner], minlength=num_written).astype(np.int64),
    }
