"""The grain input pipeline: training iterator, evaluation batches, prefetch to device.

Training: MapDataset.source(shard set) -> this process's contiguous slice of the index space ->
global shuffle (reseeded each epoch) -> repeat -> decode + augment (threads, optionally worker
processes) -> batch, images left uint8 (the train step maps them to float32 [-1, 1] on the device,
`augment.to_float`: a quarter of the bytes to move). Every step is index based, so a grain iterator
state (a few integers) resumes the stream exactly. Evaluation: each process takes its slice in
order, central crop, and pads its last batches (`mask` False) so that every process yields the
same number of batches and every example is seen exactly once.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import queue
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import grain
import jax
import numpy as np
from absl import flags

from data import augment as augment_lib
from data import manifest, records
from data.sources import ShardSetSource

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Stands in for a corrupt record between decoding and the skip filter."""

    path: str
    index: int
    reason: str


class CorruptLog:
    """Counts the records skipped with `skip_corrupt=True`, so none is dropped silently.

    The filter runs in the main process (after worker processes), so the count is exact.
    """

    max_entries = 100

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.entries: list[Skipped] = []

    def add(self, skipped: Skipped) -> None:
        with self._lock:
            self.count += 1
            if len(self.entries) < self.max_entries:
                self.entries.append(skipped)
        log.warning("skipping corrupt record: %s: record %d: %s", skipped.path, skipped.index, skipped.reason)


SKIPPED = CorruptLog()
"""Process-wide log of skipped records; the trainer reports `SKIPPED.count`."""


@dataclasses.dataclass(frozen=True)
class _Preprocess:
    """Parses a record and preprocesses its image; picklable for grain worker processes."""

    source: ShardSetSource
    image_size: int
    num_classes: int
    train: bool
    skip_corrupt: bool
    flip: bool = True
    min_crop_area: float = augment_lib.DEFAULT_AREA_RANGE[0]
    second_view: bool = False  # contrastive pre-training: a second, independent augmentation ("image2")

    def __post_init__(self) -> None:
        records.example_proto()  # the proto's first import here, in the caller's thread, not in grain's readers

    def __call__(self, item: tuple[int, bytes] | Skipped, rng: np.random.Generator | None = None):
        if isinstance(item, Skipped):  # a bad CRC from _SafeSource, on its way to the filter
            return item
        index, data = item
        try:
            example = records.decode_example(data)
        except Exception as err:  # protobuf raises its own DecodeError
            return self._corrupt(index, f"undecodable example ({err})")
        try:
            if self.train:
                assert rng is not None, "training preprocessing is a random map: grain passes the rng"
                image = augment_lib.train_image(
                    example.image, self.image_size, rng, flip=self.flip, area_range=(self.min_crop_area, 1.0)
                )
                if self.second_view:
                    view2 = augment_lib.train_image(
                        example.image, self.image_size, rng, flip=self.flip, area_range=(self.min_crop_area, 1.0)
                    )
            else:
                image = augment_lib.eval_image(example.image, self.image_size)
        except (OSError, ValueError, SyntaxError) as err:  # what PIL raises on bad image data
            return self._corrupt(index, f"undecodable image ({err})")
        labels = np.zeros((self.num_classes,), np.float32)
        for label in example.labels:
            if not 0 <= label < self.num_classes:
                path, local = self.source.locate(index)
                raise ValueError(f"{path}: record {local}: label {label} not in [0, {self.num_classes})")
            labels[label] = 1.0
        views = {"image2": view2} if self.train and self.second_view else {}
        return {
            "image": image,
            **views,
            "label": np.int32(example.labels[0] if example.labels else -1),
            "labels": labels,
            "weight": np.float32(1.0 if example.weight is None else example.weight),
        }

    def _corrupt(self, index: int, reason: str) -> Skipped:
        path, local = self.source.locate(index)
        if not self.skip_corrupt:
            raise records.CorruptRecordError(path, local, reason)
        return Skipped(path, local, reason)


