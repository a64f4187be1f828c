"""Several source corpora merged into one label space: Cui et al.'s ImageNet + iNat, Chakraborty et
al.'s POIC (Places + OpenImages + ImageNet + COCO).

`data.source.kind = "merged"` with `data.source.parts` = named side configs (any other kind); the
prepare stage lists every part (in name order, as the config keeps them) and converts their
concatenation once, like any other source. Labels
of the same name are one label (`prefix_labels=False`: ImageNet's and iNat's "bald eagle" become one
class), or every part keeps its own (`prefix_labels=True`: "inat/bald eagle"). Example ids become
"<part>/<id>", so they stay unique across parts; the label hierarchy is the parts' hierarchies, and
with `prefix_labels` each part's top-level labels go under a root named after the part (Huh et al.'s
subsets and the hierarchy method can then take whole corpora).
"""

from __future__ import annotations

import numpy as np

from data import prepare, records


class MergedListing(prepare.Listing):
    """The parts' examples one after another, their labels mapped into the merged label space."""

    def __init__(
        self,
        parts: list[tuple[str, prepare.Listing, dict[str, list[str]] | None]],
        *,
        prefix_labels: bool,
    ):
        if not parts:
            raise ValueError("a merged source needs at least one part")
        self.parts = [(name, listing) for name, listing, _ in parts]
        self.prefix_labels = prefix_labels
        names: dict[str, int] = {}
        self._maps = []
        for part, listing, _ in parts:
            mapping = [names.setdefault(self._name(part, label), len(names)) for label in listing.label_names]
            self._maps.append(np.array(mapping, np.int64))
        self.label_names = list(names)
        self._starts = np.cumsum([0] + [len(listing) for _, listing in self.parts])
        self.hierarchy = self._merged_hierarchy(parts)
        self.prepared_from = {"merged": {part: listing.prepared_from for part, listing in self.parts}}

    def _name(self, part: str, label: str) -> str:
        return f"{part}/{label}" if self.prefix_labels else label

    def _merged_hierarchy(self, parts) -> dict[str, list[str]]:
        tree: dict[str, list[str]] = {}
        for part, listing, hierarchy in parts:
            hierarchy = hierarchy or {}
            for parent, children in hierarchy.items():
                siblings = tree.setdefault(self._name(part, parent), [])
                siblings.extend(c for c in (self._name(part, c) for c in children) if c not in siblings)
            if self.prefix_labels:  # the part's roots under a node named after it
                below = {c for children in hierarchy.values() for c in children}
                roots = [n for n in dict.fromkeys([*hierarchy, *listing.label_names]) if n not in below]
                tree[part] = [self._name(part, r) for r in roots]
        return tree

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} out of range [0, {len(self)})")
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return k, int(index - self._starts[k])

    def key(self, index: int) -> tuple[tuple[int, ...], str]:
        k, local = self._locate(index)
        labels, example_id = self.parts[k][1].key(local)
        return tuple(int(self._maps[k][y]) for y in labels), f"{self.parts[k][0]}/{example_id}"

    def example(self, index: int) -> records.Example:
        k, local = self._locate(index)
        part, listing = self.parts[k]
        e = listing.example(local)
        labels = tuple(dict.fromkeys(int(self._maps[k][y]) for y in e.labels))
        return records.Example(e.image, labels, part.encode() + b"/" + e.example_id, e.weight)
