"""grain pipeline: process split, determinism, exact resume, eval padding, bad data."""

import io
import os
from typing import Any

import numpy as np
import pytest
from PIL import Image

from data import manifest, pipeline, records

NUM_CLASSES = 5


def _png(value: int, size=(20, 14)) -> bytes:
    """A solid image whose colour encodes `value`; resizing and cropping keep it exactly."""
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, 7)).save(buf, format="PNG")
    return buf.getvalue()


def _ids(batch) -> list[int]:
    """The id each image encodes in its first pixel (uint8 training batches, float evaluation ones)."""
    pixel = batch["image"][:, 0, 0, 0]
    return [int(v) for v in (pixel if pixel.dtype == np.uint8 else np.rint((pixel + 1.0) * 127.5))]


def write_set(directory, n, num_shards=3, image=_png, corrupt=None):
    """n examples with ids 0..n-1 over `num_shards` shards; manifest written last.

    `corrupt(data: bytearray, path)` may damage shard 0 before the manifest is written, so the
    manifest's checksums describe the damaged file (a record-level, not manifest-level, error).
    """
    os.makedirs(directory, exist_ok=True)
    files, counts = [], []
    for s in range(num_shards):
        ids = range(s, n, num_shards)
        path = os.path.join(directory, f"shard-{s:05d}-of-{num_shards:05d}.tfrecord")
        examples = [
            records.Example(
                image(i), (i % NUM_CLASSES, (i + 1) % NUM_CLASSES), f"id{i}".encode(), 0.5 if i % 2 else None
            )
            for i in ids
        ]
        records.write_tfrecord(path, [records.encode_example(e) for e in examples])
        if s == 0 and corrupt is not None:
            damaged = bytes(corrupt(bytearray(open(path, "rb").read()), path))
            open(path, "wb").write(damaged)
        files.append(path)
        counts.append(len(examples))
    labels = [f"c{k}" for k in range(NUM_CLASSES)]
    manifest.write_manifest(str(directory), files, counts, labels, [0] * NUM_CLASSES)
    return str(directory)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_batch_contents(tmp_path):
    d = write_set(tmp_path / "s", 12)
    it = pipeline.train_iterator(d, global_batch_size=4, image_size=9, seed=0, num_classes=NUM_CLASSES, augment=False)
    batch = next(it)
    # uint8 up to the device (the train step maps it to [-1, 1] there: augment.to_float)
    assert batch["image"].shape == (4, 9, 9, 3) and batch["image"].dtype == np.uint8
    for i, label, labels, weight in zip(_ids(batch), batch["label"], batch["labels"], batch["weight"], strict=True):
        assert label == i % NUM_CLASSES and batch["label"].dtype == np.int32
        expected = np.zeros(NUM_CLASSES, np.float32)
        expected[[i % NUM_CLASSES, (i + 1) % NUM_CLASSES]] = 1
        np.testing.assert_array_equal(labels, expected)
        assert weight == (0.5 if i % 2 else 1.0)


def test_processes_split_the_one_process_batches(tmp_path):
    """With P processes, the k-th batches of all processes are, together, the k-th batch of a one-process
    run, each process holding a disjoint part: the job trains on the same data whatever P is."""
    n = 23
    d = write_set(tmp_path / "s", n)

    def batches(p, count, steps=12):
        it = pipeline.train_iterator(
            d,
            global_batch_size=4,
            image_size=8,
            seed=3,
            num_classes=NUM_CLASSES,
            augment=False,
            process_index=p,
            process_count=count,
        )
        return [_ids(b) for b in _take(it, steps)]

    one = batches(0, 1)
    flat = [i for b in one for i in b]
    assert sorted(flat[:n]) == sorted(flat[n : 2 * n]) == list(range(n))  # epochs cover the set once each
    assert flat[:n] != flat[n : 2 * n]  # reshuffled each epoch
    for count in (2, 4):
        parts = [batches(p, count) for p in range(count)]
        for k, batch in enumerate(one):
            assert all(len(parts[p][k]) == 4 // count for p in range(count))
            assert sorted(i for p in range(count) for i in parts[p][k]) == sorted(batch)


def test_finite_epochs_cover_exactly_once(tmp_path):
    d = write_set(tmp_path / "s", 24)
    ids = []
    for p in range(2):
        it = pipeline.train_iterator(
            d,
            global_batch_size=6,
            image_size=8,
            seed=1,
            num_classes=NUM_CLASSES,
            augment=False,
            num_epochs=1,
            process_index=p,
            process_count=2,
        )
        ids += [i for b in it for i in _ids(b)]
    assert sorted(ids) == list(range(24))


def test_same_seed_same_batches(tmp_path):
    d = write_set(tmp_path / "s", 16, image=lambda i: _noise_png(i))

    def run(seed):
        it = pipeline.train_iterator(d, global_batch_size=4, image_size=12, seed=seed, num_classes=NUM_CLASSES)
        return _take(it, 5)

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))


