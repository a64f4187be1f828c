"""Table 3 of Ngiam et al.: Inception-v3 pre-trained on a JFT-like source (or ImageNet), six targets.

    --config=configs/paper/table3.py:TARGET[,SOURCE]   TARGET: birdsnap | pets | cars | aircraft | food | cifar10
                                                       SOURCE: jft (default, 80M selected) | imagenet (2M selected)

Rows in one job: entire source, the hierarchy subset that matches the target (Bird for Birdsnap,
Animal for Pets and CIFAR-10, Car, Aircraft, Food), adaptive transfer with both matchers (same and
elastic), random initialisation. The other hierarchy rows: the same command with
`--config.selection.hierarchy.ancestors="('vehicle',)"` (any of configs.paper.common.SUBSETS, WordNet
ids for ImageNet) and `--config.selection.methods="('hierarchy',)"` into another work dir.

TPU pod (v3-256 = 256 devices; WORKDIR on gs://):
    launch/tpu_pod.sh tcpt-v3-256 europe-west4-a v3-256 configs/paper/table3.py:pets gs://YOUR_BUCKET/runs/table3_pets
One host (8 devices; set the hardware so the dry run's estimate is for it):
    python -m launch.main --config=configs/paper/table3.py:pets --workdir=/data/runs/table3_pets \
        --config.hardware.devices=8
Plan without running: add `--dry_run` to the launch.main command (`launch/tpu_pod.sh --dry_run` prints
the commands it would run).

Estimated wall time (dry run, 256 TPU v3 devices at 35% of peak): 4 pre-training runs of 2M steps at
batch 1024 (2.05e9 images, 6.8e19 FLOPs, 3.4 h each) and 25 fine-tuning runs of 20k steps at batch
256 (5.12e6 images, 0.5 min each): 13.9 h of training steps per target and source (8.3e9 images,
2.8e20 FLOPs); on one host with 8 TPU v3 devices, 32x that (about 18 days).

The paper's numbers (top-1 %, mean per-class for Pets; mean of 5 fine-tuning runs), by target:
"""

from __future__ import annotations

import ml_collections

from configs.paper import common

PAPER = {  # row -> (birdsnap, pets, cars, aircraft, food, cifar10)
    "Entire JFT-like (ANON)": (74.2, 92.5, 94.0, 88.2, 88.6, 97.6),
    "ANON - Bird": (80.7, 86.4, 88.1, 74.9, 87.5, 96.9),
    "ANON - Animal": (77.8, 96.7, 89.1, 78.2, 89.2, 98.1),
    "ANON - Car": (73.4, 79.8, 96.0, 82.1, 86.1, 93.0),
    "ANON - Aircraft": (73.4, 78.7, 88.2, 91.1, 87.1, 96.1),
    "ANON - Vehicle": (74.2, 79.6, 95.8, 86.8, 81.6, 96.4),
    "ANON - Transport": (74.4, 78.4, 95.9, 88.4, 86.9, 96.2),
    "ANON - Food": (74.9, 81.1, 90.3, 85.6, 93.5, 96.4),
    "ANON - Adaptive Transfer": (81.7, 97.1, 95.7, 94.1, 94.1, 98.3),
    "ImageNet - Entire Dataset": (77.2, 93.3, 91.5, 88.8, 88.7, 97.4),
    "ImageNet - Adaptive Transfer": (76.6, 94.1, 92.1, 87.8, 88.9, 97.7),
    "Random Initialization": (75.2, 80.8, 92.1, 88.3, 86.4, 95.7),
}
__doc__ += common.paper_numbers(PAPER)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.table_3_4(arg, model="inception_v3")
