"""The embedded default data: a glyph source corpus and a fine-grained Greek target task.

Built offline from the fonts matplotlib installs, deterministically for a seed (same seed, same
bytes), in well under a minute for the default size on 2 cores.

Source: several hundred labels over Latin, Greek, Cyrillic, digits and symbol blocks, with the
hierarchy script -> group -> character ("greek" -> "greek_lower" -> "α"). Label counts are
Zipf-like (seeded permutation of ranks) so Ps(y) is far from uniform, and a quarter of the
images hold two glyphs side by side and carry both labels (1.25 labels per image, close to
JFT's 1.26).

Target: the lowercase Greek letters, K classes with their own names ("alpha", ...), few
training images per class, rendered only in font variants the source never uses (bold
italics) and in a different colour/noise regime (dark ink on noisy paper). Only a small part
of the source (Greek and its look-alikes) is relevant to it, which is what target-conditioned
pre-training has to find.

Usage: `python -m data.embedded --out=DIR [--what=source,target] [--config.source.num_shards=4]`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import multiprocessing
import os
import sys
import time
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from data import glyphs, shards
from data.manifest import ShardSet
from data.records import Example, encode_example

SOURCE_STREAM, TRAIN_STREAM, TEST_STREAM = 0, 1, 2
HELD_OUT_FONTS = ("DejaVuSans-BoldOblique", "DejaVuSerif-BoldItalic", "DejaVuSansMono-BoldOblique", "STIXGeneralBolIta")


def _style_config(palette: str, noise: float, blur_prob: float, clutter_prob: float) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            palette=palette,
            em_min=0.6,
            em_max=0.95,
            max_rotation_deg=12.0,
            min_contrast=0.4,
            noise_std_max=noise,
            blur_prob=blur_prob,
            blur_radius_max=1.0,
            clutter_prob=clutter_prob,
            supersample=2,
        )
    )


def default_config() -> ml_collections.ConfigDict:
    """Default embedded data: ~530 source labels, ~12k source images, Greek-lowercase target."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.image_size = 32  # stored pixels; the input pipeline resizes to the model's resolution
    config.num_workers = 2  # render processes; 0 renders in this process
    config.chunk_size = 256  # images per worker task
    config.target_fonts = ",".join(HELD_OUT_FONTS)  # never used by the source
    config.source = ml_collections.ConfigDict(
        dict(
            groups=",".join(glyphs.GROUPS),
            max_labels_per_group=16,  # larger groups are subsampled (seeded) to this many labels...
            whole_groups="latin_upper,latin_lower,digit,greek_upper,greek_lower,cyrillic_upper,cyrillic_lower",
            min_fonts=3,  # a label needs at least this many source fonts that draw it
            min_images_per_label=20,
            max_images_per_label=150,
            multi_label_fraction=0.25,  # images with two glyphs (and two labels)
            # Near-duplicates of target (train and test) images planted in the source, shifted,
            # rescaled and recoloured, ids "planted-<target id>": what the dedup stage must remove.
            planted_duplicates=0,
            num_shards=8,
            style=_style_config("random", noise=0.05, blur_prob=0.2, clutter_prob=0.15),
        )
    )
    config.target = ml_collections.ConfigDict(
        dict(
            groups="greek_lower",
            train_per_class=10,  # few-shot: hard from scratch, where pre-trained features matter
            test_per_class=40,
            train_shards=1,
            test_shards=1,
            style=_style_config("paper", noise=0.10, blur_prob=0.5, clutter_prob=0.3),
        )
    )
    return config


@dataclasses.dataclass(frozen=True)
class Labels:
    """One label space: characters, their group, and the fonts allowed to draw each."""

    chars: list[str]
    groups: list[str]
    fonts: list[tuple[str, ...]]


def _split_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _coverage(fonts: Sequence[str]) -> dict[str, frozenset[int]]:
    return {font: glyphs.font_coverage(font) for font in fonts}


def _check_groups(names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in glyphs.GROUPS]
    if unknown:
        raise ValueError(f"unknown glyph groups {unknown}; known: {sorted(glyphs.GROUPS)}")


