"""A Table-3-shaped grid on the embedded data: rows = pre-training choices, columns = targets.

    python -m launch.main --config=configs/grid.py:tiny --workdir=workdirs/grid

Two targets of the embedded builder, the 25 lowercase Greek letters and the 33 lowercase Cyrillic
letters (each in held-out bold-italic fonts, as the demo's target), share one source and one
entire-source model; each gets its own weights pass, selection (same and elastic matchers),
selected pre-training and fine-tuning; `grid.md` / `grid.csv` hold top-1 per cell and Kornblith et
al.'s logit-averaged mean (launch/grid.py). The dedup stage is off so that the entire-source model
is the same for both targets. `:tiny` is the flow at the tiny demo's budgets (a few minutes on 2
cores); without it, the demo's budgets.
"""

from __future__ import annotations

import ml_collections

from configs import demo
from launch import grid

TARGETS = ("greek_lower", "cyrillic_lower")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = demo.get_config(arg)
    c.dedup.enabled = False  # one entire-source model for every target
    if arg == "tiny":
        c.data.embedded.source.groups += ",cyrillic_lower"  # something related to the second target
    c.grid = grid.grid_config(TARGETS)
    return c
