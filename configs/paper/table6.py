"""Table 6 of Ngiam et al.: Oxford-IIIT Pets from JFT-like subsets of the same size (80M) drawn from the
top 4,000 matched labels with three distributions: Same (Pt / Ps), Uniform over those labels, Reverse
(the sampling rates of the highest and lowest labels swapped).

TPU pod (v3-256):
    launch/tpu_pod.sh tcpt-v3-256 europe-west4-a v3-256 configs/paper/table6.py gs://YOUR_BUCKET/runs/table6
One host (8 devices):
    python -m launch.main --config=configs/paper/table6.py --workdir=/data/runs/table6 --config.hardware.devices=8

Estimated wall time (dry run, 256 TPU v3 devices): 4 pre-training runs of 2M steps at batch 1024
(3.4 h each) and 25 fine-tuning runs (0.5 min each): 13.9 h.

The paper's numbers (mean per-class accuracy on Pets; unique examples in the 80M set):
    Same     14.9M unique   97.0
    Uniform  54.7M unique   95.3
    Reverse  10.4M unique   84.9
"""

from __future__ import annotations

import ml_collections

from configs.paper import common

TOP_LABELS = 4000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = common.experiment(
        model="inception_v3",
        target="pets",
        source="jft",
        methods_run=("same", "uniform", "reverse"),
        hardware=common.tpu_v3(256),
    )
    for method in c.selection.methods:
        c.selection[method].top_k = TOP_LABELS
    return c
