"""AmoebaNet cell genotypes as data (Real et al. 2018; tensorflow/tpu `model_specs.py`).

A cell spec lists 10 operations, the hidden-state index each one reads, and a "used" flag per
state (2 inputs + 5 combinations); states whose flag is 0 are concatenated into the output.
Adding an architecture is adding a table entry.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CellSpec:
    operations: tuple[str, ...]
    hiddenstate_indices: tuple[int, ...]
    used_hiddenstates: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.operations) != 10 or len(self.hiddenstate_indices) != 10 or len(self.used_hiddenstates) != 7:
            raise ValueError("a cell has 10 operations, 10 state indices and 7 used flags")
        for i, index in enumerate(self.hiddenstate_indices):
            if not 0 <= index < 2 + i // 2:
                raise ValueError(f"operation {i} reads state {index}, which does not exist yet")

    @property
    def num_outputs(self) -> int:
        """How many states the output concatenates (the cell's channel multiple)."""
        return self.used_hiddenstates.count(0)


@dataclasses.dataclass(frozen=True)
class Genotype:
    normal: CellSpec
    reduction: CellSpec


GENOTYPES: dict[str, Genotype] = {
    "amoeba_net_a": Genotype(
        normal=CellSpec(
            ("avg_pool_3x3", "max_pool_3x3", "separable_3x3_2", "none", "none",
             "avg_pool_3x3", "separable_3x3_2", "separable_5x5_2", "avg_pool_3x3", "separable_3x3_2"),
            (0, 0, 1, 1, 0, 1, 0, 2, 5, 0),
            (1, 0, 1, 0, 0, 1, 0),
        ),
        reduction=CellSpec(
            ("separable_3x3_2", "avg_pool_3x3", "max_pool_3x3", "separable_7x7_2", "max_pool_3x3",
             "max_pool_3x3", "separable_3x3_2", "1x7_7x1", "avg_pool_3x3", "separable_7x7_2"),
            (1, 0, 0, 2, 1, 0, 4, 0, 1, 0),
            (1, 1, 0, 0, 0, 0, 0),
        ),
    ),
    "amoeba_net_b": Genotype(
        normal=CellSpec(
            ("1x1", "max_pool_3x3", "none", "separable_3x3_2", "1x1",
             "separable_3x3_2", "1x1", "none", "avg_pool_3x3", "1x1"),
            (1, 1, 1, 0, 1, 0, 2, 2, 1, 5),
            (0, 1, 1, 0, 0, 1, 0),
        ),
        reduction=CellSpec(
            ("max_pool_2x2", "max_pool_3x3", "none", "3x3", "dil_2_separable_5x5_2",
             "max_pool_3x3", "none", "separable_3x3_2", "avg_pool_3x3", "1x1"),
            (0, 0, 2, 1, 2, 2, 3, 1, 4, 3),
            (1, 1, 1, 1, 1, 0, 0),
        ),
    ),
    "amoeba_net_d": Genotype(
        normal=CellSpec(
            ("1x1", "max_pool_3x3", "none", "1x7_7x1", "1x1",
             "1x7_7x1", "max_pool_3x3", "none", "avg_pool_3x3", "1x1"),
            (1, 1, 1, 0, 0, 0, 2, 2, 1, 5),
            (0, 1, 1, 0, 0, 1, 0),
        ),
        reduction=CellSpec(
            ("max_pool_2x2", "max_pool_3x3", "none", "3x3", "1x7_7x1",
             "max_pool_3x3", "none", "max_pool_2x2", "avg_pool_3x3", "1x1"),
            (0, 0, 2, 1, 2, 2, 3, 1, 2, 3),
            (1, 1, 1, 1, 0, 0, 0),
        ),
    ),
}  # fmt: skip
