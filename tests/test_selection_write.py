"""The selected-shard writer: exact sizes, no repeats without replacement, weights, resume, and a
2-process write (separate OS processes sharing the output dir) equal to a 1-process write."""

import collections
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats

from data import manifest, records
from selection import allocation, huh_subsets, methods, write
from selection import plan as plan_lib
from selection import weights as weights_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = [f"L{i}" for i in range(12)]


def make_source(directory: str, *, shards: int = 5, per_shard: int = 40, seed: int = 0, multi: bool = True) -> None:
    """A small multi-label source shard set; payloads are opaque bytes (the writer never decodes them)."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    files, counts, label_counts = [], [], np.zeros(len(LABELS), np.int64)
    for s in range(shards):
        examples = []
        for i in range(per_shard):
            k = int(rng.integers(1, 3)) if multi else 1
            labels = tuple(int(v) for v in rng.choice(len(LABELS), size=k, replace=False, p=_label_p()))
            label_counts[list(labels)] += 1
            examples.append(records.Example(image=rng.bytes(20), labels=labels, example_id=f"s{s}-{i}".encode()))
        path = os.path.join(directory, f"source-{s:05d}.tfrecord")
        records.write_tfrecord(path, [records.encode_example(e) for e in examples])
        files.append(path)
        counts.append(per_shard)
    manifest.write_manifest(directory, files, counts, LABELS, label_counts.tolist(), hierarchy={"root": LABELS[:6]})


def _label_p():
    p = np.linspace(3, 1, len(LABELS))
    return p / p.sum()


def read_all(directory: str) -> list[records.Example]:
    shard_set = manifest.load_manifest(directory)
    return [records.decode_example(r) for f in shard_set.files for r in records.iter_records(f)]


def make_label_plan(source_dir: str, matcher: str, size: int) -> plan_lib.LabelPlan:
    src = manifest.load_manifest(source_dir)
    pt = np.random.default_rng(5).dirichlet(np.ones(len(LABELS)))
    counts = np.asarray(src.label_counts)
    w = weights_lib.ImportanceWeights.compute(src.label_names, pt, counts, src.num_records)
    method = methods.get(matcher)
    context = methods.PlanContext(src.label_names, counts, src.num_records, src.hierarchy, w, size, method.defaults())
    plan = method.plan(context).plan
    assert isinstance(plan, plan_lib.LabelPlan), matcher
    return plan


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("source"))
    make_source(directory)
    return directory


def test_permute_is_a_bijection():
    for n in (1, 2, 7, 1000, 4097):
        out = allocation.permute(np.arange(n), n, seed=3)
        assert sorted(out.tolist()) == list(range(n))
    assert not np.array_equal(allocation.permute(np.arange(100), 100, 1), allocation.permute(np.arange(100), 100, 2))


def test_choose_copies_exact_counts():
    rng = np.random.default_rng(0)
    attributed = rng.integers(-1, 5, size=200)
    available = np.bincount(attributed[attributed >= 0], minlength=5)
    need = np.minimum(available, [3, 0, 7, 100, 1])
    copies = allocation.choose_copies(attributed, need, rng=rng, with_replacement=False)
    assert copies.max() <= 1 and np.all(copies[attributed < 0] == 0)
    assert np.array_equal(np.bincount(attributed[attributed >= 0], weights=copies[attributed >= 0], minlength=5), need)
    heavy = allocation.choose_copies(attributed, need * 5, rng=rng, with_replacement=True)
    assert np.array_equal(
        np.bincount(attributed[attributed >= 0], weights=heavy[attributed >= 0], minlength=5), need * 5
    )


def test_with_replacement_draws_are_uniform_within_a_label():
    attributed = np.zeros(20, np.int64)
    copies = allocation.choose_copies(
        attributed, np.array([20_000]), rng=np.random.default_rng(0), with_replacement=True
    )
    assert copies.sum() == 20_000
    assert scipy_stats.chisquare(copies).pvalue > 1e-3
    skewed = copies + np.arange(20) * 20  # control: a 20-per-rank tilt is detected
    assert scipy_stats.chisquare(skewed).pvalue < 1e-6


def test_allocate_is_exact_and_respects_counts():
    rng = np.random.default_rng(1)
    shard = np.repeat(np.arange(6), 4)
    label = np.tile(np.arange(4), 6)
    count = rng.integers(0, 50, size=24)
    count[label == 3] = np.maximum(count[label == 3], 1)
    available = np.bincount(label, weights=count, minlength=4).astype(np.int64)
    draws = np.array([available[0], available[1] // 2, 0, 3 * available[3]])
    fixed = allocation.allocate(shard, label, count, np.minimum(draws, available), seed=0, with_replacement=False)
    assert np.all(fixed <= count)
    assert np.array_equal(np.bincount(label, weights=fixed, minlength=4), np.minimum(draws, available))
    free = allocation.allocate(shard, label, count, draws, seed=0, with_replacement=True)
    assert np.array_equal(np.bincount(label, weights=free, minlength=4), draws)
    assert np.all(free[count == 0] == 0)
    assert np.array_equal(free, allocation.allocate(shard, label, count, draws, seed=0, with_replacement=True))


def test_elastic_write_exact_size_no_repeats_and_weights(source_dir, tmp_path):
    plan = make_label_plan(source_dir, "elastic", 90)
    out = write.write_selected(
        source_dir, plan, str(tmp_path / "out"), records_per_shard=25, seed=1, process_index=0, process_count=1
    )
    examples = read_all(str(tmp_path / "out"))
    assert len(examples) == 90 == out.num_records
    assert out.record_counts == [23, 23, 22, 22]  # evenly sized
    ids = [e.example_id for e in examples]
    assert len(set(ids)) == len(ids)
    # every example's weight is the max w over its labels (the default rule), stored as float32
    for e in examples:
        assert e.weight == pytest.approx(max(plan.weight[list(e.labels)]), rel=1e-6)
    # realised per-label draws = the integer plan for the ATTRIBUTED counts
    attributed = collections.Counter(
        int(weights_lib.attribute_examples(np.array([0, len(e.labels)]), np.array(e.labels), plan.weight)[0])
        for e in examples
    )
    assert [attributed.get(y, 0) for y in range(len(LABELS))] == out.extra["realised"]["draws"]
    assert sum(out.extra["plan"]["count"]) == 200  # attributed counts: one label per example
    assert out.label_counts == np.bincount([y for e in examples for y in e.labels], minlength=12).tolist()
    assert not any(name.startswith("_work") for name in os.listdir(tmp_path / "out"))


def test_same_write_exact_size_and_deterministic(source_dir, tmp_path):
    plan = make_label_plan(source_dir, "same", 333)
    a = write.write_selected(
        source_dir, plan, str(tmp_path / "a"), records_per_shard=100, seed=7, process_index=0, process_count=1
    )
    b = write.write_selected(
        source_dir, plan, str(tmp_path / "b"), records_per_shard=100, seed=7, process_index=0, process_count=1
    )
    assert a.num_records == 333
    assert [open(f, "rb").read() for f in a.files] == [open(f, "rb").read() for f in b.files]
    c = write.write_selected(
        source_dir, plan, str(tmp_path / "c"), records_per_shard=100, seed=8, process_index=0, process_count=1
    )
    assert [open(f, "rb").read() for f in a.files] != [open(f, "rb").read() for f in c.files]
    counts = collections.Counter(e.example_id for e in read_all(str(tmp_path / "a")))
    assert max(counts.values()) > 1  # with replacement: repeats happen at 333 draws from 200 examples


def test_example_plan_and_resume(source_dir, tmp_path):
    wanted = {b"s0-1": 3, b"s2-5": 1, b"s4-39": 2}
    out_dir = str(tmp_path / "ex")
    shard_set = write.write_selected(
        source_dir, wanted, out_dir, records_per_shard=4, seed=0, process_index=0, process_count=1
    )
    assert collections.Counter(e.example_id for e in read_all(out_dir)) == wanted
    assert all(e.weight == 1.0 for e in read_all(out_dir))
    # an interrupted write: manifest and one shard gone, a stale temp file left; re-running completes it
    first = open(shard_set.files[0], "rb").read()
    os.remove(os.path.join(out_dir, manifest.MANIFEST_NAME))
    os.remove(shard_set.files[0])
    open(shard_set.files[1] + ".tmp", "wb").write(b"half")
    again = write.write_selected(
        source_dir, wanted, out_dir, records_per_shard=4, seed=0, process_index=0, process_count=1
    )
    assert open(again.files[0], "rb").read() == first
    manifest.load_manifest(out_dir)  # sha256s verify
    with pytest.raises(ValueError, match="different plan"):
        write.write_selected(
            source_dir, {b"s0-1": 1}, out_dir, records_per_shard=4, seed=0, process_index=0, process_count=1
        )


def test_array_plan_keeps_rates(source_dir, tmp_path):
    src = manifest.load_manifest(source_dir)
    planned = np.zeros(len(LABELS))
    planned[[0, 3]] = np.asarray(src.label_counts)[[0, 3]]  # every example carrying label 0 or 3... by rate
    out = write.write_selected(
        source_dir, planned, str(tmp_path / "arr"), records_per_shard=50, seed=0, process_index=0, process_count=1
    )
    examples = read_all(str(tmp_path / "arr"))
    assert len({e.example_id for e in examples}) == len(examples) == out.num_records > 0
    assert all(e.weight == 1.0 for e in examples)


def test_appended_weight_overrides_source_weight():
    record = records.encode_example(records.Example(b"img", (1, 2), b"id", weight=0.25))
    decoded = records.decode_example(record + allocation.weight_suffix(3.5))
    assert decoded == records.Example(b"img", (1, 2), b"id", weight=3.5)


_CHILD = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from tests.test_selection_write import make_label_plan
from selection import write
plan = make_label_plan({src!r}, {matcher!r}, {size})
write.write_selected({src!r}, plan, {out!r}, records_per_shard=30, seed=11,
                     process_index=int(sys.argv[1]), process_count=int(sys.argv[2]))
"""