class _SafeSource:
    """Wraps the source so a bad CRC becomes a `Skipped` element instead of an exception."""

    def __init__(self, source: ShardSetSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            return self.source[index]
        except records.CorruptRecordError as err:
            return Skipped(err.path, err.index, err.reason)


def _keep(element: Any) -> bool:
    if isinstance(element, Skipped):
        SKIPPED.add(element)
        return False
    return True


def _to_float(batch: Batch) -> Batch:
    return {**batch, **{k: augment_lib.to_float(batch[k]) for k in ("image", "image2") if k in batch}}


def _process_split(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} not in [0, {count})")
    return index, count


def _per_process_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} not divisible by {process_count} processes")
    return global_batch_size // process_count


def _open(shard_dir: str, verify: bool) -> ShardSetSource:
    shard_set = manifest.load_manifest(shard_dir, verify=verify)
    source = ShardSetSource(shard_set.files)
    if source.record_counts != shard_set.record_counts:
        raise manifest.ManifestError(
            f"{shard_dir}: record counts {source.record_counts} differ from the manifest's {shard_set.record_counts}"
        )
    return source


def _read_options(threads: int, per_process: int) -> grain.ReadOptions:
    """Two batches of read-ahead, capped: 512 decoded 299px images are about 140 MB."""
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, min(2 * per_process, 512)))


def _slice(n: int, index: int, count: int) -> slice:
    """Contiguous, disjoint slices covering [0, n) exactly once across processes."""
    return slice(n * index // count, n * (index + 1) // count)


def train_iterator(
    shard_dir: str,
    *,
    global_batch_size: int,
    image_size: int,
    seed: int,
    num_classes: int,
    augment: bool = True,
    flip: bool = True,
    min_crop_area: float = augment_lib.DEFAULT_AREA_RANGE[0],
    num_epochs: int | None = None,
    worker_count: int = 0,
    read_threads: int = 8,
    skip_corrupt: bool = False,
    verify: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    second_view: bool = False,
) -> grain.DatasetIterator:
    """Per-process training batches {image, label, labels, weight}; `get_state`/`set_state` resume exactly.
    Images are uint8 (`augment.to_float` gives the models' float32 [-1, 1]; the train step applies it on
    the device). `second_view` (with `augment`) adds "image2", a second augmentation of each image
    (contrastive).

    Deterministic for (seed, worker_count), and the same global batches for any process count. `verify`
    checks the manifest's
    sha256 of every shard first (a full read of the data; turn off for very large corpora).
    """
    pindex, pcount = _process_split(process_index, process_count)
    per_process = _per_process_batch(global_batch_size, pcount)
    source = _open(shard_dir, verify)
    if len(source) < pcount:
        raise ValueError(f"{shard_dir}: {len(source)} records cannot feed {pcount} processes")
    ds = grain.MapDataset.source(_SafeSource(source) if skip_corrupt else source)
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    if augment:  # seeded per element of the global stream: the same crop whichever process reads it
        prep = _Preprocess(source, image_size, num_classes, True, skip_corrupt, flip, min_crop_area, second_view)
        ds = ds.random_map(prep, seed=(seed * 7919 + 1) % 2**32)
    else:
        ds = ds.map(_Preprocess(source, image_size, num_classes, False, skip_corrupt))
    # Process p takes elements p, p + P, ...: its k-th batch and the other processes' k-th batches are
    # together exactly the k-th global batch of a one-process run (a disjoint part each), so the job
    # trains on the same batches whatever the process count.
    ds = ds[pindex::pcount]
    it = ds.to_iter_dataset(_read_options(read_threads, per_process))
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():  # grain reads absl flags; outside absl.app use defaults
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=min(per_process, 256))
        )
    if skip_corrupt:
        it = it.filter(_keep)
    return iter(it.batch(per_process, drop_remainder=True))


def _padding(n: int, image_size: int, num_classes: int) -> Batch:
    return {
        "image": np.zeros((n, image_size, image_size, 3), np.uint8),
        "label": np.zeros((n,), np.int32),
        "labels": np.zeros((n, num_classes), np.float32),
        "weight": np.zeros((n,), np.float32),
    }


