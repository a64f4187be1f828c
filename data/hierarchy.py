"""Label hierarchies (parent name -> child names), as stored in a shard set's manifest.

Sources: a JSON file `{"parent": ["child", ...], ...}`, or for ImageNet the WordNet is-a
relation. tensorflow-datasets ships ImageNet's 1000 WordNet ids offline (the `imagenet2012`
label names, `labels.txt`) but NOT the WordNet hypernym graph, so the ImageNet hierarchy needs
ImageNet's own `wordnet.is_a.txt` (lines "parent_wnid child_wnid"), passed by path.
"""

from __future__ import annotations

import collections
import os

from etils import epath

from data import atomic

Hierarchy = dict[str, list[str]]


def validate(hierarchy: Hierarchy) -> Hierarchy:
    """Checks types and that the graph has no cycle; returns the hierarchy unchanged."""
    if not isinstance(hierarchy, dict):
        raise ValueError("a hierarchy is a JSON object mapping parent -> list of children")
    for parent, children in hierarchy.items():
        if (
            not isinstance(parent, str)
            or not isinstance(children, list)
            or not all(isinstance(c, str) for c in children)
        ):
            raise ValueError(f"hierarchy entry {parent!r}: expected a list of child names")
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            raise ValueError(f"hierarchy has a cycle: {' -> '.join(path + [node])}")
        state[node] = 1
        for child in hierarchy.get(node, []):
            visit(child, path + [node])
        state[node] = 2

    for node in hierarchy:
        visit(node, [])
    return hierarchy


def load_json(path: str) -> Hierarchy:
    """Reads and validates a parent -> children JSON file."""
    return validate(atomic.read_json(path))


def descendants(hierarchy: Hierarchy, node: str) -> set[str]:
    """All nodes below `node` (not including it)."""
    out: set[str] = set()
    stack = list(hierarchy.get(node, []))
    while stack:
        child = stack.pop()
        if child not in out:
            out.add(child)
            stack.extend(hierarchy.get(child, []))
    return out


def labels_under(hierarchy: Hierarchy, node: str, label_names: list[str]) -> list[int]:
    """Indices of the labels that are `node` itself or below it (a hierarchy subset of labels)."""
    below = descendants(hierarchy, node) | {node}
    return [i for i, name in enumerate(label_names) if name in below]


def ancestors(hierarchy: Hierarchy, *nodes: str) -> set[str]:
    """All nodes above any of `nodes`."""
    parents = collections.defaultdict(set)
    for parent, children in hierarchy.items():
        for child in children:
            parents[child].add(parent)
    out: set[str] = set()
    stack = [p for node in nodes for p in parents[node]]
    while stack:
        p = stack.pop()
        if p not in out:
            out.add(p)
            stack.extend(parents[p])
    return out


def imagenet_wnids() -> list[str]:
    """ImageNet-1k WordNet ids in label order, from the copy tensorflow-datasets ships."""
    import tensorflow_datasets as tfds  # heavy import, only needed here

    path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", "labels.txt")
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def wordnet_hierarchy(label_wnids: list[str], is_a_path: str) -> Hierarchy:
    """Parent -> children restricted to the labels and their WordNet ancestors.

    `is_a_path`: ImageNet's `wordnet.is_a.txt`, one "parent child" wnid pair per line.
    """
    full: Hierarchy = collections.defaultdict(list)
    for line_no, line in enumerate(epath.Path(is_a_path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{is_a_path}:{line_no}: expected 'parent child', got {line.strip()!r}")
        full[parts[0]].append(parts[1])
    keep = set(label_wnids) | ancestors(full, *label_wnids)
    return validate(
        {
            p: sorted(c for c in children if c in keep)
            for p, children in sorted(full.items())
            if p in keep and any(c in keep for c in children)
        }
    )