@pytest.mark.parametrize("matcher,size", [("same", 260), ("elastic", 150)])
def test_two_process_write_equals_one_process_write(source_dir, tmp_path, matcher, size):
    outs = {}
    for count in (1, 2):
        out = str(tmp_path / f"p{count}")
        script = _CHILD.format(root=ROOT, src=source_dir, matcher=matcher, size=size, out=out)
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        procs = [
            subprocess.Popen([sys.executable, "-c", script, str(i), str(count)], env=env, stderr=subprocess.PIPE)
            for i in range(count)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
        outs[count] = manifest.load_manifest(out)
    one, two = outs[1], outs[2]
    assert one.num_records == size and one.record_counts == two.record_counts
    assert [os.path.basename(f) for f in one.files] == [os.path.basename(f) for f in two.files]
    assert [open(f, "rb").read() for f in one.files] == [open(f, "rb").read() for f in two.files]
    assert one.extra["realised"] == two.extra["realised"] and one.label_counts == two.label_counts


def _per_record_framing(out_dir: str, source_dir: str, remap: huh_subsets.LabelRemap | None) -> list[bytes]:
    """Each output shard's bytes as the per-record path framed them: the source record (found by id)
    plus its weight suffix (and coarse labels under a remap), `records.frame_record` each."""
    by_id = {
        records.decode_example(data).example_id: data
        for f in manifest.load_manifest(source_dir).files
        for data in records.iter_records(f)
    }
    shards = []
    for f in manifest.load_manifest(out_dir).files:
        written = [records.decode_example(data) for data in records.iter_records(f)]
        shards.append(
            b"".join(
                records.frame_record(
                    by_id[e.example_id]
                    + allocation.weight_suffix(float(e.weight or 0.0), None if remap is None else list(e.labels))
                )
                for e in written
            )
        )
    return shards


@pytest.mark.parametrize("plan_kind", ["same", "examples", "remap"])
def test_written_bytes_equal_the_per_record_framing(source_dir, tmp_path, plan_kind):
    """The batched writer (CRC carried from the source record over the suffix, headers as arrays, framed
    spills) writes, byte for byte, what framing each weighted record on its own gives: with-replacement
    duplicates, example-plan copies, multi-label records and a label remap."""
    remap = None
    plan: plan_lib.LabelPlan | dict[bytes, int]
    if plan_kind == "examples":
        plan = {f"s{s}-{i}".encode(): 1 + (i % 3) for s in range(5) for i in range(0, 40, 2)}
    else:
        plan = make_label_plan(source_dir, "same", 260)  # with replacement: 260 copies of 200 records
        if plan_kind == "remap":
            remap = huh_subsets.LabelRemap(["even", "odd"], np.arange(len(LABELS)) % 2)
    out = str(tmp_path / "out")
    written = write.write_selected(
        source_dir, plan, out, records_per_shard=70, seed=3, process_index=0, process_count=1, label_remap=remap
    )
    ids = [records.decode_example(d).example_id for f in written.files for d in records.iter_records(f)]
    assert len(ids) > len(set(ids)) and len(written.files) > 1  # duplicates, several shards
    assert [open(f, "rb").read() for f in written.files] == _per_record_framing(out, source_dir, remap)


def test_corrupt_source_record_is_named_by_the_write(source_dir, tmp_path):
    """A source record whose data no longer matches its CRC after the label index was cached (so the
    warm write is the first to read it) stops the write with the file and the record."""
    src = str(tmp_path / "src")
    make_source(src, shards=2, per_shard=10)
    index = str(tmp_path / "index")
    plan = {f"s{s}-{i}".encode(): 1 for s in range(2) for i in range(10)}
    write.write_selected(
        src,
        plan,
        str(tmp_path / "a"),
        records_per_shard=8,
        seed=0,
        process_index=0,
        process_count=1,
        label_index_dir=index,
    )
    path = manifest.load_manifest(src, verify=False).files[1]
    spans = records.record_spans(open(path, "rb").read(), path)
    blob = bytearray(open(path, "rb").read())
    blob[int(spans[0][4]) + 3] ^= 0xFF  # a byte of record 4's data
    open(path, "wb").write(bytes(blob))
    with pytest.raises(records.CorruptRecordError, match=r"source-00001\.tfrecord: record 4: data CRC mismatch"):
        write.write_selected(
            src,
            plan,
            str(tmp_path / "b"),
            records_per_shard=8,
            seed=0,
            process_index=0,
            process_count=1,
            label_index_dir=index,
        )


def test_local_worker_processes_write_the_same_bytes_and_resume(source_dir, tmp_path):
    """`local_processes=2` (two OS worker processes on this host, what `selection.write_processes`
    gives `python -m launch.main`) writes the 1-process bytes; a re-run after losing a shard and the
    manifest completes it to the same bytes."""
    plan = make_label_plan(source_dir, "same", 260)
    kwargs: dict[str, Any] = {"records_per_shard": 70, "seed": 5, "process_index": 0, "process_count": 1}
    one = write.write_selected(source_dir, plan, str(tmp_path / "one"), **kwargs)
    out = str(tmp_path / "two")
    two = write.write_selected(source_dir, plan, out, local_processes=2, **kwargs)
    expected = [open(f, "rb").read() for f in one.files]
    assert len(expected) > 1 and [open(f, "rb").read() for f in two.files] == expected
    os.remove(two.files[1])
    os.remove(os.path.join(out, manifest.MANIFEST_NAME))
    again = write.write_selected(source_dir, plan, out, local_processes=2, **kwargs)
    assert [open(f, "rb").read() for f in again.files] == expected
    assert manifest.load_manifest(out).extra == one.extra  # verified sha256s, same realised counts


def test_a_waiting_process_returns_when_another_finished_the_write(source_dir, tmp_path):
    """A resumed write whose output shards all exist: process 0 may write the manifest and remove the
    scratch files before a slower process waits for them. That process returns the manifest instead
    of waiting for files that will not come (the test hung in about one run in three under load)."""
    import threading

    plan = make_label_plan(source_dir, "same", 260)
    out = str(tmp_path / "out")
    done = write.write_selected(source_dir, plan, out, records_per_shard=70, seed=5, process_index=0, process_count=1)
    held = os.path.join(str(tmp_path), "held.json")
    os.rename(os.path.join(out, manifest.MANIFEST_NAME), held)  # process 1 starts: the write looks unfinished
    threading.Timer(1.0, os.rename, (held, os.path.join(out, manifest.MANIFEST_NAME))).start()
    start = time.monotonic()
    again = write.write_selected(  # process 0 of 2 never runs: without `until` this waits 30 s and fails
        source_dir, plan, out, records_per_shard=70, seed=5, process_index=1, process_count=2, wait_timeout_s=30.0
    )
    assert time.monotonic() - start < 15 and again.files == done.files


def test_failed_local_worker_stops_the_write_with_its_error(tmp_path):
    src = str(tmp_path / "src")
    make_source(src, shards=2, per_shard=10)
    index = str(tmp_path / "index")
    plan = {f"s{s}-{i}".encode(): 1 for s in range(2) for i in range(10)}
    kwargs: dict[str, Any] = {
        "records_per_shard": 8,
        "seed": 0,
        "process_index": 0,
        "process_count": 1,
        "label_index_dir": index,
    }
    write.write_selected(src, plan, str(tmp_path / "a"), **kwargs)  # caches the label index
    path = manifest.load_manifest(src, verify=False).files[1]  # owned by worker 1 of 2
    blob = bytearray(open(path, "rb").read())
    blob[int(records.record_spans(bytes(blob), path)[0][2])] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    with pytest.raises(RuntimeError, match=r"worker 1 of 2 failed .*source-00001\.tfrecord: record 2: data CRC"):
        write.write_selected(src, plan, str(tmp_path / "b"), local_processes=2, **kwargs)


def test_local_processes_rule():
    cores = len(os.sched_getaffinity(0))
    assert write.local_processes(3, 10, 1) == 3  # as asked
    assert write.local_processes(0, 10_000, 1) == 1  # a small write runs alone
    assert write.local_processes(0, 100 * write.LOCAL_PROCESS_RECORDS, 1) == cores
    assert write.local_processes(0, 100 * write.LOCAL_PROCESS_RECORDS, 4) == 1  # multi-process jobs: 1
    with pytest.raises(ValueError, match="write_processes"):
        write.local_processes(-1, 10, 1)