def _fonts(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(source fonts, target fonts): disjoint, so the target style is never seen in pre-training."""
    target = _split_names(config.target_fonts)
    unknown = [font for font in target if font not in glyphs.ALL_FONTS]
    if unknown:
        raise ValueError(f"unknown target fonts {unknown}; known: {list(glyphs.ALL_FONTS)}")
    return [font for font in glyphs.ALL_FONTS if font not in target], target


def source_labels(config: ml_collections.ConfigDict) -> Labels:
    """The source label space: groups in config order, code point order within a group."""
    names = _split_names(config.source.groups)
    _check_groups(names)
    source_fonts, _ = _fonts(config)
    chars, groups, fonts = [], [], []
    for name in names:
        members = glyphs.group_members(glyphs.GROUPS[name])
        coverage = _coverage(source_fonts)
        usable = []
        for code in members:
            drawn_by = tuple(font for font in source_fonts if code in coverage[font])
            if len(drawn_by) >= config.source.min_fonts:
                usable.append((code, drawn_by))
        cap = config.source.max_labels_per_group
        if cap and len(usable) > cap and name not in _split_names(config.source.whole_groups):
            # Seeded by the group's name, so adding or removing other groups keeps this choice.
            rng = np.random.default_rng([config.seed, zlib.crc32(name.encode())])
            usable = [usable[i] for i in sorted(rng.choice(len(usable), cap, replace=False))]
        for code, drawn_by in usable:
            chars.append(chr(code))
            groups.append(name)
            fonts.append(drawn_by)
    if not chars:
        raise ValueError("the source configuration selects no labels")
    return Labels(chars, groups, fonts)


def _short_names(chars: Sequence[str]) -> list[str]:
    """Unicode names without their shared leading words: 'GREEK SMALL LETTER ALPHA' -> 'alpha'."""
    words = [unicodedata.name(char).lower().split() for char in chars]
    shared = 0
    while len(words) > 1 and all(len(w) > shared + 1 and w[shared] == words[0][shared] for w in words):
        shared += 1
    return ["_".join(w[shared:]) for w in words]


def target_labels(config: ml_collections.ConfigDict) -> tuple[list[str], Labels]:
    """(class names, label space) of the target task; every class must be drawable in a target font."""
    names = _split_names(config.target.groups)
    _check_groups(names)
    _, target_fonts = _fonts(config)
    class_names, chars, groups, fonts = [], [], [], []
    for name in names:
        members = glyphs.group_members(glyphs.GROUPS[name])
        coverage = _coverage(target_fonts)
        group_chars = []
        for code in members:
            drawn_by = tuple(font for font in target_fonts if code in coverage[font])
            if not drawn_by:
                raise ValueError(f"no target font draws {chr(code)!r} (U+{code:04X}) of group {name}")
            group_chars.append(chr(code))
            fonts.append(drawn_by)
            groups.append(name)
        chars.extend(group_chars)
        short = _short_names(group_chars)
        class_names.extend(short if len(names) == 1 else [f"{name}:{s}" for s in short])
    return class_names, Labels(chars, groups, fonts)


def zipf_counts(num_labels: int, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Images per label: `high * rank**-s` from `high` (rank 1) down to `low` (last rank), ranks permuted."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < min_images_per_label <= max_images_per_label, got {low}, {high}")
    ranks = rng.permutation(num_labels) + 1
    exponent = math.log(high / low) / math.log(num_labels) if num_labels > 1 else 0.0
    return np.maximum(low, np.round(high * ranks.astype(np.float64) ** -exponent)).astype(np.int64)


def source_layout(counts: np.ndarray, multi_label_fraction: float, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Labels of each source image: every label appears in exactly `counts[y]` images, never twice in one.

    A fraction `f` of images hold two glyphs, so with G glyph instances there are P = f G / (1 + f)
    pairs. Same-label pairs are repaired by swapping with a single of another label.
    """
    if not 0 <= multi_label_fraction < 1:
        raise ValueError(f"multi_label_fraction must be in [0, 1), got {multi_label_fraction}")
    instances = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(instances)
    num_pairs = int(round(multi_label_fraction * len(instances) / (1 + multi_label_fraction)))
    left, right = instances[0 : 2 * num_pairs : 2], instances[1 : 2 * num_pairs : 2]
    singles = instances[2 * num_pairs :]
    for i in np.flatnonzero(left == right):
        swaps = np.flatnonzero(singles != left[i])
        if len(swaps):
            j = swaps[rng.integers(len(swaps))]
            right[i], singles[j] = singles[j], right[i]
    images = [(int(a), int(b)) if a != b else (int(a),) for a, b in zip(left, right, strict=True)]
    images += [(int(a),) for a, b in zip(left, right, strict=True) if a == b]  # unrepairable pair: two singles
    images += [(int(s),) for s in singles]
    return [images[i] for i in rng.permutation(len(images))]


def _style(config: ml_collections.ConfigDict) -> glyphs.Style:
    return glyphs.Style(
        palette=config.palette,
        em_range=(config.em_min, config.em_max),
        max_rotation_deg=config.max_rotation_deg,
        min_contrast=config.min_contrast,
        noise_std_max=config.noise_std_max,
        blur_prob=config.blur_prob,
        blur_radius_max=config.blur_radius_max,
        clutter_prob=config.clutter_prob,
        supersample=config.supersample,
    )


@dataclasses.dataclass(frozen=True)
class _Item:
    example_id: bytes
    labels: tuple[int, ...]
    glyphs: list[tuple[str, str]]
    seed_words: list[int]


def _items(prefix: str, images: Sequence[tuple[int, ...]], space: Labels, seed: int, stream: int) -> list[_Item]:
    """Per example: its id, labels, and (char, font) glyphs, fonts drawn from `[seed, stream, index]`."""
    items = []
    for index, labels in enumerate(images):
        rng = np.random.default_rng([seed, stream, index])
        drawn = [(space.chars[y], space.fonts[y][rng.integers(len(space.fonts[y]))]) for y in labels]
        items.append(_Item(f"{prefix}-{index:06d}".encode(), tuple(labels), drawn, [seed, stream, index, 1]))
    return items


def _render(
    items: Sequence[_Item], style: glyphs.Style, config: ml_collections.ConfigDict, name: str
) -> Iterator[bytes]:
    """PNG bytes of the items in order, from a spawn pool (safe when JAX threads run in this process)."""
    size, chunk = config.image_size, max(1, config.chunk_size)
    tasks = [
        (style, size, [(item.seed_words, item.glyphs) for item in items[start : start + chunk]])
        for start in range(0, len(items), chunk)
    ]
    start, last_print, done = time.time(), 0.0, 0

    def progress(count: int) -> None:
        nonlocal last_print, done
        done += count
        now = time.time()
        if now - last_print >= 2.0 or done == len(items):
            rate = done / max(now - start, 1e-9)
            eta = (len(items) - done) / max(rate, 1e-9)
            print(f"[embedded] {name}: {done}/{len(items)} images, {rate:.0f} img/s, ETA {eta:.0f}s", flush=True)
            last_print = now

    if config.num_workers <= 0 or len(tasks) <= 1:
        for task in tasks:
            pngs = glyphs.render_png_chunk(task)
            progress(len(pngs))
            yield from pngs
        return
    with multiprocessing.get_context("spawn").Pool(config.num_workers) as pool:
        for pngs in pool.imap(glyphs.render_png_chunk, tasks):
            progress(len(pngs))
            yield from pngs


def _write_set(
    out_dir: str,
    prefix: str,
    items: Sequence[_Item],
    pngs: Iterator[bytes],
    num_shards: int,
    **card: Any,
) -> ShardSet:
    """Contiguous, nearly equal shards `prefix-0000i-of-0000n.tfrecord` (`data.shards`), then the manifest.

    Every shard is rendered again (no resume): the PNGs come from one stream in item order.
    """
    num_shards = max(1, min(num_shards, len(items)))
    bounds = np.linspace(0, len(items), num_shards + 1).round().astype(int)

    def shard_records(shard: int) -> Iterator[tuple[bytes, tuple[int, ...]]]:
        for item in items[bounds[shard] : bounds[shard + 1]]:
            example = Example(image=next(pngs), labels=item.labels, example_id=item.example_id)
            yield encode_example(example), item.labels

    return shards.write_shard_set(out_dir, shard_records, num_shards=num_shards, prefix=prefix, resume=False, **card)


def _interleave(
    items: list[_Item], pngs: Iterator[bytes], extra: list[tuple[_Item, bytes]], slots: set[int]
) -> tuple[list[_Item], Iterator[bytes]]:
    """`items` with `extra` at the output positions `slots` (in order), and the matching PNG stream."""
    merged, rest, added = [], iter(items), iter(extra)
    for position in range(len(items) + len(extra)):
        merged.append(next(added)[0] if position in slots else next(rest))
    extra_pngs = iter([png for _, png in extra])

    def stream() -> Iterator[bytes]:
        for position in range(len(merged)):
            yield next(extra_pngs) if position in slots else next(pngs)

    return merged, stream()


def _hierarchy(groups: Sequence[str], names: Sequence[str]) -> dict[str, list[str]]:
    """script -> groups, group -> label names, in first-seen order."""
    tree: dict[str, list[str]] = {}
    for group, name in zip(groups, names, strict=True):
        script = glyphs.GROUPS[group].script
        if group not in tree.setdefault(script, []):
            tree[script].append(group)
        tree.setdefault(group, []).append(name)
    return tree


def _descriptions(chars: Sequence[str]) -> list[str]:
    return [f"U+{ord(c):04X} {unicodedata.name(c)}" for c in chars]


def _recorded_config(config: ml_collections.ConfigDict) -> dict:
    """The config as the manifest records it: without the knobs that cannot change a byte."""
    recorded = config.to_dict()
    for key in ("num_workers", "chunk_size"):
        recorded.pop(key)
    return recorded


def near_duplicate(png: bytes, rng: np.random.Generator) -> bytes:
    """A shifted (up to 2 px), rescaled (0.9-1.1x) and recoloured copy of a PNG image.

    Recolouring permutes the colour channels and jitters brightness and contrast, so the copy is
    not the same pixels in any channel; the border left by the shift/scale takes the median colour.
    """
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)
    h, w, _ = image.shape
    scale = rng.uniform(0.9, 1.1)
    dx, dy = rng.integers(-2, 3, size=2)
    fill = tuple(int(v) for v in np.median(image.reshape(-1, 3), axis=0))
    # output (x, y) samples input ((x - cx - dx) / scale + cx, ...): zoom about the centre, then shift
    cx, cy = (w - 1) / 2, (h - 1) / 2
    coeffs = (1 / scale, 0, cx - (cx + dx) / scale, 0, 1 / scale, cy - (cy + dy) / scale)
    moved = Image.fromarray(image.astype(np.uint8)).transform(
        (w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=fill
    )
    pixels = np.asarray(moved, np.float32)[..., rng.permutation(3)]
    pixels = (pixels - 128.0) * rng.uniform(0.8, 1.2) + 128.0 + rng.uniform(-25, 25)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _target_items(config: ml_collections.ConfigDict) -> dict[str, list[_Item]]:
    """The target's items per split, exactly as `build_target` renders them."""
    class_names, space = target_labels(config)
    out = {}
    for split, stream, per_class in (
        ("train", TRAIN_STREAM, config.target.train_per_class),
        ("test", TEST_STREAM, config.target.test_per_class),
    ):
        rng = np.random.default_rng([config.seed, stream])
        labels = np.repeat(np.arange(len(class_names)), per_class)
        images = [(int(y),) for y in labels[rng.permutation(len(labels))]]
        out[split] = _items(f"tgt-{split}", images, space, config.seed, stream)
    return out


def _planted(config: ml_collections.ConfigDict, space: Labels) -> list[tuple[_Item, bytes]]:
    """`source.planted_duplicates` near-copies of seeded target images, labelled as their character
    in the source (label 0 where the source lacks it)."""
    count = int(config.source.planted_duplicates)
    if count <= 0:
        return []
    candidates = [item for items in _target_items(config).values() for item in items]
    rng = np.random.default_rng([config.seed, SOURCE_STREAM, 0x91A47])
    chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), min(count, len(candidates)), replace=False))]
    render_config = ml_collections.ConfigDict({**config.to_dict(), "num_workers": 0})
    pngs = list(_render(chosen, _style(config.target.style), render_config, "planted"))
    index = {char: i for i, char in enumerate(space.chars)}
    out = []
    for item, png in zip(chosen, pngs, strict=True):
        char = item.glyphs[0][0]
        planted = _Item(b"planted-" + item.example_id, (index.get(char, 0),), item.glyphs, item.seed_words)
        out.append((planted, near_duplicate(png, rng)))
    return out


