"""Huh et al. (2016) pre-training subsets: coarser label sets, fewer classes, fewer images per class.

Which of their experiments each function reproduces:
  - `depth_coarsening`: top-down clustering (section 5.1, Table 1): every label is replaced by its
    ancestor at a fixed distance from the root (their 127-class set; 10 and 2 at smaller depths);
    labels shallower than that depth keep their own name (65 of their 127 classes were original).
  - `bottom_up_coarsening` / `bottom_up_label_sets`: bottom-up clustering (Figure 3, section 5.1,
    Figure 2): each iteration merges the leaves sharing a parent into that parent, but only where
    all of the parent's children are leaves, so an unbalanced tree keeps some fine labels for
    several iterations (their 918, 753, 486, 79, 9-class sets came from 18 such taxonomies).
  - `images_per_class`: N random images per class (section 4, Figure 1: 50..1000 per class;
    Table 2 "more classes" row).
  - `random_classes`: a uniformly random subset of the classes with all their images (Table 2
    "more examples/class" row; section 6 random split). Table 2's fixed-budget rows are
    `images_per_class(random_classes(...), n)` or `images_per_class(counts, n)`.
  - `minimal_split` / `random_split` (section 6, Figures 7-9): two halves of the labels that share
    no ancestor down to a depth, or drawn at random.
  - `target_overlap` (section 6, Table 9): the source labels that are the target's, to remove.
  - `subset`: the pipeline's `huh` method, all of the above as one recipe.
The coarsenings keep every image and change its label: they return a `LabelRemap` (fine label index
-> coarse label index) for whoever writes or reads the records. The others return per-label planned
counts (expected draws per source label, never above the label's count, so no image repeats).

The hierarchy is the manifest's: parent name -> list of child names; it must be a forest (one parent
per node). Labels absent from it are roots of their own.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabelRemap:
    """A coarser label set: `names[index[i]]` is the new label of fine label i."""

    names: list[str]
    index: np.ndarray

    def record_labels(self, fine_labels: np.ndarray) -> list[int]:
        """One record's coarse labels, in order, each once (two fine labels may merge into one)."""
        return list(dict.fromkeys(int(v) for v in self.index[np.asarray(fine_labels, np.int64)]))

    def counts(self, fine_counts: np.ndarray) -> np.ndarray:
        """Per-coarse-label image counts (for multi-label data an image may count under one label twice)."""
        return np.bincount(self.index, weights=np.asarray(fine_counts, np.float64), minlength=len(self.names))


def parent_map(hierarchy: dict[str, list[str]]) -> dict[str, str]:
    """Child -> parent; refuses a node with two parents or a cycle, where 'ancestor' is ambiguous."""
    parents: dict[str, str] = {}
    for parent, children in hierarchy.items():
        for child in children:
            if child in parents and parents[child] != parent:
                raise ValueError(f"{child!r} has two parents ({parents[child]!r}, {parent!r}): need a tree")
            parents[child] = parent
    for node in parents:
        seen = {node}
        while node in parents:
            node = parents[node]
            if node in seen:
                raise ValueError(f"cycle in hierarchy through {node!r}")
            seen.add(node)
    return parents


def _path_from_root(label: str, parents: dict[str, str]) -> list[str]:
    path = [label]
    while path[-1] in parents:
        path.append(parents[path[-1]])
    return path[::-1]


def _remap(label_names: list[str], assigned: list[str]) -> LabelRemap:
    """Coarse names in order of first appearance over the fine labels (deterministic)."""
    names = list(dict.fromkeys(assigned))
    position = {name: i for i, name in enumerate(names)}
    return LabelRemap(names, np.array([position[a] for a in assigned], dtype=np.int64))


def depth_coarsening(label_names: list[str], hierarchy: dict[str, list[str]], depth: int) -> LabelRemap:
    """Huh et al.'s top-down label set: each label -> its ancestor at `depth` (roots are depth 0)."""
    if depth < 0:
        raise ValueError("depth must be >= 0")
    parents = parent_map(hierarchy)
    return _remap(label_names, [_ancestor_at(label, parents, depth) for label in label_names])