def _noise_png(i: int, size=(40, 30)) -> bytes:
    pixels = np.random.default_rng(i).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("worker_count", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_restored_iterator_continues_exactly(tmp_path, worker_count):
    d = write_set(tmp_path / "s", 10, image=_noise_png)
    kwargs = dict(global_batch_size=4, image_size=10, seed=5, num_classes=NUM_CLASSES, worker_count=worker_count)
    it = pipeline.train_iterator(d, **kwargs)
    _take(it, 3)  # crosses an epoch boundary (10 records, 12 consumed)
    state = it.get_state()
    expected = _take(it, 3)
    fresh = pipeline.train_iterator(d, **kwargs)
    fresh.set_state(state)
    for x, y in zip(expected, _take(fresh, 3), strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_eval_pads_and_masks_across_processes(tmp_path):
    n = 11
    d = write_set(tmp_path / "s", n)
    per_process = []
    for p in range(2):
        batches = list(
            pipeline.eval_batches(
                d, global_batch_size=4, image_size=8, num_classes=NUM_CLASSES, process_index=p, process_count=2
            )
        )
        per_process.append(batches)
        for b in batches:
            assert b["mask"].dtype == bool and b["image"].shape == (2, 8, 8, 3)
            assert np.all(b["weight"][~b["mask"]] == 0)
    assert len(per_process[0]) == len(per_process[1]) == 3  # ceil(ceil(11/2)/2)
    ids = [i for batches in per_process for b in batches for i, m in zip(_ids(b), b["mask"], strict=True) if m]
    assert sorted(ids) == list(range(n))
    masks = [int(b["mask"].sum()) for b in per_process[0]]
    assert masks == [2, 2, 1]


def _flip_record_byte(record: int):
    def corrupt(data, path):
        offset, length = records.index_records(path)[record]
        data[offset + 12 + length // 2] ^= 0xFF
        return data

    return corrupt


def test_bad_crc_names_file_and_record(tmp_path):
    d = write_set(tmp_path / "s", 9, corrupt=_flip_record_byte(2))
    it = pipeline.train_iterator(d, global_batch_size=9, image_size=8, seed=0, num_classes=NUM_CLASSES, augment=False)
    with pytest.raises(records.CorruptRecordError, match=r"shard-00000-of-00003.tfrecord: record 2: data CRC"):
        next(it)


def test_skip_corrupt_counts_and_reports(tmp_path):
    bad_image = lambda i: b"not an image" if i == 4 else _png(i)  # noqa: E731  (shard 1, record 1)
    d = write_set(tmp_path / "s", 9, image=bad_image, corrupt=_flip_record_byte(2))
    before = pipeline.SKIPPED.count
    batches = list(
        pipeline.eval_batches(d, global_batch_size=4, image_size=8, num_classes=NUM_CLASSES, skip_corrupt=True)
    )
    assert pipeline.SKIPPED.count - before == 2
    reasons = {(os.path.basename(e.path), e.index): e.reason for e in pipeline.SKIPPED.entries[-2:]}
    assert "data CRC" in reasons[("shard-00000-of-00003.tfrecord", 2)]
    assert "undecodable image" in reasons[("shard-00001-of-00003.tfrecord", 1)]
    ids = sorted(i for b in batches for i, m in zip(_ids(b), b["mask"], strict=True) if m)
    assert ids == [0, 1, 2, 3, 5, 7, 8]  # 6 is shard 0 record 2, 4 is shard 1 record 1
    d = write_set(tmp_path / "i", 9, image=bad_image)
    with pytest.raises(records.CorruptRecordError, match=r"shard-00001-of-00003.tfrecord: record 1: undecodable image"):
        list(pipeline.eval_batches(d, global_batch_size=4, image_size=8, num_classes=NUM_CLASSES))


def test_truncated_shard_and_checksum_refusal(tmp_path):
    d = write_set(tmp_path / "t", 9, corrupt=lambda data, path: data[:-7])
    with pytest.raises(records.CorruptRecordError, match=r"shard-00000-of-00003.tfrecord: record 2: truncated"):
        pipeline.train_iterator(d, global_batch_size=2, image_size=8, seed=0, num_classes=NUM_CLASSES)
    d = write_set(tmp_path / "m", 9)
    with open(os.path.join(d, "shard-00001-of-00003.tfrecord"), "r+b") as handle:
        handle.seek(30)
        handle.write(b"\x00")
    with pytest.raises(manifest.ManifestError, match="sha256"):
        pipeline.train_iterator(d, global_batch_size=2, image_size=8, seed=0, num_classes=NUM_CLASSES)


def test_prefetcher_on_devices_keeps_consumer_state(tmp_path):
    import jax

    d = write_set(tmp_path / "s", 8)
    kwargs: dict[str, Any] = dict(global_batch_size=2, image_size=8, seed=2, num_classes=NUM_CLASSES, augment=False)
    prefetched = pipeline.Prefetcher(pipeline.train_iterator(d, **kwargs), size=2, transform=jax.device_put)
    first = next(prefetched)
    assert hasattr(first["image"], "devices")
    state = prefetched.get_state()
    expected = [np.asarray(next(prefetched)["image"]) for _ in range(3)]
    plain = pipeline.train_iterator(d, **kwargs)
    plain.set_state(state)
    for x in expected:
        np.testing.assert_array_equal(x, next(plain)["image"])


class _Counting:
    """Batches {"i": k}; records the thread that produced each; raises at `fail_at`."""

    def __init__(self, fail_at: int | None = None):
        self.position, self.fail_at = 0, fail_at
        self.threads: list[str] = []

    def __iter__(self):
        return self

    def __next__(self):
        import threading

        self.threads.append(threading.current_thread().name)
        if self.position == self.fail_at:
            raise records.CorruptRecordError("shard", self.position, "bad crc")
        self.position += 1
        return {"i": np.array(self.position - 1)}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def test_prefetcher_reads_in_its_thread_and_raises_errors_in_order():
    inner = _Counting(fail_at=3)
    prefetched = pipeline.Prefetcher(inner, size=2)
    assert prefetched.get_state() == {"position": 0}
    assert [int(next(prefetched)["i"]) for _ in range(3)] == [0, 1, 2]
    assert prefetched.get_state() == {"position": 3}  # the consumer's position, not the read-ahead's
    with pytest.raises(records.CorruptRecordError, match="bad crc"):
        next(prefetched)
    assert set(inner.threads) == {"prefetch"}  # the loop's thread never reads
    prefetched.set_state({"position": 1})  # a resume: the thread restarts from there
    inner.fail_at = None
    assert [int(next(prefetched)["i"]) for _ in range(2)] == [1, 2]
    prefetched.close()


def test_prefetcher_peek_shows_the_next_batch_without_taking_it():
    """What the trainer compiles its step for before the first step: the same batch next() returns,
    the consumer's position unchanged, a resume dropping it, the end or an error left to next()."""
    inner = _Counting(fail_at=2)
    prefetched = pipeline.Prefetcher(inner, size=2)
    assert int(prefetched.peek()["i"]) == 0 and int(prefetched.peek()["i"]) == 0
    assert prefetched.get_state() == {"position": 0}
    assert [int(next(prefetched)["i"]) for _ in range(2)] == [0, 1]
    assert prefetched.peek() is None  # the corrupt record: next() raises it
    with pytest.raises(records.CorruptRecordError):
        next(prefetched)
    inner.fail_at = None
    prefetched.set_state({"position": 5})
    assert int(prefetched.peek()["i"]) == 5
    prefetched.set_state({"position": 1})  # a peeked batch from before a resume is not returned
    assert int(next(prefetched)["i"]) == 1
    assert prefetched.get_state() == {"position": 2}
    prefetched.close()


def test_the_example_proto_is_first_imported_by_the_thread_that_builds_the_pipeline():
    """grain's reader threads once imported tensorflow_datasets (for the Example proto) two at a time
    and deadlocked a two-process job; building the pipeline now imports it in the caller's thread."""
    import subprocess
    import sys

    script = (
        "import sys, threading\n"
        "from data import pipeline, records\n"
        "assert records._example_class is None and 'tensorflow_datasets' not in sys.modules\n"
        "pipeline._Preprocess(source=None, image_size=8, num_classes=2, train=True, skip_corrupt=False)\n"
        "assert records._example_class is not None and threading.active_count() == 1\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