def build_source(out_dir: str, config: ml_collections.ConfigDict) -> ShardSet:
    """Renders the source corpus into `out_dir` (TFRecord shards, then the manifest); returns its ShardSet."""
    began = time.time()
    space = source_labels(config)
    rng = np.random.default_rng([config.seed, SOURCE_STREAM])
    counts = zipf_counts(len(space.chars), config.source.min_images_per_label, config.source.max_images_per_label, rng)
    images = source_layout(counts, config.source.multi_label_fraction, rng)
    items = _items("src", images, space, config.seed, SOURCE_STREAM)
    pngs = _render(items, _style(config.source.style), config, "source")
    planted = _planted(config, space)
    if planted:  # spread at seeded positions among the rendered images
        slots = np.random.default_rng([config.seed, SOURCE_STREAM, 0x5107]).choice(
            len(items) + len(planted), len(planted), replace=False
        )
        items, pngs = _interleave(items, pngs, planted, set(slots.tolist()))
    label_counts = np.bincount([y for labels in images for y in labels], minlength=len(space.chars))
    assert np.array_equal(label_counts, counts), "layout must realise the planned label counts"
    source_fonts, target_fonts = _fonts(config)
    stats = dict(
        num_images=len(items),
        num_labels=len(space.chars),
        num_glyphs=int(counts.sum()),
        labels_per_image=round(float(counts.sum()) / len(images), 4),
        multi_label_images=sum(len(labels) > 1 for labels in images),
        planted_duplicates=len(planted),
        images_per_label_min=int(counts.min()),
        images_per_label_median=float(np.median(counts)),
        images_per_label_max=int(counts.max()),
    )
    source = _write_set(
        out_dir,
        "source",
        items,
        pngs,
        config.source.num_shards,
        label_names=space.chars,
        hierarchy=_hierarchy(space.groups, space.chars),
        extra=dict(
            dataset="embedded_glyphs/source",
            config=_recorded_config(config),
            stats=stats,
            label_descriptions=_descriptions(space.chars),
            label_groups=space.groups,
            fonts=source_fonts,
            held_out_fonts=target_fonts,
        ),
    )
    print(
        f"[embedded] source: {stats['num_images']} images, {stats['num_labels']} labels, "
        f"{stats['labels_per_image']} labels/image in {time.time() - began:.1f}s -> {out_dir}",
        flush=True,
    )
    return source


