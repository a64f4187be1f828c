"""Embedded default data: determinism, label bookkeeping, glyph validity, target/source relation."""

from __future__ import annotations

import collections
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data import embedded, glyphs
from data.manifest import load_manifest
from data.records import decode_example, iter_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(seed: int = 0):
    config = embedded.default_config()
    config.seed = seed
    config.num_workers = 0
    config.chunk_size = 16
    config.source.groups = "digit,greek_lower,latin_lower,math"
    config.source.max_labels_per_group = 6
    config.source.whole_groups = "greek_lower"
    config.source.min_images_per_label = 2
    config.source.max_images_per_label = 6
    config.source.num_shards = 3
    config.target.train_per_class = 2
    config.target.test_per_class = 1
    return config


def read_all(shard_set):
    return [decode_example(r) for f in shard_set.files for r in iter_records(f)]


def file_bytes(directory: str) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, directory)] = handle.read()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    config = tiny_config()
    source = embedded.build_source(str(out / "source"), config)
    target = embedded.build_target(str(out / "target"), config)
    return out, config, source, target


def test_same_seed_same_bytes_other_seed_other_bytes(built, tmp_path):
    out, _, _, _ = built
    embedded.build_source(str(tmp_path / "a" / "source"), tiny_config())
    embedded.build_target(str(tmp_path / "a" / "target"), tiny_config())
    first, again = file_bytes(str(out)), file_bytes(str(tmp_path / "a"))
    assert sorted(first) == sorted(again) and len(first) == 3 + 1 + 2 + 2
    assert all(first[name] == again[name] for name in first)
    embedded.build_source(str(tmp_path / "b"), tiny_config(seed=1))
    other = file_bytes(str(tmp_path / "b"))
    assert other["source-00000-of-00003.tfrecord"] != first[os.path.join("source", "source-00000-of-00003.tfrecord")]


def test_worker_pool_gives_the_same_bytes_as_inline(built, tmp_path):
    out, _, _, _ = built
    config = tiny_config()
    config.num_workers = 2
    embedded.build_source(str(tmp_path / "pool"), config)
    assert file_bytes(str(tmp_path / "pool")) == file_bytes(str(out / "source"))  # manifest included


def test_source_records_match_manifest(built):
    _, config, source, _ = built
    examples = read_all(source)
    assert len(examples) == source.num_records == sum(source.record_counts)
    ids = [e.example_id for e in examples]
    assert ids == [f"src-{i:06d}".encode() for i in range(len(examples))]
    counts = collections.Counter(y for e in examples for y in e.labels)
    assert [counts[y] for y in range(source.num_labels)] == source.label_counts
    assert all(len(set(e.labels)) == len(e.labels) in (1, 2) for e in examples)
    low, high = config.source.min_images_per_label, config.source.max_images_per_label
    assert min(source.label_counts) == low and max(source.label_counts) == high
    per_image = sum(len(e.labels) for e in examples) / len(examples)
    assert per_image == pytest.approx(1 + config.source.multi_label_fraction, abs=0.05)
    assert source.extra["stats"]["labels_per_image"] == pytest.approx(per_image, abs=1e-3)
    pixels = np.asarray(Image.open(io.BytesIO(examples[0].image)))
    assert pixels.shape == (config.image_size, config.image_size, 3) and pixels.dtype == np.uint8


def test_source_hierarchy_is_script_group_character(built):
    _, _, source, _ = built
    tree = source.hierarchy
    assert tree["greek"] == ["greek_lower"] and tree["symbol"] == ["math"]
    assert tree["number"] == ["digit"] and len(tree["digit"]) == 6
    assert tree["digit"] == sorted(tree["digit"]) and set(tree["digit"]) <= set("0123456789")
    leaves = [leaf for group in ("digit", "greek_lower", "latin_lower", "math") for leaf in tree[group]]
    assert leaves == source.label_names and len(set(leaves)) == len(leaves) == 6 + 25 + 6 + 6


