"""Near-duplicate removal (Ngiam et al. 2018, sec. 4.1): drop source images that are near-copies
of any target train or test image, judged by cosine similarity of CNN features.

The caller passes `features_fn(images) -> features` (typically the pre-trained model's
penultimate layer, jit-compiled); images arrive as the evaluation pipeline makes them (central
crop, float32 NHWC in [-1, 1]). Target features are held in memory (targets are small); the
source is streamed batch by batch, so memory does not grow with the corpus. Kept records are
copied byte for byte into a new shard set (same shard names), whose manifest carries the report.

Threshold: a source image is removed when its highest cosine similarity to any target image is
>= `threshold`. The paper chose a "conservative" threshold, meaning one that errs towards
removing: false positives cost a few source images, false negatives leak test images into
pre-training. DEFAULT_THRESHOLD = 0.95 removes resized/re-encoded/lightly edited copies under
penultimate CNN features; lower it (0.9, 0.85) to err further towards removal. The report's
`similarity_counts` (how many source images reach 0.80 ... 0.99) shows what a different
threshold would remove, without another pass.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import ml_collections
import numpy as np
from etils import epath

from data import manifest, paths, pipeline, records, shards

DEFAULT_THRESHOLD = 0.95
REPORT_LEVELS = (0.8, 0.85, 0.9, 0.95, 0.99)
MAX_LISTED_IDS = 10_000
MAX_PAIRS_REMOVED, MAX_PAIRS_KEPT = 6, 3

FeaturesFn = Callable[[np.ndarray], np.ndarray]


class RemovesEverything(ValueError):
    """Every source image reached the thresholds: no source would be left to pre-train on. Raised
    before anything is written, so the prepared source and an earlier output stay as they are."""


@dataclasses.dataclass
class DedupReport:
    """What removal did; stored under `extra["dedup"]` of the output manifest."""

    threshold: float
    source_records: int
    removed: int
    kept: int
    target_dirs: list[str]
    similarity_counts: dict[str, int]
    removed_ids: list[str]  # the first MAX_LISTED_IDS of them
    # a few (source id, target id, target set, similarity, removed): the removed pairs of lowest
    # similarity and the kept ones of highest, for the report's picture
    pairs: list[dict] = dataclasses.field(default_factory=list)
    chroma_threshold: float | None = None  # with the aligned check (verify)


def default_config() -> ml_collections.ConfigDict:
    """`config.dedup`: the stage between prepare and pre-training (launch.stages.stage_dedup)."""
    return ml_collections.ConfigDict(
        {
            "enabled": True,
            "features": "moments",  # FEATURES: "moments" (shift/scale invariant) | "pixels"
            "verify": True,  # candidates by features, then aligned grey + chroma correlations
            "candidates": 10,  # nearest targets by features that the aligned check examines
            # verify: the aligned grey correlation (without: the features' cosine, DEFAULT_THRESHOLD)
            # and the chroma correlation there must both reach these. Measured on the demo's corpus
            # with 200 planted copies among 17,978 other images: 95.5% of the copies removed, 0.089%
            # of the others (16); both margins are thin (README, the dedup stage).
            "threshold": 0.955,
            "chroma_threshold": 0.45,
            "image_size": 32,  # images are compared at this resolution (central crop, as evaluation)
            "batch_size": 128,
        }
    )


def moment_features(images: np.ndarray, grid: int = 16) -> np.ndarray:
    """Features that need no trained network and survive shifts, rescaling and recolouring.

    Per image: grey levels, lightly blurred; "ink" = how far each pixel is from the image's median
    grey, minus a noise floor (3 robust standard deviations), so the background and its noise
    drop out whatever their colour; the ink's centroid and radius of gyration (its first and second
    moments) then fix a `grid` x `grid` sampling window that moves and scales with the content. The
    sampled ink, mean-centred, is the feature: a shifted or rescaled copy samples the same places of
    its content, a recoloured one differs by a contrast factor that the cosine ignores.
    """
    from scipy import ndimage

    images = np.asarray(images, np.float32)
    grey = images.mean(axis=-1)
    _, h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = np.linspace(-2.2, 2.2, grid, dtype=np.float32)
    out = np.zeros((len(grey), grid * grid), np.float32)
    for b, image in enumerate(grey):
        smooth = ndimage.gaussian_filter(image, 0.7)
        deviation = np.abs(smooth - np.median(smooth))
        ink = np.maximum(deviation - 3.0 * 1.4826 * np.median(deviation), 0.0)
        mass = float(ink.sum())
        if mass <= 1e-6:
            continue  # a blank image: zero features, similar to nothing
        cy, cx = float((ink * yy).sum()) / mass, float((ink * xx).sum()) / mass
        radius = max(float(np.sqrt((ink * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / mass)), 0.5)
        coords = np.stack(np.meshgrid(cy + radius * u, cx + radius * u, indexing="ij"))
        sampled = ndimage.map_coordinates(ink, coords, order=1, mode="constant", cval=0.0).ravel()
        out[b] = sampled - sampled.mean()
    return out


def pixel_features(images: np.ndarray, grid: int = 8) -> np.ndarray:
    """Mean-centred `grid` x `grid` grey thumbnails: catches exact and re-encoded copies only."""
    grey = np.asarray(images, np.float32).mean(axis=-1)
    b, h, w = grey.shape
    ys, xs = np.linspace(0, h, grid + 1).astype(int), np.linspace(0, w, grid + 1).astype(int)
    pooled = np.stack(
        [grey[:, ys[i] : ys[i + 1], xs[j] : xs[j + 1]].mean(axis=(1, 2)) for i in range(grid) for j in range(grid)],
        axis=1,
    )
    return pooled - pooled.mean(axis=1, keepdims=True)


# The configurable feature models (`dedup.features`); none needs a trained network.
FEATURES: dict[str, FeaturesFn] = {"moments": moment_features, "pixels": pixel_features}
ALIGN_SCALES = np.round(np.arange(0.9, 1.1001, 0.025), 4)  # rescalings the aligned check searches
ALIGN_SHIFT = 3  # pixels, each way
FLAT_VARIANCE = 1e-4  # per pixel, on the [-1, 1] scale: a window this flat has nothing to correlate


def _grey_chroma(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the channel mean and max - min. Both are unchanged by a permutation of the colour
    channels and move together with one brightness/contrast change, so a recoloured copy keeps them."""
    images = np.asarray(images, np.float32)
    return images.mean(axis=-1), images.max(axis=-1) - images.min(axis=-1)