def eval_batches(
    shard_dir: str,
    *,
    global_batch_size: int,
    image_size: int,
    num_classes: int,
    read_threads: int = 8,
    skip_corrupt: bool = False,
    verify: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
    """Per-process eval batches with `mask`; every process yields the same number of batches."""
    pindex, pcount = _process_split(process_index, process_count)
    per_process = _per_process_batch(global_batch_size, pcount)
    source = _open(shard_dir, verify)
    num_batches = math.ceil(math.ceil(len(source) / pcount) / per_process)
    ds = grain.MapDataset.source(_SafeSource(source) if skip_corrupt else source)
    ds = ds.slice(_slice(len(source), pindex, pcount))
    ds = ds.map(_Preprocess(source, image_size, num_classes, False, skip_corrupt))
    it = ds.to_iter_dataset(_read_options(read_threads, per_process))
    if skip_corrupt:
        it = it.filter(_keep)
    elements = iter(it)
    for _ in range(num_batches):
        chunk = list(itertools.islice(elements, per_process))
        batch = _padding(per_process, image_size, num_classes)
        for key in batch:
            if chunk:
                batch[key][: len(chunk)] = np.stack([e[key] for e in chunk])
        batch["mask"] = np.arange(per_process) < len(chunk)
        yield _to_float(batch)


class StatefulIterator(Iterator[Batch], Protocol):
    """An iterator of batches whose position can be saved and restored: grain's `DatasetIterator`,
    `Prefetcher`. Training loops need one, since checkpoints store that position."""

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


class Prefetcher:
    """Produces the next `size` batches in a background thread, `transform` (e.g. the copy to the
    devices) applied there too, so that the training loop's `next()` is a queue pop.

    grain reads ahead in its own threads, but taking a batch out of it still costs the caller about
    3 ms for 32 small images (future bookkeeping and stacking, measured on the demo's data), and that
    time the loop cannot dispatch. `get_state()` is the wrapped iterator's state after the last batch
    this object yielded (not the read-ahead position), so a checkpoint resumes exactly. An error the
    wrapped iterator raises (a corrupt record) is raised by the `next()` that would have returned
    that batch.
    """

    def __init__(self, iterator: Iterator[Batch], size: int = 2, transform: Any = None):
        self._iterator: Any = iterator  # get_state/set_state only when it is a StatefulIterator
        self._size, self._transform = max(1, size), transform
        self._state = iterator.get_state() if hasattr(iterator, "get_state") else None
        self._queue: queue.Queue = queue.Queue(maxsize=self._size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._head: tuple[str, Any, Any] | None = None  # an item peek() took off the queue

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                batch = next(self._iterator)
                if self._transform is not None:
                    batch = self._transform(batch)
                state = self._iterator.get_state() if hasattr(self._iterator, "get_state") else None
                item: tuple[str, Any, Any] = ("batch", batch, state)
            except StopIteration:
                item = ("end", None, None)
            except BaseException as err:  # handed to the consumer, at the position it happened
                item = ("error", err, None)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] != "batch":
                return

    def __iter__(self) -> Prefetcher:
        return self

    def _take(self) -> tuple[str, Any, Any]:
        if self._head is not None:
            item, self._head = self._head, None
            return item
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
            self._thread.start()
        return self._queue.get()

    def peek(self) -> Any:
        """The batch the next `next()` returns, without taking it (None when the iterator is done or
        failed: that `next()` raises); the trainer compiles its step for its shapes meanwhile."""
        if self._head is None:
            self._head = self._take()
        kind, value, _ = self._head
        return value if kind == "batch" else None

    def __next__(self):
        kind, value, state = self._take()
        if kind == "end":
            self._queue.put((kind, value, state))  # every later next() ends too
            raise StopIteration
        if kind == "error":
            self._queue.put((kind, value, state))
            raise value
        self._state = state
        return value

    def close(self) -> None:
        """Stops the background thread (it holds the wrapped iterator until then)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = None
        self._queue = queue.Queue(maxsize=self._size)
        self._head = None
        self._stop.clear()

    def get_state(self) -> dict[str, Any]:
        if self._state is None:
            raise TypeError(f"{type(self._iterator).__name__} has no get_state: its position cannot be saved")
        return self._state

    def set_state(self, state: dict[str, Any]) -> None:
        self.close()
        self._iterator.set_state(state)
        self._state = state