def test_target_is_greek_lowercase_in_held_out_fonts(built):
    _, config, source, target = built
    train, test = target["train"], target["test"]
    assert train.label_names == test.label_names and len(train.label_names) == 25
    assert train.label_names[:3] == ["alpha", "beta", "gamma"] and "final_sigma" in train.label_names
    assert train.label_counts == [2] * 25 and test.label_counts == [1] * 25
    labels = [e.labels for e in read_all(train)]
    assert sorted(labels) == sorted([(k,) for k in range(25)] * 2)
    assert set(train.extra["fonts"]).isdisjoint(source.extra["fonts"])
    for char, index in zip(train.extra["source_label_names"], train.extra["source_label_indices"], strict=True):
        assert index == -1 or source.label_names[index] == char
    assert train.extra["source_label_names"][0] == "α"
    assert all(i >= 0 for i in train.extra["source_label_indices"])  # greek_lower is a whole group
    assert {e.example_id for e in read_all(test)} == {f"tgt-test-{i:06d}".encode() for i in range(25)}


def test_default_source_size_and_spread():
    config = embedded.default_config()
    space = embedded.source_labels(config)
    assert 400 <= len(space.chars) <= 1200 and len(set(space.chars)) == len(space.chars)
    assert {"latin", "greek", "cyrillic", "number", "symbol", "drawing"} == {
        glyphs.GROUPS[g].script for g in space.groups
    }
    assert all(len(fonts) >= config.source.min_fonts for fonts in space.fonts)
    sizes = collections.Counter(space.groups)
    assert sizes["greek_lower"] == 25 and sizes["cyrillic_lower"] == 32 and sizes["math"] == 16
    assert not set(f for fonts in space.fonts for f in fonts) & set(embedded.HELD_OUT_FONTS)


def test_glyphs_are_real_not_the_notdef_box():
    """Every listed (character, font) pair draws something other than the font's missing-glyph box."""
    config = tiny_config()
    config.source.groups = "greek_lower,cyrillic_lower,math,dingbat,box"
    config.source.max_labels_per_group = 0
    space = embedded.source_labels(config)
    for font in ("DejaVuSans", "STIXGeneral", "DejaVuSerif"):
        try:  # Malayalam KA: in none of these fonts, so drawn as the .notdef box (or as nothing)
            missing = np.asarray(glyphs.glyph_mask("\u0d15", font))
        except ValueError:
            missing = np.zeros((0, 0), np.uint8)
        for char, fonts in zip(space.chars, space.fonts, strict=True):
            if font in fonts:
                mask = np.asarray(glyphs.glyph_mask(char, font))
                assert mask.max() > 0
                assert mask.shape != missing.shape or not np.array_equal(mask, missing), (char, font)
    assert "α" not in [c for c, fonts in zip(space.chars, space.fonts, strict=True) if "cmr10" in fonts]
    assert ord("a") in glyphs.font_coverage("cmr10") and ord("α") not in glyphs.font_coverage("cmr10")
    assert ord("+") in glyphs.font_coverage("DejaVuSans") and ord("+") not in glyphs.font_coverage("cmr10")


def test_zipf_counts_and_layout_realise_the_plan():
    rng = np.random.default_rng(0)
    counts = embedded.zipf_counts(300, 20, 150, rng)
    assert counts.min() == 20 and counts.max() == 150 and np.median(counts) < 40
    images = embedded.source_layout(counts, 0.25, rng)
    realised = np.bincount([y for labels in images for y in labels], minlength=300)
    assert np.array_equal(realised, counts)
    assert all(len(set(labels)) == len(labels) for labels in images)
    assert sum(len(labels) == 2 for labels in images) / len(images) == pytest.approx(0.25, abs=0.01)
    assert embedded.source_layout(np.array([3]), 0.5, rng) == [(0,), (0,), (0,)]


def test_bad_config_is_refused(tmp_path):
    config = tiny_config()
    config.source.groups = "digit,klingon"
    with pytest.raises(ValueError, match="klingon"):
        embedded.build_source(str(tmp_path), config)
    config = tiny_config()
    config.target_fonts = "NoSuchFont"
    with pytest.raises(ValueError, match="NoSuchFont"):
        embedded.build_target(str(tmp_path), config)
    assert not os.listdir(tmp_path)


def test_command_line_builds_both_parts(tmp_path):
    args = [
        f"--out={tmp_path}",
        "--config.num_workers=0",
        "--config.source.groups=digit",
        "--config.source.min_images_per_label=1",
        "--config.source.max_images_per_label=2",
        "--config.source.num_shards=1",
        "--config.target.train_per_class=1",
        "--config.target.test_per_class=1",
    ]
    result = subprocess.run([sys.executable, "-m", "data.embedded", *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "img/s" in result.stdout
    assert load_manifest(str(tmp_path / "source")).num_labels == 10
    assert load_manifest(str(tmp_path / "target" / "test")).num_records == 25
