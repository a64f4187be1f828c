"""The paper's experiments (Ngiam et al. 2018) as configs: one builder, the targets, the sources.

Every config under configs/paper/ is `experiment(...)` with one table's rows. Data paths point at
`DATA` (gs://YOUR_BUCKET/data): put the datasets there (or override a side's path on the command
line, e.g. `--config.data.target.path=gs://my-bucket/birdsnap`). TFDS datasets must be prepared in
`data_dir` (`tfds build NAME --data_dir=... --file_format=array_record`); Birdsnap and FGVC Aircraft
are not in TFDS and come as image folders (train/ and test/, one sub-folder per class). The
JFT-like source is a CSV of image paths and labels (multi-label) with a hierarchy JSON; ImageNet
comes from TFDS with ImageNet's WordNet is-a pairs for its hierarchy.

Recipes (FACTS.md "Recipes"): Inception-v3 pre-trained 2M steps at batch 1024, AmoebaNet-B (N=18,
F=512) 250k steps at batch 2048, both SGD + Nesterov with 20k warm-up steps then cosine; fine-tuning
20k steps at batch 256, SGD with momentum, 2k warm-up, fresh head, 5 fine-tuning seeds; Pt at
softmax temperature 2; selected sets of 80M (JFT-like) or 2M (ImageNet) examples. All at 299 px in
bfloat16. Estimated times are `--dry_run`'s (launch/dryrun.py: FLOPs at 35% of peak, FACTS.md's
throughput reference points; not measured on a TPU here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from configs import demo
from configs.models import amoeba_net_b, inception_v3
from data import sides
from launch import dryrun
from trainer import config as trainer_config

DATA = "gs://YOUR_BUCKET/data"
TFDS_DIR = f"{DATA}/tensorflow_datasets"


@dataclasses.dataclass(frozen=True)
class Target:
    title: str
    side: dict
    subset: str  # the hand-picked hierarchy subset that matches it best in Table 3


TARGETS = {
    "birdsnap": Target("Birdsnap", dict(kind="folder", path=f"{DATA}/birdsnap"), "bird"),
    "pets": Target("Oxford-IIIT Pets", dict(kind="tfds", name="oxford_iiit_pet", data_dir=TFDS_DIR), "animal"),
    "cars": Target("Stanford Cars", dict(kind="tfds", name="cars196", data_dir=TFDS_DIR), "car"),
    "aircraft": Target(
        "FGVC Aircraft", dict(kind="folder", path=f"{DATA}/fgvc_aircraft", train_split="trainval"), "aircraft"
    ),
    "food": Target("Food-101", dict(kind="tfds", name="food101", data_dir=TFDS_DIR, test_split="validation"), "food"),
    "cifar10": Target("CIFAR-10", dict(kind="tfds", name="cifar10", data_dir=TFDS_DIR), "animal"),
}
SUBSETS = ("bird", "animal", "car", "aircraft", "vehicle", "transport", "food")  # Table 3's hierarchy rows
# ImageNet's WordNet ids for those subsets (the JFT-like hierarchy file uses the plain names).
WNIDS = {
    "bird": "n01503061",
    "animal": "n00015388",
    "car": "n02958343",
    "aircraft": "n02686568",
    "vehicle": "n04524313",
    "transport": "n03100490",
    "food": "n00021265",
}
SOURCES: dict[str, dict[str, Any]] = {
    "jft": dict(
        side=dict(kind="csv", path=f"{DATA}/jft", train_split="labels.csv", hierarchy=f"{DATA}/jft/hierarchy.json"),
        num_classes=18291,
        size=80_000_000,
    ),
    "imagenet": dict(
        side=dict(
            kind="tfds",
            name="imagenet2012",
            data_dir=TFDS_DIR,
            train_split="train",
            wordnet_is_a=f"{DATA}/imagenet/wordnet.is_a.txt",
        ),
        num_classes=1000,
        size=2_000_000,
    ),
}


def parse_arg(arg: str | None, default_target: str, default_source: str = "jft") -> tuple[str, str, list[str]]:
    """`target[,source[,extra...]]` -> (target, source, extras), names checked."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    target = parts[0] if parts else default_target
    source = parts[1] if len(parts) > 1 else default_source
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {sorted(TARGETS)}")
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {sorted(SOURCES)}")
    return target, source, parts[2:]


