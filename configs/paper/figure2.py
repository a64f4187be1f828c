"""Figure 2 of Ngiam et al.: transfer accuracy and unique examples of the same-distribution and the
elastic matcher at several sampled dataset sizes (Inception-v3, JFT-like source).

    --config=configs/paper/figure2.py:TARGET[,SIZE,SIZE,...]   e.g. :pets  or  :cars,2000000,20000000

One job per target: one source model and one w, then each matcher's set written and pre-trained at
every size (`selection.sizes`, runs `same@<size>`); the report draws accuracy against size
(`accuracy_vs_size.png`) and the select statistics give the unique examples. The figure has five
panels (CIFAR-10, FGVC Aircraft, Food-101, Oxford Pets, Stanford Cars).

TPU pod (v3-256):
    launch/tpu_pod.sh tcpt-v3-256 europe-west4-a v3-256 configs/paper/figure2.py:pets gs://YOUR_BUCKET/runs/figure2_pets
One host (8 devices):
    python -m launch.main --config=configs/paper/figure2.py:pets --workdir=/data/runs/figure2_pets \
        --config.hardware.devices=8

Estimated wall time (dry run, 256 TPU v3 devices, the default six sizes): 13 pre-training runs of 2M
steps (3.4 h each; the step budget, not the size, sets it) and 70 fine-tuning runs (0.5 min each):
about 45 h (1.9 days).

The paper's findings (read from the figure; its values are not tabulated): as the size grows the same
matcher's accuracy rises and then saturates, the elastic matcher's peaks and then drops, and the
elastic matcher has many more unique examples at large sizes.
"""

from __future__ import annotations

import ml_collections

from configs.paper import common

SIZES = (2_000_000, 5_000_000, 10_000_000, 20_000_000, 40_000_000, 80_000_000)  # spans the paper's range


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    target_arg, _, sizes_arg = (arg or "").partition(",")
    target, _, _ = common.parse_arg(target_arg, "pets")
    sizes = tuple(int(s) for s in sizes_arg.split(",")) if sizes_arg else SIZES
    c = common.experiment(
        model="inception_v3",
        target=target,
        source="jft",
        methods_run=("same", "elastic"),
        hardware=common.tpu_v3(256),
    )
    c.selection.size = sizes[-1]  # the main rows; the other sizes are the curves' points
    c.selection.sizes = sizes
    return c
