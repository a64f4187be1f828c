"""Every selection method compared at one budget on the embedded target, in one command (issue 13).

    python -m launch.main --config=configs/compare.py --workdir=workdirs/compare

The demo's data (configs/demo.py: 251 source labels, the 25 Greek-letter target) with all eleven
methods of `selection.methods` selecting `selection.size` examples (the sized ones; `hierarchy`,
`weighted_loss` and `huh` are subsets of their own size), every pre-trained row the same number of
steps, three fine-tuning seeds. The model is the small ConvNet at the glyphs' 32 px, so the whole
table fits a CPU session; `--config.model=...` overrides are the way to the paper models. Pt comes from
the demo's own source model (configs/demo.py) and the same-distribution matcher takes the demo's top 50
labels; the README's table below predates both (commit fdf4cb0: Pt from the rows' model). The report's
"Methods compared at one budget" section and report.csv hold the table (README, "Comparing methods").
"""

from __future__ import annotations

import ml_collections

from configs import demo
from configs.models import small_cnn
from selection import methods


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:
        raise ValueError(f"configs/compare.py takes no argument, got {arg!r}")
    c = demo.get_config("demo")
    c.data.target_name = "greek_glyphs"
    c.model = small_cnn.get_config()
    c.model.image_size = 32
    c.model.stage_filters = (16, 32, 64)  # a quarter of the default's FLOPs: 12 pre-trainings in a CPU session
    c.model.dropout_rate = 0.0
    for section in (c.pretrain, c.finetune):
        section.image_size = 32
    c.pretrain.steps, c.pretrain.warmup_steps = 400, 40
    c.pretrain.checkpoint_every_steps = 200
    c.finetune.steps, c.finetune.warmup_steps = 100, 10
    c.selection.methods = methods.names()
    c.selection.size = 4000  # about 15% of the source: Chakraborty et al. filter 6-12% of ImageNet
    c.report.induction = True
    return c
