"""Table 4 of Ngiam et al.: the Table 3 experiment with AmoebaNet-B (N=18, F=512, 557M parameters).

    --config=configs/paper/table4.py:TARGET[,SOURCE]   (as configs/paper/table3.py)

Its own pre-training recipe: 250k steps at batch 2048 (SGD + Nesterov, learning rate 0.8 = 0.1 per
256 examples, Real et al.'s regularisation as Inception's), bfloat16, and the train state (parameters,
momentum, EMA) sharded over the devices (FSDP, `pretrain.fsdp`/`finetune.fsdp`); fine-tuning as
Table 3.

TPU pod (v3-256 = 256 devices; fine-tuning's batch of 256 allows at most 256):
    launch/tpu_pod.sh tcpt-v3-256 europe-west4-a v3-256 configs/paper/table4.py:pets gs://YOUR_BUCKET/runs/table4_pets
One host (8 devices of 80 GiB, e.g. 8 x H100; the sharded pre-training state is then 0.99 GiB per device):
    python -m launch.main --config=configs/paper/table4.py:pets --workdir=/data/runs/table4_pets \
        --config.hardware.accelerator=h100 --config.hardware.devices=8

Estimated wall time (dry run, 256 TPU v3 devices at 35% of peak): 4 pre-training runs of 250k steps
at batch 2048 (5.12e8 images, 3.8e20 FLOPs at 2.48e11 forward FLOPs per image, 19.2 h each) and 25
fine-tuning runs of 20k steps at batch 256 (11.5 min each): 3.4 days (1.6e21 FLOPs); 6.8 days on 8
H100s. Sharded pre-training state (parameters with the 18,291-class head, momentum, EMA) 7.81 GiB in
all, 46.5 MiB per device (of 16 GiB; activations come on top: `--config.model.remat=True` if they do
not fit).

The paper's numbers (top-1 %, mean per-class for Pets; mean of 5 fine-tuning runs), by target:
"""

from __future__ import annotations

import ml_collections

from configs.paper import common

PAPER = {  # row -> (birdsnap, pets, cars, aircraft, food, cifar10)
    "Entire JFT-like (ANON)": (80.3, 94.5, 95.3, 90.5, 92.0, 98.6),
    "ANON - Bird": (85.5, 90.4, 92.0, 86.9, 90.7, 97.8),
    "ANON - Animal": (84.1, 96.4, 93.2, 90.0, 92.3, 98.8),
    "ANON - Car": (79.0, 88.9, 96.2, 92.2, 90.1, 96.7),
    "ANON - Aircraft": (78.0, 87.7, 93.3, 92.5, 89.8, 97.2),
    "ANON - Vehicle": (78.8, 88.6, 96.0, 93.0, 90.4, 97.2),
    "ANON - Transport": (79.2, 89.1, 95.9, 93.1, 90.4, 97.3),
    "ANON - Food": (79.7, 89.2, 92.6, 88.7, 95.1, 97.5),
    "ANON - Adaptive Transfer": (85.1, 96.8, 95.8, 92.8, 95.3, 98.6),
    "ImageNet - Entire Dataset": (80.8, 94.5, 94.2, 90.7, 91.7, 98.0),
    "ImageNet - Adaptive Transfer": (80.7, 95.1, 93.5, 89.2, 91.5, 98.0),
    "Best published": (80.2, 94.3, 94.1, 92.9, 90.4, 98.5),
}
__doc__ += common.paper_numbers(PAPER)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return common.table_3_4(arg, model="amoeba_net_b")
