"""The one registry of selection methods: every name a config, the command line or the report uses.

A `Method` says how a name selects source data and how the result is trained on:

- `level`: "label" (a `LabelPlan` from label counts and the weights stage's w, no image read) or
  "example" (per-example scores from a pass over the source, planned into example -> copies);
- `defaults()`: its parameters, which live at `config.selection.<name>` (`selection_config` puts
  every method's there, so `--config.selection.uniform.top_k=100` works whatever is selected);
- `plan(context)`: the selection, from a `PlanContext` (source labels, counts, hierarchy, the
  weights read from weights.json, the size, its parameters);
- `weighted_loss`: False when the written shards ARE the selection (resampled, or a subset) and
  pre-training uses an unweighted loss; True when they are a weighted view of the source (every
  example once) and pre-training weights each example's loss by its `image/weight`;
- `needs_weights`: whether it reads the weights stage's w (the hierarchy subsets do not);
- `sized`: whether `selection.size` / `selection.sizes` applies (a subset has its own size).

Adding a method is one `register(Method(...))` and its code; validation, the select stage, the
pre-training runs and the report all read this table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import ml_collections
import numpy as np

from data import beam_runner
from selection import example_level, huh_subsets
from selection import plan as plan_lib
from selection import weights as weights_lib


@dataclasses.dataclass(frozen=True)
class PlanContext:
    """What a method plans from. Label-level methods read label names, counts and weights only."""

    label_names: list[str]
    counts: np.ndarray  # examples carrying each label (the source manifest's label counts)
    num_examples: int
    hierarchy: dict[str, list[str]]
    weights: weights_lib.ImportanceWeights | None  # weights.json; None when no weights stage ran
    size: int
    params: ml_collections.ConfigDict
    source_dir: str = ""  # example-level methods read the source records here
    scratch_dir: str = ""  # and may keep their scores here (resumable passes)
    target_dir: str = ""  # the target's training shard set (helper networks, target features)
    seed: int = 0
    # () -> (model, variables, image size) of the entire-source model, for methods on its features
    source_model: Callable[[], tuple[Any, dict, int]] | None = None


@dataclasses.dataclass(frozen=True)
class Selection:
    """A method's plan and the per-label weights the writer attributes examples by and writes.

    `label_weights` None: the plan's w (weights.json). A subset gives its chosen-label indicator, so a
    multi-label example with any chosen label is attributed to one and written with weight 1.
    """

    plan: plan_lib.LabelPlan | Mapping[bytes, int]
    label_weights: np.ndarray | None = None
    label_remap: huh_subsets.LabelRemap | None = None  # train on coarser labels (the writer applies it)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the report: scoring_images, ...


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    title: str  # the report's row title
    level: Literal["label", "example"]
    defaults: Callable[[], ml_collections.ConfigDict]
    plan: Callable[[PlanContext], Selection]
    weighted_loss: bool = False
    needs_weights: bool = True
    sized: bool = True


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _REGISTRY:
        raise ValueError(f"selection method {method.name!r} is registered twice")
    if "@" in method.name:
        raise ValueError(f"selection method names cannot hold '@' (it separates name and size): {method.name!r}")
    _REGISTRY[method.name] = method
    return method


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown selection method {name!r}; known: {', '.join(_REGISTRY)}") from None


def selection_config() -> ml_collections.ConfigDict:
    """`config.selection`: the common fields plus every registered method's parameters under its name."""
    c = ml_collections.ConfigDict()
    c.methods = ("same", "elastic")
    c.size = 0  # examples drawn by every sized method (the report's Table 3 rows)
    c.sizes = ()  # more sizes, each written and pre-trained as `<method>@<size>` (Figure 2)
    c.records_per_shard = 2000
    c.example_weight_rule = "max"  # image/weight of a multi-label example (selection.weights)
    # "beam": each shard set is written by an Apache Beam job on `beam`'s runner (data.beam_runner), the
    # same bytes as the in-process writer, which is the fast default on one machine.
    c.writer = "inprocess"
    # The in-process writer's worker processes per host (selection.write.local_processes), the same bytes:
    # 0 = one per core for a source of 500k+ records (a worker costs ~0.5 s to start), else 1.
    c.write_processes = 0
    c.beam = beam_runner.default_config()
    for method in _REGISTRY.values():
        c[method.name] = method.defaults()
    return c


