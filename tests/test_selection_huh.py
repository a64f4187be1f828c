"""Huh et al. subsets as a pipeline method: splits, target-overlap removal, and coarse-label shard sets
that pre-training trains on (the head has one output per coarse label)."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from data import manifest, records
from selection import huh_subsets, write

# depth 0: kingdom; depth 1: family; depth 2: label
TREE = {
    "animal": ["dog", "cat"],
    "dog": ["husky", "pug"],
    "cat": ["tabby", "lynx"],
    "thing": ["car", "tool"],
    "car": ["sedan", "van"],
    "tool": ["saw", "drill"],
    "plant": ["tree"],
    "tree": ["oak", "pine"],
}
LABELS = ["husky", "pug", "tabby", "lynx", "sedan", "van", "saw", "drill", "oak", "pine"]


def _ancestor(label, depth):
    parents = huh_subsets.parent_map(TREE)
    path = [label]
    while path[-1] in parents:
        path.append(parents[path[-1]])
    path = path[::-1]
    return path[min(depth, len(path) - 1)]


@pytest.mark.parametrize("depth", [0, 1])
def test_minimal_split_shares_no_ancestor_to_the_depth(depth):
    a, b = huh_subsets.minimal_split(LABELS, TREE, depth)
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(len(LABELS)))
    for depth_checked in range(depth + 1):
        left = {_ancestor(LABELS[i], depth_checked) for i in a}
        right = {_ancestor(LABELS[i], depth_checked) for i in b}
        if depth_checked == depth:
            assert not left & right
    assert abs(len(a) - len(b)) <= (4 if depth == 0 else 2)
    with pytest.raises(ValueError, match="no minimal split"):
        huh_subsets.minimal_split(["husky", "pug"], TREE, 0)


def test_random_split_sizes_and_seed():
    a, b = huh_subsets.random_split(10, 4, seed=0)
    assert len(a) == 4 and len(b) == 6 and not set(a) & set(b)
    assert not np.array_equal(a, huh_subsets.random_split(10, 4, seed=1)[0])


def test_target_overlap_by_name_parent_and_extra():
    mask = huh_subsets.target_overlap(LABELS, TREE, ["Husky", "kiwi"])
    assert [LABELS[i] for i in np.flatnonzero(mask)] == ["husky"]
    mask = huh_subsets.target_overlap(LABELS, TREE, ["siamese"], {"cat": ["siamese"]}, extra=("tool",))
    assert [LABELS[i] for i in np.flatnonzero(mask)] == ["tabby", "lynx", "saw", "drill"]


def test_subset_recipe():
    counts = np.arange(1, 11, dtype=np.float64) * 10
    planned, remap = huh_subsets.subset(LABELS, TREE, counts, per_class=25, coarsen="depth", coarsen_depth=1)
    np.testing.assert_array_equal(planned, np.minimum(counts, 25))
    assert remap is not None and remap.names == ["dog", "cat", "car", "tool", "tree"]
    planned, remap = huh_subsets.subset(
        LABELS,
        TREE,
        counts,
        split="minimal",
        split_depth=0,
        split_part="A",
        remove_target_overlap=True,
        target_label_names=["husky"],
    )
    kept = {LABELS[i] for i in np.flatnonzero(planned)}
    assert remap is None and "husky" not in kept and kept
    assert len({_ancestor(k, 0) for k in kept}) >= 1
    assert not {_ancestor(k, 0) for k in kept} & {_ancestor(LABELS[i], 0) for i in np.flatnonzero(planned == 0)} - {
        "animal"
    }
    with pytest.raises(ValueError, match="coarsen"):
        huh_subsets.subset(LABELS, TREE, counts, coarsen="sideways")


def _png(level, rng):
    pixels = np.clip(level + rng.integers(-5, 6, size=(12, 12, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    """Images of the ten labels; every fourth also carries a second label of the same family."""
    rng = np.random.default_rng(0)
    directory = str(tmp_path_factory.mktemp("huh_source"))
    examples, label_counts = [], np.zeros(len(LABELS), np.int64)
    for i in range(80):
        y = i % len(LABELS)
        labels = (y, y ^ 1) if i % 4 == 0 else (y,)
        label_counts[list(labels)] += 1
        examples.append(records.Example(_png(20 * y, rng), labels, f"e{i:03d}".encode()))
    files = []
    for s in range(2):
        path = os.path.join(directory, f"source-{s:05d}.tfrecord")
        records.write_tfrecord(path, [records.encode_example(e) for e in examples[s::2]])
        files.append(path)
    manifest.write_manifest(directory, files, [40, 40], LABELS, label_counts.tolist(), hierarchy=TREE)
    return directory


def test_coarse_label_shard_set_and_pretraining_head(source_dir, tmp_path):
    source = manifest.load_manifest(source_dir)
    counts = np.asarray(source.label_counts, np.float64)
    planned, remap = huh_subsets.subset(LABELS, TREE, counts, coarsen="depth", coarsen_depth=1, per_class=6)
    assert remap is not None
    out = str(tmp_path / "huh")
    shard_set = write.write_selected(
        source_dir,
        planned,
        out,
        records_per_shard=16,
        seed=0,
        process_index=0,
        process_count=1,
        label_weights=(planned > 0).astype(np.float64),
        label_remap=remap,
    )
    assert shard_set.label_names == ["dog", "cat", "car", "tool", "tree"]
    originals = {
        e.example_id: e.labels
        for f in source.files
        for e in (records.decode_example(r) for r in records.iter_records(f))
    }
    written = [records.decode_example(r) for f in shard_set.files for r in records.iter_records(f)]
    # Rates are kept on the attributed (one label per example) counts: each image at most once.
    assert len(written) == shard_set.num_records == len({e.example_id for e in written}) <= planned.sum()
    coarse_counts = np.zeros(5, np.int64)
    for e in written:
        expected = tuple(dict.fromkeys(int(remap.index[y]) for y in originals[e.example_id]))
        assert e.labels == expected  # every fine label replaced by its family, merged duplicates once
        coarse_counts[list(e.labels)] += 1
    assert shard_set.label_counts == coarse_counts.tolist()
    assert shard_set.extra["label_remap"]["source_label_names"] == LABELS

    from configs.models import small_cnn
    from trainer import checkpoint, train
    from trainer import config as trainer_config

    config = trainer_config.pretrain_config()
    config.steps, config.warmup_steps, config.global_batch_size = 2, 1, 8
    config.image_size, config.ema_decay, config.eval_with_ema = 12, 0.0, False
    config.aux_loss_weight, config.checkpoint_every_steps, config.log_every_steps = 0.0, 2, 1
    model = small_cnn.get_config()
    model.stage_filters = (4,)
    model.num_classes = len(LABELS)  # what the pipeline passes; the shard set's label space wins
    run = str(tmp_path / "pretrain")
    train.train(config, model_config=model, train_dir=out, workdir=run)
    params = checkpoint.load_variables(run, use_ema=False)["params"]
    assert params["head"]["kernel"].shape[-1] == 5  # trained on the merged labels