def _standardise(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Zero mean, unit norm over `axes`; an (almost) flat x becomes 0, similar to nothing."""
    x = x - x.mean(axis=axes, keepdims=True)
    squares = (x * x).sum(axis=axes, keepdims=True)
    size = np.prod([x.shape[a] for a in axes])
    return np.where(squares < FLAT_VARIANCE * size, 0.0, x / np.sqrt(np.maximum(squares, 1e-30)))


def aligned_similarity(source: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grey correlation, chroma correlation) of one source image [H, W, 3] with each of `targets`.

    The verification step: cosine of features finds candidates; this says whether a candidate IS the
    source image moved, resized or recoloured. The source is rescaled by each of ALIGN_SCALES and
    shifted by up to ALIGN_SHIFT px; the alignment with the best grey correlation over the target's
    central part is kept, and the chroma (max - min channel) correlation is taken there too. Grey
    shape alone cannot tell a copy from another rendering of the same simple shape (an iota in a
    similar font correlates 0.95 and more); the chroma pattern of ink, paper and noise is the image's
    own, so a near-duplicate must pass both (`remove_near_duplicates`).
    """
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy import ndimage

    m = ALIGN_SHIFT
    grey, chroma = _grey_chroma(source)
    t_grey, t_chroma = _grey_chroma(targets)
    h, w = grey.shape
    ch, cw = h - 2 * m, w - 2 * m
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    cores = _standardise(t_grey[:, m : h - m, m : w - m], (1, 2))  # [K, ch, cw], zero mean, unit norm

    def warp(image: np.ndarray, scale: float) -> np.ndarray:
        return ndimage.affine_transform(image, [scale, scale], offset=centre - centre * scale, order=1, mode="nearest")

    def window_sums(x: np.ndarray) -> np.ndarray:  # sum over every ch x cw window: [2m+1, 2m+1]
        c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return c[ch:, cw:] - c[:-ch, cw:] - c[ch:, :-cw] + c[:-ch, :-cw]

    corr = np.empty((len(ALIGN_SCALES), 2 * m + 1, 2 * m + 1, len(targets)), np.float32)
    for i, scale in enumerate(ALIGN_SCALES):
        moved = warp(grey, float(scale)).astype(np.float64)
        sums, squares = window_sums(moved), window_sums(moved * moved)
        spread = squares - sums * sums / (ch * cw)  # sum of squared deviations of each window
        flat_window = spread < FLAT_VARIANCE * ch * cw  # no content: correlation undefined, taken as 0
        norm = np.sqrt(np.where(flat_window, 1.0, spread))
        patches = sliding_window_view(moved, (ch, cw)).reshape((2 * m + 1) ** 2, ch * cw)
        # each core has zero mean: sum(window * core) is the covariance
        covariance = (patches @ cores.reshape(len(targets), -1).T).reshape(2 * m + 1, 2 * m + 1, -1)
        corr[i] = np.clip(np.where(flat_window[..., None], 0.0, covariance / norm[..., None]), -1.0, 1.0)
    flat = corr.reshape(-1, len(targets))
    best = flat.argmax(axis=0)
    grey_corr = flat[best, np.arange(len(targets))]
    si, dy, dx = np.unravel_index(best, corr.shape[:3])
    chroma_corr = np.empty(len(targets), np.float32)
    for k in range(len(targets)):
        moved = warp(chroma, float(ALIGN_SCALES[si[k]]))[dy[k] : dy[k] + ch, dx[k] : dx[k] + cw]
        target_core = _standardise(t_chroma[k, m : h - m, m : w - m], (0, 1))
        chroma_corr[k] = float((_standardise(moved, (0, 1)) * target_core).sum())
    return grey_corr, chroma_corr


def _normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32).reshape(len(features), -1)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _image_batches(shard_dir: str, image_size: int, batch_size: int) -> Iterator[np.ndarray]:
    """Float images [b, H, W, 3] in [-1, 1] of the records in file order (padding dropped)."""
    num_classes = max(1, manifest.load_manifest(shard_dir, verify=False).num_labels)
    for batch in pipeline.eval_batches(
        shard_dir,
        global_batch_size=batch_size,
        image_size=image_size,
        num_classes=num_classes,
        process_index=0,
        process_count=1,
    ):
        yield batch["image"][batch["mask"]]