def _weights(context: PlanContext, name: str) -> weights_lib.ImportanceWeights:
    if context.weights is None:
        raise ValueError(f"selection method {name!r} needs the importance weights (the weights stage)")
    return context.weights


def _params(**fields) -> Callable[[], ml_collections.ConfigDict]:
    return lambda: ml_collections.ConfigDict(fields)


# ----------------------------------------------------------------------------------------------
# Label-level methods (selection.plan holds the arithmetic). top_k 0: every label with w > 0.


def _matcher(name: str, planner: Callable[..., plan_lib.LabelPlan]) -> Callable[[PlanContext], Selection]:
    """A matcher's plan from w: `planner` (a `selection.plan` matcher) at `selection.size`, over the
    top `selection.<name>.top_k` labels by w where the method has that parameter."""

    def plan(context: PlanContext) -> Selection:
        top_k = {"top_k": int(context.params.top_k)} if "top_k" in context.params else {}
        weights = _weights(context, name)
        return Selection(planner(context.label_names, context.counts, None, context.size, weights=weights, **top_k))

    return plan


def _hierarchy(context: PlanContext) -> Selection:
    ancestors: Sequence[str] = tuple(context.params.ancestors)
    plan = plan_lib.hierarchy_subset(
        context.label_names, context.hierarchy, ancestors, context.counts, weights=context.weights
    )
    return Selection(plan, label_weights=plan_lib.chosen_labels(plan))


def _weighted_loss(context: PlanContext) -> Selection:
    w = _weights(context, "weighted_loss")
    return Selection(plan_lib.weighted_source(context.label_names, context.counts, weights=w))


for _name, _title, _planner, _defaults in (
    ("same", "Adaptive transfer (same-distribution matcher)", plan_lib.same_distribution, _params(top_k=0)),
    ("elastic", "Adaptive transfer (elastic matcher)", plan_lib.elastic, _params()),
    ("uniform", "Uniform over top-k labels", plan_lib.uniform_top_k, _params(top_k=0)),
    ("reverse", "Reverse distribution", plan_lib.reverse, _params(top_k=0)),
):
    register(Method(_name, _title, "label", _defaults, _matcher(_name, _planner)))
register(
    Method(
        "hierarchy",
        "Hierarchy subset",
        "label",
        _params(ancestors=("greek",)),  # the embedded hierarchy: script -> group -> character
        _hierarchy,
        needs_weights=False,
        sized=False,
    )
)
register(
    Method(
        "weighted_loss",
        "Entire source, loss weighted by w",
        "label",
        _params(),
        _weighted_loss,
        weighted_loss=True,
        sized=False,
    )
)


# ----------------------------------------------------------------------------------------------
# Methods from the other papers. The example-level ones score every source example in one streaming
# pass (selection.scoring) and keep selection.size examples, each once (selection.example_level).


def _source_model(context: PlanContext, name: str) -> tuple[Any, dict, int]:
    if context.source_model is None:
        raise ValueError(f"selection method {name!r} needs the entire-source model (the pretrain_source stage)")
    return context.source_model()


def _subset_of(context: PlanContext, planned: np.ndarray, **kwargs) -> Selection:
    """A label-level subset (each image at most once), attributed to its chosen labels."""
    plan = plan_lib.from_planned(context.label_names, context.counts, planned, with_replacement=False)
    return Selection(plan, label_weights=(np.asarray(planned) > 0).astype(np.float64), **kwargs)


def _emd(context: PlanContext) -> Selection:
    p = context.params
    planned, info = example_level.emd_labels(
        context.source_dir,
        context.target_dir,
        context.scratch_dir,
        feature_model=_source_model(context, "emd"),
        top_k=int(p.top_k),
        size=0 if p.top_k else context.size,
        gamma=float(p.gamma),
        batch_size=int(p.batch_size),
    )
    return _subset_of(context, planned, info=info)


def _domain_classifier(context: PlanContext) -> Selection:
    p = context.params
    if p.classifier == "cnn":
        result = example_level.domain_classifier_cnn(
            context.source_dir,
            context.target_dir,
            context.scratch_dir,
            size=context.size,
            helper=example_level.helper_from(p.helper),
            holdout_fraction=float(p.holdout_fraction),
            batch_size=int(p.batch_size),
            seed=context.seed,
        )
    else:
        result = example_level.domain_classifier_logistic(
            context.source_dir,
            context.target_dir,
            context.scratch_dir,
            size=context.size,
            feature_model=_source_model(context, "domain_classifier"),
            C=float(p.C),
            batch_size=int(p.batch_size),
            seed=context.seed,
        )
    return Selection(result.plan, info=result.info)


