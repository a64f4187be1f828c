"""Table 5 of Ngiam et al.: ImageNet source, CIFAR-10 target, 2M selected examples, same vs elastic.

The table compares, per ImageNet label, the sample rate of the same-distribution matcher (with
replacement: up to 577%) and of the elastic matcher (without: at most 100%). The select stage
writes exactly these statistics (`selected/<method>.stats.md`/`.csv`, and the report's Table 5
section); the pre-training and fine-tuning stages then give the two rows' transfer accuracy.

TPU pod (v3-256):
    launch/tpu_pod.sh tcpt-v3-256 europe-west4-a v3-256 configs/paper/table5.py gs://YOUR_BUCKET/runs/table5
One host (8 devices):
    python -m launch.main --config=configs/paper/table5.py --workdir=/data/runs/table5 --config.hardware.devices=8
The statistics alone (no selected pre-training): add `--stages=prepare,dedup,pretrain_source,weights,select`.

Estimated wall time (dry run, 256 TPU v3 devices): 3 pre-training runs of 2M steps at batch 1024
(3.4 h each) and 20 fine-tuning runs (0.5 min each): 10.4 h; the statistics alone need only the
first pre-training run (3.4 h).

The paper's numbers (sample rate, same / elastic): moving van (1,159 images) 576.95% / 100%; sorrel
370.50% / 100%; container ship 212.25% / 100%; airliner 189.85% / 100%; amphibian 149.87% / 100%;
thresher 143.89% / 100%; hartebeest 138.48% / 100%; Japanese spaniel (771) 201.66% / 100%; gazelle
79.34% / 95.39%; speedboat 79.25% / 95.28%; yawl 66.16% / 79.55%; persian cat 54.64% / 65.69%; ...
suit (last of 1,000) 0.23% / 0.28%. Transfer (Table 3, CIFAR-10): ImageNet entire 97.4, ImageNet
adaptive transfer 97.7.
"""

from __future__ import annotations

import ml_collections

from configs.paper import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return common.experiment(
        model="inception_v3",
        target="cifar10",
        source="imagenet",
        methods_run=("same", "elastic"),
        hardware=common.tpu_v3(256),
    )