def _merge_step(assigned: list[str], parents: dict[str, str]) -> list[str]:
    """One bottom-up iteration over the tree pruned to the current labels and their ancestors."""
    current = set(assigned)
    children: dict[str, set[str]] = {}
    for node in current:
        while node in parents:
            children.setdefault(parents[node], set()).add(node)
            node = parents[node]
    leaves = {node for node in current if node not in children}
    collapsible = {p for p, kids in children.items() if kids <= leaves}
    return [parents[a] if parents.get(a) in collapsible else a for a in assigned]


def bottom_up_coarsening(label_names: list[str], hierarchy: dict[str, list[str]], iterations: int) -> LabelRemap:
    """Huh et al.'s Figure 3 label set after `iterations` merges (0 = the original labels)."""
    if iterations < 0:
        raise ValueError("iterations must be >= 0")
    parents = parent_map(hierarchy)
    assigned = list(label_names)
    for _ in range(iterations):
        assigned = _merge_step(assigned, parents)
    return _remap(label_names, assigned)


def bottom_up_label_sets(label_names: list[str], hierarchy: dict[str, list[str]]) -> list[LabelRemap]:
    """Every bottom-up taxonomy, finest first, until only roots remain (Huh et al. found 18 for ImageNet)."""
    parents = parent_map(hierarchy)
    assigned = list(label_names)
    sets = [_remap(label_names, assigned)]
    while True:
        merged = _merge_step(assigned, parents)
        if merged == assigned:
            return sets
        assigned = merged
        sets.append(_remap(label_names, assigned))


def images_per_class(label_counts: np.ndarray, per_class: int) -> np.ndarray:
    """Planned counts with at most `per_class` images of each label (Huh et al. section 4)."""
    if per_class < 0:
        raise ValueError("per_class must be >= 0")
    return np.minimum(np.asarray(label_counts, dtype=np.float64), float(per_class))