def _kmeans(context: PlanContext) -> Selection:
    p = context.params
    result = example_level.kmeans_filter(
        context.source_dir,
        context.target_dir,
        context.scratch_dir,
        size=context.size,
        helper=example_level.helper_from(p.helper),
        n_clusters=int(p.n_clusters),
        aggregate=str(p.aggregate),
        p=float(p.p),
        batch_size=int(p.batch_size),
        seed=context.seed,
    )
    return Selection(result.plan, info=result.info)


def _random(context: PlanContext) -> Selection:
    result = example_level.random_examples(
        context.source_dir, context.scratch_dir, size=context.size, seed=context.seed
    )
    return Selection(result.plan, info=result.info)


def _huh(context: PlanContext) -> Selection:
    from data import manifest

    p = context.params
    target = manifest.load_manifest(context.target_dir, verify=False) if p.remove_target_overlap else None
    planned, remap = huh_subsets.subset(
        context.label_names,
        context.hierarchy,
        context.counts,
        per_class=int(p.per_class),
        num_classes=int(p.num_classes),
        coarsen=str(p.coarsen),
        coarsen_depth=int(p.coarsen_depth),
        coarsen_iterations=int(p.coarsen_iterations),
        split=str(p.split),
        split_depth=int(p.split_depth),
        split_part=str(p.split_part),
        remove_target_overlap=bool(p.remove_target_overlap),
        remove_labels=tuple(p.remove_labels),
        target_label_names=target.label_names if target else None,
        target_hierarchy=target.hierarchy if target else None,
        seed=context.seed,
    )
    labels = len(remap.names) if remap else int(np.sum(planned > 0))
    return _subset_of(context, planned, label_remap=remap, info={"pretraining_labels": labels})


def _emd_defaults() -> ml_collections.ConfigDict:
    # top_k 0: the most similar labels, whole, until selection.size examples (the last one partly)
    return ml_collections.ConfigDict({"top_k": 0, "gamma": 0.01, "batch_size": 256})


def _domain_classifier_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "classifier": "cnn",  # "cnn" (Algorithm 2) | "logistic" (on the entire-source model's features)
            "holdout_fraction": 0.2,  # of each domain, for the classifier's held-out accuracy
            "C": 1.0,  # logistic only: inverse regularisation
            "batch_size": 256,  # scoring pass
            "helper": example_level.helper_config(),  # the CNN: trainer config + model (small_cnn)
        }
    )


def _kmeans_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "n_clusters": 10,
            "aggregate": "min",  # "min" (Eqn. 3) | "mean" (Eqn. 2)
            "p": 2.0,  # L_p distance (1 or 2)
            "batch_size": 256,
            "helper": example_level.helper_config(),  # feature extractor trained on the target's labels
        }
    )


def _huh_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "per_class": 0,  # at most this many images per label (0: all)
            "num_classes": 0,  # this many random labels (0: all)
            "coarsen": "depth",  # "none" | "depth" (top-down) | "bottom_up": the labels trained on
            "coarsen_depth": 1,  # depth: labels -> their ancestor at this depth (roots are 0)
            "coarsen_iterations": 1,  # bottom_up: merges of leaf siblings into their parent
            "split": "none",  # "none" | "random" | "minimal" (no shared ancestor to split_depth)
            "split_depth": 0,
            "split_part": "A",  # the side kept: "A" | "B"
            "remove_target_overlap": False,  # drop source labels that are the target's
            "remove_labels": (),  # and these labels or ancestors
        }
    )


register(
    Method("emd", "EMD domain similarity, top labels (Cui et al.)", "label", _emd_defaults, _emd, needs_weights=False)
)
register(
    Method(
        "domain_classifier",
        "Domain classifier, top N (Chakraborty et al.)",
        "example",
        _domain_classifier_defaults,
        _domain_classifier,
        needs_weights=False,
    )
)
register(
    Method(
        "kmeans",
        "k-means filtering, nearest N (Chakraborty et al.)",
        "example",
        _kmeans_defaults,
        _kmeans,
        needs_weights=False,
    )
)
register(Method("random", "Random N examples", "example", _params(), _random, needs_weights=False))
register(
    Method("huh", "Huh et al. subset (coarse labels)", "label", _huh_defaults, _huh, needs_weights=False, sized=False)
)