def _feature_batches(shard_dir: str, features_fn: FeaturesFn, image_size: int, batch_size: int, num_classes: int):
    """Yields L2-normalised features of the records in file order (padding dropped)."""
    del num_classes  # read from the manifest
    for images in _image_batches(shard_dir, image_size, batch_size):
        yield _normalise(features_fn(images))


def target_features(
    target_dirs: Sequence[str], features_fn: FeaturesFn, *, image_size: int, batch_size: int = 64
) -> np.ndarray:
    """[num target images, D] L2-normalised features of every target shard set."""
    return _Targets.load(target_dirs, features_fn, image_size, batch_size, keep_images=False).features


def max_similarity(source_features: np.ndarray, targets: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Highest cosine similarity of each (normalised) source row to any (normalised) target row."""
    return nearest(source_features, targets, chunk)[0]


def nearest(source_features: np.ndarray, targets: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(highest cosine similarity, index of that target) of each source row."""
    best = np.full(len(source_features), -np.inf, np.float32)
    arg = np.zeros(len(source_features), np.int64)
    for start in range(0, len(targets), chunk):
        sims = source_features @ targets[start : start + chunk].T
        better = sims.max(axis=1) > best
        arg[better] = start + sims.argmax(axis=1)[better]
        best = np.maximum(best, sims.max(axis=1))
    return best, arg


@dataclasses.dataclass
class _Targets:
    """Every target image's features (and grey image when verifying), id and shard set, in memory."""

    features: np.ndarray
    images: np.ndarray | None  # [N, H, W, 3], kept when verifying
    ids: list[str]
    sets: list[str]

    @classmethod
    def load(cls, target_dirs, features_fn, image_size, batch_size, keep_images) -> _Targets:
        features, kept, ids, sets = [], [], [], []
        for target in target_dirs:
            for images in _image_batches(target, image_size, batch_size):
                features.append(_normalise(features_fn(images)))
                if keep_images:
                    kept.append(images)
            shard_set = manifest.load_manifest(target, verify=False)
            names = [
                records.decode_example(r).example_id.decode() for f in shard_set.files for r in records.iter_records(f)
            ]
            ids += names
            sets += [paths.resolve(target)] * len(names)
        if not features:
            raise ValueError(f"no target images in {list(target_dirs)}")
        return cls(np.concatenate(features), np.concatenate(kept) if keep_images else None, ids, sets)

    def score(
        self, images: np.ndarray, features_fn: FeaturesFn, candidates: int, thresholds: tuple[float, float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarity, chroma similarity, nearest target) per source image: the features' cosine
        (chroma +inf), or with `images` kept `aligned_similarity` with each of the `candidates` most
        similar targets by features, keeping the one that clears the (grey, chroma) `thresholds` by
        the widest margin."""
        feats = _normalise(features_fn(images))
        if self.images is None:
            best, arg = nearest(feats, self.features)
            return best, np.full(len(images), np.inf, np.float32), arg
        sims = feats @ self.features.T
        k = min(candidates, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        grey = np.zeros(len(images), np.float32)
        chroma = np.zeros(len(images), np.float32)
        arg = np.zeros(len(images), np.int64)
        for i in range(len(images)):
            g, c = aligned_similarity(images[i], self.images[top[i]])
            j = int(np.argmax(np.minimum(g - thresholds[0], c - thresholds[1])))
            grey[i], chroma[i], arg[i] = g[j], c[j], top[i][j]
        return grey, chroma, arg


def remove_near_duplicates(
    source_dir: str,
    target_dirs: Sequence[str],
    out_dir: str,
    *,
    features_fn: FeaturesFn,
    image_size: int,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 64,
    verify: bool = False,
    candidates: int = 10,
    chroma_threshold: float = 0.45,
    overwrite: bool = False,
) -> DedupReport:
    """Writes `out_dir`: the source shard set minus near-duplicates of the targets; returns the report.

    One streaming pass over the source (a batch of images at a time; kept per example: its
    similarity and nearest target). Without `verify` an image goes when the features' cosine with a
    target reaches `threshold`; with it, when `aligned_similarity` with one of its `candidates`
    nearest targets by features reaches `threshold` in grey and `chroma_threshold` in chroma.
    """
    done = os.path.join(out_dir, manifest.MANIFEST_NAME)
    if epath.Path(done).exists() and not overwrite:
        return DedupReport(**manifest.load_manifest(out_dir, verify=False).extra["dedup"])
    source = manifest.load_manifest(source_dir)
    targets = _Targets.load(target_dirs, features_fn, image_size, batch_size, keep_images=verify)
    thresholds = (float(threshold), float(chroma_threshold))
    scored = [
        targets.score(images, features_fn, candidates, thresholds)
        for images in _image_batches(source_dir, image_size, batch_size)
    ]
    sims = np.concatenate([s[0] for s in scored]) if scored else np.zeros(0, np.float32)
    chroma = np.concatenate([s[1] for s in scored]) if scored else np.zeros(0, np.float32)
    nearest_target = np.concatenate([s[2] for s in scored]) if scored else np.zeros(0, np.int64)
    if len(sims) != source.num_records:
        raise RuntimeError(f"{source_dir}: featurised {len(sims)} of {source.num_records} records")
    remove = (sims >= threshold) & (chroma >= chroma_threshold)
    if len(remove) and remove.all():
        raise RemovesEverything(
            f"it would remove all {len(remove)} source images as near-duplicates of the target "
            f"(the least similar reaches {float(sims.min()):.3f})"
        )
    removed_order = np.flatnonzero(remove)[np.argsort(sims[remove], kind="stable")][:MAX_PAIRS_REMOVED]
    kept_order = np.flatnonzero(~remove)[np.argsort(-sims[~remove], kind="stable")][:MAX_PAIRS_KEPT]
    shown: dict[int, str | None] = {int(i): None for i in [*removed_order, *kept_order]}

    epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
    names = [os.path.basename(path) for path in source.files]  # output shard k filters source shard k
    removed_ids: list[str] = []
    position = 0
    for path, name in zip(source.files, names, strict=True):
        label_counts = np.zeros(source.num_labels, np.int64)

        def kept(path: str = path, label_counts: np.ndarray = label_counts) -> Iterator[bytes]:
            nonlocal position
            for data in records.iter_records(path):
                drop = remove[position]
                example = records.decode_example(data)
                if position in shown:
                    shown[position] = example.example_id.decode(errors="replace")
                position += 1
                if drop:
                    if len(removed_ids) < MAX_LISTED_IDS:
                        removed_ids.append(example.example_id.decode(errors="replace"))
                    continue
                for label in example.labels:
                    label_counts[label] += 1
                yield data

        out_path = os.path.join(out_dir, name)
        shards.finish_shard(out_path, records.write_tfrecord(out_path, kept()), label_counts)
    written = shards.read_done(out_dir, names)
    pairs = [
        {
            "source_id": shown[i],
            "target_id": targets.ids[nearest_target[i]],
            "target_dir": targets.sets[nearest_target[i]],
            "similarity": round(float(sims[i]), 4),
            "chroma": round(float(chroma[i]), 4) if np.isfinite(chroma[i]) else None,
            "removed": bool(remove[i]),
        }
        for i in shown
    ]
    report = DedupReport(
        threshold=float(threshold),
        source_records=source.num_records,
        removed=int(remove.sum()),
        kept=sum(int(d["records"]) for d in written),
        target_dirs=[paths.resolve(t) for t in target_dirs],
        similarity_counts={f"{level:.2f}": int((sims >= level).sum()) for level in REPORT_LEVELS},
        removed_ids=removed_ids,
        pairs=pairs,
        chroma_threshold=float(chroma_threshold) if verify else None,
    )
    shards.write_manifest(
        out_dir,
        names,
        written,
        source.label_names,
        source.hierarchy,
        {**source.extra, "dedup": dataclasses.asdict(report)},
    )
    return report


def plot_pairs(report: DedupReport, source_dir: str, path: str) -> None:
    """A PNG of the report's pairs: source image beside its nearest target image, similarity above."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from data import atomic

    wanted: dict[str, set[str]] = {}
    for pair in report.pairs:
        wanted.setdefault(source_dir, set()).add(pair["source_id"])
        wanted.setdefault(pair["target_dir"], set()).add(pair["target_id"])
    images: dict[tuple[str, str], bytes] = {}
    for directory, ids in wanted.items():
        for f in manifest.load_manifest(directory, verify=False).files:
            for data in records.iter_records(f):
                example = records.decode_example(data)
                key = example.example_id.decode(errors="replace")
                if key in ids:
                    images[(directory, key)] = example.image
    n = max(1, len(report.pairs))
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3.0), squeeze=False)
    for k, pair in enumerate(report.pairs):
        for row, where in enumerate([(source_dir, pair["source_id"]), (pair["target_dir"], pair["target_id"])]):
            ax = axes[row][k]
            ax.axis("off")
            if where in images:
                ax.imshow(Image.open(io.BytesIO(images[where])).convert("RGB"))
        verdict = "removed" if pair["removed"] else "kept"
        scores = f"{pair['similarity']:.3f}" + (f" / {pair['chroma']:.2f}" if pair.get("chroma") is not None else "")
        axes[0][k].set_title(f"{verdict}\n{scores}", fontsize=7)
    axes[0][0].text(-0.3, 0.5, "source", transform=axes[0][0].transAxes, rotation=90, va="center", fontsize=7)
    axes[1][0].text(-0.3, 0.5, "target", transform=axes[1][0].transAxes, rotation=90, va="center", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
