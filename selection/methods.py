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
from typing import Literal

import ml_collections
import numpy as np

from data import beam_runner
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


@dataclasses.dataclass(frozen=True)
class Selection:
    """A method's plan and the per-label weights the writer attributes examples by and writes.

    `label_weights` None: the plan's w (weights.json). A subset gives its chosen-label indicator, so a
    multi-label example with any chosen label is attributed to one and written with weight 1.
    """

    plan: plan_lib.LabelPlan | Mapping[bytes, int]
    label_weights: np.ndarray | None = None


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
    c.size = 0  # examples drawn by every sized method
    c.records_per_shard = 2000
    c.example_weight_rule = "max"  # image/weight of a multi-label example (selection.weights)
    # "beam": each shard set is written by an Apache Beam job on `beam`'s runner (data.beam_runner), the
    # same bytes as the in-process writer, which is the fast default on one machine.
    c.writer = "inprocess"
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


def _same(context: PlanContext) -> Selection:
    w = _weights(context, "same")
    top_k = int(context.params.top_k)
    return Selection(
        plan_lib.same_distribution(context.label_names, context.counts, None, context.size, top_k=top_k, weights=w)
    )


def _elastic(context: PlanContext) -> Selection:
    w = _weights(context, "elastic")
    return Selection(plan_lib.elastic(context.label_names, context.counts, None, context.size, weights=w))


def _uniform(context: PlanContext) -> Selection:
    w = _weights(context, "uniform")
    top_k = int(context.params.top_k)
    return Selection(
        plan_lib.uniform_top_k(context.label_names, context.counts, None, context.size, top_k=top_k, weights=w)
    )


def _reverse(context: PlanContext) -> Selection:
    w = _weights(context, "reverse")
    top_k = int(context.params.top_k)
    return Selection(plan_lib.reverse(context.label_names, context.counts, None, context.size, top_k=top_k, weights=w))


def _hierarchy(context: PlanContext) -> Selection:
    ancestors: Sequence[str] = tuple(context.params.ancestors)
    plan = plan_lib.hierarchy_subset(
        context.label_names, context.hierarchy, ancestors, context.counts, weights=context.weights
    )
    return Selection(plan, label_weights=plan_lib.chosen_labels(plan))


def _weighted_loss(context: PlanContext) -> Selection:
    w = _weights(context, "weighted_loss")
    return Selection(plan_lib.weighted_source(context.label_names, context.counts, weights=w))


register(Method("same", "Adaptive transfer (same-distribution matcher)", "label", _params(top_k=0), _same))
register(Method("elastic", "Adaptive transfer (elastic matcher)", "label", _params(), _elastic))
register(Method("uniform", "Uniform over top-k labels", "label", _params(top_k=0), _uniform))
register(Method("reverse", "Reverse distribution", "label", _params(top_k=0), _reverse))
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