def random_classes(label_counts: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Planned counts keeping all images of `num_classes` labels drawn uniformly (among non-empty ones)."""
    counts = np.asarray(label_counts, dtype=np.float64)
    nonempty = np.flatnonzero(counts > 0)
    if not 0 < num_classes <= nonempty.size:
        raise ValueError(f"num_classes={num_classes} must be in [1, {nonempty.size}] (non-empty labels)")
    chosen = np.random.default_rng(seed).choice(nonempty, size=num_classes, replace=False)
    planned = np.zeros_like(counts)
    planned[chosen] = counts[chosen]
    return planned


def _ancestor_at(label: str, parents: dict[str, str], depth: int) -> str:
    path = _path_from_root(label, parents)
    return path[min(depth, len(path) - 1)]


def minimal_split(label_names: list[str], hierarchy: dict[str, list[str]], depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Huh et al.'s minimal split (section 6, Figure 7): label indices (A, B) such that no label in A
    shares its ancestor at `depth` with a label in B. Whole depth-`depth` subtrees go to one side,
    largest first to the side with fewer labels (ties by name), so the sides are as even as the tree
    allows; deterministic."""
    if depth < 0:
        raise ValueError("depth must be >= 0")
    parents = parent_map(hierarchy)
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(label_names):
        groups.setdefault(_ancestor_at(label, parents, depth), []).append(i)
    if len(groups) < 2:
        raise ValueError(f"every label shares its depth-{depth} ancestor: no minimal split exists")
    sides: tuple[list[int], list[int]] = ([], [])
    for name in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        smaller = 0 if len(sides[0]) <= len(sides[1]) else 1
        sides[smaller].extend(groups[name])
    return np.array(sorted(sides[0]), np.int64), np.array(sorted(sides[1]), np.int64)


def random_split(num_labels: int, size_a: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Huh et al.'s random split: `size_a` labels drawn uniformly for A, the rest B (they matched the
    minimal split's sizes)."""
    if not 0 < size_a < num_labels:
        raise ValueError(f"split size {size_a} must be in [1, {num_labels - 1}]")
    order = np.random.default_rng([int(seed), 0x5B117]).permutation(num_labels)
    return np.sort(order[:size_a]), np.sort(order[size_a:])


def target_overlap(
    label_names: list[str],
    hierarchy: dict[str, list[str]],
    target_label_names: list[str],
    target_hierarchy: dict[str, list[str]] | None = None,
    extra: tuple[str, ...] = (),
) -> np.ndarray:
    """Mask of source labels that overlap the target (Huh et al.'s PASCAL-removed ImageNet): a source
    label named like a target label (case-insensitive), or below a source node so named, or below a
    node that is a direct parent of target labels in the target's hierarchy, or below a name in
    `extra` (labels or ancestors the user names)."""
    target_names = {n.lower() for n in target_label_names}
    target_set = set(target_label_names)
    for parent, children in (target_hierarchy or {}).items():
        if target_set.intersection(children):
            target_names.add(parent.lower())
    target_names.update(n.lower() for n in extra)
    parents = parent_map(hierarchy)
    return np.array(
        [any(node.lower() in target_names for node in _path_from_root(label, parents)) for label in label_names], bool
    )


def subset(
    label_names: list[str],
    hierarchy: dict[str, list[str]],
    counts: np.ndarray,
    *,
    per_class: int = 0,
    num_classes: int = 0,
    coarsen: str = "none",
    coarsen_depth: int = 1,
    coarsen_iterations: int = 1,
    split: str = "none",
    split_depth: int = 1,
    split_part: str = "A",
    remove_target_overlap: bool = False,
    remove_labels: tuple[str, ...] = (),
    target_label_names: list[str] | None = None,
    target_hierarchy: dict[str, list[str]] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, LabelRemap | None]:
    """Planned draws per source label (each image at most once) and the coarse label set to train on.

    In order: remove target-overlapping labels (and `remove_labels`), keep one side of a random or
    minimal split, keep `num_classes` random labels (0: all), at most `per_class` images per label
    (0: all); then `coarsen` ("none" | "depth" | "bottom_up") gives the label set the selected
    images are trained on.
    """
    counts = np.asarray(counts, np.float64)
    keep = counts > 0
    if remove_target_overlap or remove_labels:
        overlap = target_overlap(
            label_names,
            hierarchy,
            list(target_label_names or []) if remove_target_overlap else [],
            target_hierarchy if remove_target_overlap else None,
            tuple(remove_labels),
        )
        keep &= ~overlap
    if split not in ("none", "random", "minimal"):
        raise ValueError(f"split must be 'none', 'random' or 'minimal', got {split!r}")
    if split_part not in ("A", "B"):
        raise ValueError(f"split_part must be 'A' or 'B', got {split_part!r}")
    if split != "none":
        a, b = minimal_split(label_names, hierarchy, split_depth)
        if split == "random":
            a, b = random_split(len(label_names), len(a), seed)
        side = np.zeros(len(label_names), bool)
        side[a if split_part == "A" else b] = True
        keep &= side
    planned = np.where(keep, counts, 0.0)
    if num_classes:
        planned = random_classes(planned, num_classes, seed)
    if per_class:
        planned = images_per_class(planned, per_class)
    if not planned.any():
        raise ValueError("the Huh subset is empty: every label was removed")
    if coarsen == "none":
        return planned, None
    if coarsen == "depth":
        return planned, depth_coarsening(label_names, hierarchy, coarsen_depth)
    if coarsen == "bottom_up":
        return planned, bottom_up_coarsening(label_names, hierarchy, coarsen_iterations)
    raise ValueError(f"coarsen must be 'none', 'depth' or 'bottom_up', got {coarsen!r}")