def subset_name(subset: str, source: str) -> str:
    """A hierarchy node's name in the source's hierarchy."""
    return WNIDS[subset] if source == "imagenet" else subset


def experiment(
    *, model: str, target: str, source: str, methods_run: tuple[str, ...], hardware: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """One job: `source` pre-training rows `methods_run` (plus entire source and random init) on `target`."""
    t, s = TARGETS[target], SOURCES[source]
    # Every section a job reads, with its defaults (dedup, fine-tuning sweep, ...), then the paper's.
    c = demo.get_config("demo")
    c.data.kind = "external"
    c.data.target_name = t.title
    c.data.source = sides.side_config(**s["side"])
    c.data.target = sides.side_config(**t.side)

    if model == "inception_v3":
        c.model = inception_v3.get_config()
    else:
        c.model = amoeba_net_b.get_config()  # N=18, F=512: 557M parameters at 1001 classes
    c.model.num_classes = s["num_classes"]  # the data sets it at run time; the dry run's FLOPs use it

    c.pretrain = trainer_config.pretrain_config()  # 2M steps, batch 1024, SGD + Nesterov, 20k warm-up
    c.pretrain.compute_dtype = "bfloat16"
    c.pretrain.parallelism = "jit"
    if model == "amoeba_net_b":
        c.pretrain.steps = 250_000
        c.pretrain.global_batch_size = 2048
        c.pretrain.learning_rate = 0.8  # 0.1 per 256 examples, as the Inception recipe
        c.pretrain.fsdp = True  # 557M parameters + momentum + EMA: sharded over the devices
        c.pretrain.aux_loss_weight = 0.0
    c.weights = ml_collections.ConfigDict(dict(temperature=2.0, batch_size=1024))

    c.selection.methods = methods_run
    c.selection.same.top_k = 0  # the paper's matcher over every label (the demo's takes the top 50)
    c.selection.size = s["size"]
    c.selection.records_per_shard = 5000
    c.selection.hierarchy.ancestors = (subset_name(t.subset, source),)

    c.finetune = trainer_config.finetune_config()  # 20k steps, batch 256, SGD momentum, 2k warm-up
    c.finetune.compute_dtype = "bfloat16"
    c.finetune.parallelism = "jit"
    c.finetune.seeds = (0, 1, 2, 3, 4)  # results averaged over 5 fine-tuning runs
    if model == "amoeba_net_b":
        c.finetune.fsdp = True
        c.finetune.aux_loss_weight = 0.0
    # The paper chose learning rate and weight decay on a hold-out split; these configs fine-tune at
    # finetune.learning_rate / weight_decay as given. For the sweep, name its points, e.g.
    # --config.finetune_sweep.learning_rates="(0.003,0.01,0.03)" --config.finetune_sweep.weight_decays="(1e-5,1e-4)".
    for key in ("learning_rates", "weight_decays", "random_init_learning_rates", "random_init_weight_decays"):
        c.finetune_sweep[key] = ()
    c.report.induction = False
    c.hardware = hardware
    return c


def paper_numbers(paper: Mapping[str, Sequence[float]]) -> str:
    """Tables 3 and 4's numbers for a config's docstring: one line per row, one `target=value` per column
    (the columns in `TARGETS`' order, which is the paper's)."""
    return "\n".join(
        f"    {row:<30} " + "  ".join(f"{t}={v}" for t, v in zip(TARGETS, values, strict=True))
        for row, values in paper.items()
    )


def table_3_4(arg: str | None, *, model: str) -> ml_collections.ConfigDict:
    """Tables 3 and 4's job (`arg` = TARGET[,SOURCE], default pets on the JFT-like source): the entire
    source, the target's hierarchy subset, both matchers and random initialisation, for a v3-256 pod."""
    target, source, _ = parse_arg(arg, "pets")
    return experiment(
        model=model,
        target=target,
        source=source,
        methods_run=("hierarchy", "same", "elastic"),
        hardware=tpu_v3(256),
    )


def tpu_v3(devices: int) -> ml_collections.ConfigDict:
    return dryrun.hardware_config("tpu_v3", devices)