def build_target(out_dir: str, config: ml_collections.ConfigDict) -> dict[str, ShardSet]:
    """Renders the target task into `out_dir/train` and `out_dir/test`; returns their ShardSets.

    The manifests record each class's source label (name and index in the source built from the same
    config, -1 where the source lacks it) under `extra`, for analysis only.
    """
    class_names, space = target_labels(config)
    source_index = {char: i for i, char in enumerate(source_labels(config).chars)}
    _, target_fonts = _fonts(config)
    splits = {}
    target_items = _target_items(config)
    for split, num_shards in (("train", config.target.train_shards), ("test", config.target.test_shards)):
        began = time.time()
        items = target_items[split]
        split_dir = os.path.join(out_dir, split)
        pngs = _render(items, _style(config.target.style), config, f"target/{split}")
        splits[split] = _write_set(
            split_dir,
            split,
            items,
            pngs,
            num_shards,
            label_names=class_names,
            hierarchy={
                group: [n for n, g in zip(class_names, space.groups, strict=True) if g == group]
                for group in dict.fromkeys(space.groups)
            },
            extra=dict(
                dataset=f"embedded_glyphs/target/{split}",
                config=_recorded_config(config),
                source_label_names=space.chars,
                source_label_indices=[source_index.get(char, -1) for char in space.chars],
                label_descriptions=_descriptions(space.chars),
                fonts=target_fonts,
            ),
        )
        print(
            f"[embedded] target/{split}: {len(items)} images, {len(class_names)} classes in {time.time() - began:.1f}s",
            flush=True,
        )
    return splits


def main(argv: Sequence[str]) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    flags.DEFINE_string("out", None, "output directory; gets source/ and target/{train,test}/", required=True)
    flags.DEFINE_list("what", ["source", "target"], "which parts to build")
    config_flags.DEFINE_config_dict("config", default_config(), "embedded data configuration")

    def run(_: list[str]) -> None:
        unknown = set(flags.FLAGS.what) - {"source", "target"}
        if unknown:
            raise app.UsageError(f"--what: unknown parts {sorted(unknown)}")
        config = flags.FLAGS.config
        if "source" in flags.FLAGS.what:
            build_source(os.path.join(flags.FLAGS.out, "source"), config)
        if "target" in flags.FLAGS.what:
            build_target(os.path.join(flags.FLAGS.out, "target"), config)

    app.run(run, argv=list(argv))


if __name__ == "__main__":
    main(sys.argv)
