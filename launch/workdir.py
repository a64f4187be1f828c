"""The work-dir layout: the one place that names every file a job writes, and the report's rows.

Every stage writes only under its own folder, and a stage is complete when its marker
`stages/<name>.json` exists, written atomically after all its outputs:

  config.json                             resolved config of the latest launch
  launches/<utc time>-<pid>.json          every launch: git commit, command line, resolved config
  data/source, data/target/{train,test}   shard sets (prepare); data/target/validation when carved
  data/source_dedup                       the source minus near-duplicates of target images (dedup;
                                          the source of every later stage when dedup.enabled)
  pretrain/<choice>/                      trainer work dirs: entire_source, same, same@6000, ... (pretrain_*)
  weights/weights.json, label_stats.json  Pt, Ps, w per source label (weights)
  weights/model/                          trainer work dir of Pt's own source model, when weights.model or
                                          weights.pretrain is set (weights; else Pt is the entire-source
                                          model's); one for every pre-training seed
  selected/<choice>/                      weighted TFRecord shards + manifest (select); a choice is a
                                          method (`same`) or a method at another size (`same@6000`)
  selected/<choice>.plan.csv, .stats.*    the plan and Table-5 statistics of each choice (select)
  selected/_scratch/<choice>/             a method's intermediate files, e.g. per-example scores (select)
    .../scores/scores-<shard>.npz         per-example scores and ids of one source shard (selection.scoring)
    .../label_sums/label_sums-<shard>.npz per-label feature sums of one source shard (emd)
    .../domain_data/{train,heldout}/      the domain classifier's target-vs-source sets
    .../classifier/, .../extractor/       the helper networks' trainer work dirs
    .../result-<size>.json                the method's selection (ids or planned draws) and its costs
  finetune/<choice>/seed_<s>/             fine-tuning runs and their test metrics (finetune)
  finetune/<choice>/seed_<s>/balanced/    its second stage on data/target/train_balanced (finetune_balanced)
  finetune/results.json                   test metrics of every fine-tuning run (finetune)
  finetune/_grid_split/{train,val}/       the fine-tuning grid's carve of the target's training set (finetune)
  finetune/<choice>/grid/lr<l>_wd<w>/     a grid point's run on it; grid.json: validation scores, the choice
  finetune/<choice>/induction.json        kNN induction accuracy of its pre-trained features (finetune)
  report.md, report.csv, *.png            the report (report): results.png, accuracy_vs_size.png
                                          (Figure 2, with selection.sizes), importance_weights.png,
                                          dedup_pairs.png (written by dedup)
  targets/<target>/, grid.md, grid.csv    a grid (launch.grid): one job per target, sharing data/source and
                                          (without dedup) pretrain/entire_source of the grid's root
  pretrain_seed_<p>/...                   with pretrain.seeds: pretrain/, weights/weights.json (and
                                          label_stats), selected/, finetune/ and stages/ of the seeded
                                          stages, once per pre-training seed p; random initialisation's
                                          fine-tuning runs, the data, weights/model/ and the report
                                          stay at the top (they do not depend on p)

`launch.stages` (which writes these) and `launch.report` (which reads them) both import this module
and nothing else spells a work-dir path.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

STAGE_NAMES = ("prepare", "dedup", "pretrain_source", "weights", "select", "pretrain_selected", "finetune", "report")
RANDOM_INIT = "random_init"
ENTIRE_SOURCE = "entire_source"
# Stages whose outputs depend on the pre-training seed: run once per seed of `pretrain.seeds`.
SEEDED_STAGES = ("pretrain_source", "weights", "select", "pretrain_selected", "finetune")


def pretrain_seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """`pretrain.seeds`: the pre-training seeds every pre-trained row is trained with (each in its own
    `pretrain_seed_<p>/`); empty (the default): one run per row with `pretrain.seed`, at the top level."""
    section = config.get("pretrain")
    return tuple(int(s) for s in section.get("seeds", ())) if section is not None else ()


@dataclasses.dataclass(frozen=True)
class SelectionChoice:
    """One selected shard set: a method at one size, written and pre-trained under `name`.

    `name` is the method's name at `selection.size` (the report's Table 3 row) and `method@size` for
    each other size of `selection.sizes` (Figure 2's points); a method without a size (a subset, the
    weighted source) has one choice. Its paths: selected/<name>/, pretrain/<name>/, finetune/<name>/.
    """

    name: str
    method: str
    size: int  # 0 for a method without a size

    @property
    def main(self) -> bool:
        return self.name == self.method


def selection_choices(config: ml_collections.ConfigDict) -> list[SelectionChoice]:
    """Every (method, size) the job writes and pre-trains on, main sizes first within each method."""
    from selection import methods

    selection = config.selection
    out = []
    for name in selection.methods:
        if not methods.get(name).sized:
            out.append(SelectionChoice(name, name, 0))
            continue
        out.append(SelectionChoice(name, name, int(selection.size)))
        out += [SelectionChoice(f"{name}@{int(s)}", name, int(s)) for s in selection.sizes if s != selection.size]
    return out


def pretraining_choices(config: ml_collections.ConfigDict) -> list[str]:
    """Fine-tuned rows: entire source, each selection choice, and random initialisation."""
    return [ENTIRE_SOURCE, *(c.name for c in selection_choices(config)), RANDOM_INIT]


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Paths of one job's work dir."""

    root: str
    dedup: bool = True  # config.dedup.enabled: later stages read the de-duplicated source
    # A grid's root (launch.grid): one target's job keeps the target-independent source and, without
    # dedup, the entire-source model there, shared by every target.
    shared: str = ""
    # One pre-training seed's view (pretrain.seeds): the seeded stages' files under pretrain_seed_<p>/.
    pretrain_seed: int | None = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _shared(self, *parts: str) -> str:
        return os.path.join(self.shared or self.root, *parts)

    def _seed_dir(self) -> tuple[str, ...]:
        return () if self.pretrain_seed is None else (f"pretrain_seed_{self.pretrain_seed}",)

    def seeded(self, *parts: str) -> str:
        """A file of a seeded stage: under pretrain_seed_<p>/ in a seed's view, else at the top."""
        return self.path(*self._seed_dir(), *parts)

    def for_pretrain_seed(self, seed: int | None) -> Workspace:
        """The view of pre-training seed `seed` (None: the top level, a job without pretrain.seeds)."""
        return dataclasses.replace(self, pretrain_seed=seed)

    @property
    def prepared_source(self) -> str:
        """The source as prepare wrote it."""
        return self._shared("data", "source")

    @property
    def source(self) -> str:
        """The source every later stage trains on: without the near-duplicates of target images."""
        return self.path("data", "source_dedup") if self.dedup else self.prepared_source

    @property
    def dedup_pairs_png(self) -> str:
        """A few source images beside their nearest target image, removed and kept (dedup)."""
        return self.path("dedup_pairs.png")

    @property
    def target_root(self) -> str:
        return self.path("data", "target")

    def target(self, split: str) -> str:
        return self.path("data", "target", split)

    @property
    def balanced_target(self) -> str:
        """A class-balanced subset of the target's training set (finetune_balanced)."""
        return self.path("data", "target", "train_balanced")

    def pretrain(self, choice: str) -> str:
        if choice == ENTIRE_SOURCE and not self.dedup:  # de-duplicated sources differ per target
            return self._shared(*self._seed_dir(), "pretrain", choice)
        return self.seeded("pretrain", choice)

    def grid_target(self, name: str) -> str:
        """A grid's per-target job (launch.grid)."""
        return self.path("targets", name)

    @property
    def grid_md(self) -> str:
        return self.path("grid.md")

    @property
    def grid_csv(self) -> str:
        return self.path("grid.csv")

    @property
    def weights_json(self) -> str:
        return self.seeded("weights", "weights.json")

    @property
    def label_stats_json(self) -> str:
        return self.seeded("weights", "label_stats.json")

    @property
    def weights_model(self) -> str:
        """Trainer work dir of Pt's own source model (weights.model / weights.pretrain): one per job, and
        one per grid where the targets share the source (dedup off), as the entire-source model."""
        if not self.dedup:
            return self._shared("weights", "model")
        return self.path("weights", "model")

    def selected(self, method: str) -> str:
        return self.seeded("selected", method)

    def selection_scratch(self, method: str) -> str:
        """A method's own resumable intermediate files (example-level scores, ...)."""
        return self.seeded("selected", "_scratch", method)

    def plan_csv(self, method: str) -> str:
        return self.selected(method) + ".plan.csv"

    def selection_stats(self, method: str) -> str:
        """Prefix of a method's Table-5 statistics files (`.csv`, `.md`)."""
        return self.selected(method) + ".stats"

    def selection_stats_csv(self, method: str) -> str:
        """Every label's planned and realised draws and rates (`selection.stats.write_tables`)."""
        return self.selection_stats(method) + ".csv"

    @property
    def source_label_index(self) -> str:
        """Per-shard label index of the source, shared by every selection method."""
        return self.path("selected", "source_label_index")

    @property
    def finetune_split(self) -> str:
        """The fine-tuning grid's split of the target's training set: `train/` and `val/` (trainer.sweep)."""
        return self.path("finetune", "_grid_split")

    def _finetune_dir(self, choice: str) -> str:
        if choice == RANDOM_INIT:  # no pre-training: one set of runs for every pre-training seed
            return self.path("finetune", choice)
        return self.seeded("finetune", choice)

    def finetune_grid_run(self, choice: str, learning_rate: float, weight_decay: float) -> str:
        return os.path.join(self._finetune_dir(choice), "grid", f"lr{learning_rate:g}_wd{weight_decay:g}")

    def finetune_grid_json(self, choice: str) -> str:
        """Every grid point's validation scores and the chosen (learning rate, weight decay)."""
        return os.path.join(self._finetune_dir(choice), "grid.json")

    def finetune(self, choice: str, seed: int) -> str:
        return os.path.join(self._finetune_dir(choice), f"seed_{seed}")

    def finetune_balanced(self, choice: str, seed: int) -> str:
        return os.path.join(self.finetune(choice, seed), "balanced")

    def induction(self, choice: str) -> str:
        """kNN induction accuracy of a pre-trained model's features on the target (report.induction)."""
        return self.seeded("finetune", choice, "induction.json")

    def test_metrics(self, choice: str, seed: int) -> str:
        return os.path.join(self.finetune(choice, seed), "test_metrics.json")

    @property
    def finetune_results(self) -> str:
        return self.seeded("finetune", "results.json")

    def launch_record(self, stamp: str) -> str:
        return self.path("launches", f"{stamp}.json")

    def marker(self, stage: str) -> str:
        """A stage's completion marker; in a seed's view, that seed's part of a seeded stage."""
        return self.seeded("stages", f"{stage}.json")

    @property
    def report_md(self) -> str:
        return self.path("report.md")

    @property
    def report_csv(self) -> str:
        return self.path("report.csv")

    @property
    def results_png(self) -> str:
        return self.path("results.png")

    @property
    def accuracy_vs_size_png(self) -> str:
        """Figure 2's shape: target accuracy against selected-set size per method (`selection.sizes`)."""
        return self.path("accuracy_vs_size.png")

    @property
    def importance_weights_png(self) -> str:
        return self.seeded("importance_weights.png")
