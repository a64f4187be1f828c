"""Figure 2 of Ngiam et al.: transfer accuracy and unique examples of the same-distribution and the
elastic matcher at several sampled dataset sizes (Inception-v3, JFT-like source).

    --config=configs/paper/figure2.py:TARGET,SIZE     e.g. :pets,20000000   (one point of the curves per job)

The figure has five panels (CIFAR-10, FGVC Aircraft, Food-101, Oxford Pets, Stanford Cars); run one
job per (target, size) into its own work dir; `report.csv` of each gives the accuracy and the
select stage's statistics (`selected/<method>.stats.csv`) the unique examples.

TPU pod (v3-256), one point:
    launch/tpu_pod.sh tcpt-v3-256 europe-west4-a v3-256 configs/paper/figure2.py:pets,20000000 \
        gs://YOUR_BUCKET/runs/figure2_pets_20M
One host (8 devices):
    python -m launch.main --config=configs/paper/figure2.py:pets,20000000 --workdir=/data/runs/fig2_pets_20M \
        --config.hardware.devices=8

Estimated wall time per point (dry run, 256 TPU v3 devices): 3 pre-training runs of 2M steps (3.4 h
each; the step budget, not the size, sets it) and 20 fine-tuning runs: 10.5 h.

The paper's findings (read from the figure; its values are not tabulated): as the size grows the same
matcher's accuracy rises and then saturates, the elastic matcher's peaks and then drops, and the
elastic matcher has many more unique examples at large sizes.
"""

from __future__ import annotations

import ml_collections

from configs.paper import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    target_arg, _, size_arg = (arg or "").partition(",")
    target, _, _ = common.parse_arg(target_arg, "pets")
    size = int(size_arg) if size_arg else 20_000_000
    c = common.experiment(
        model="inception_v3",
        target=target,
        source="jft",
        methods_run=("same", "elastic"),
        hardware=common.tpu_v3(256),
    )
    c.selection.size = size
    return c
