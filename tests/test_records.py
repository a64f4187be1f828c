"""Record format: round trip, framing checks and manifest verification."""

import os

import pytest

from data import atomic, manifest, records


def _examples(n):
    return [
        records.Example(
            image=bytes([i % 256]) * (i + 1),
            labels=tuple(range(i % 3 + 1)),
            example_id=f"ex-{i}".encode(),
            weight=None if i % 2 else 0.5 * i,
        )
        for i in range(n)
    ]


def test_round_trip_and_index(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    examples = _examples(7)
    assert records.write_tfrecord(path, [records.encode_example(e) for e in examples]) == 7
    decoded = [records.decode_example(r) for r in records.iter_records(path)]
    assert decoded == examples
    index = records.index_records(path)
    with open(path, "rb") as handle:
        for i, (offset, length) in enumerate(index):
            assert records.decode_example(records.read_record(handle, path, i, offset, length)) == examples[i]


def test_corruption_names_file_and_record(tmp_path):
    path = str(tmp_path / "a.tfrecord")
    records.write_tfrecord(path, [records.encode_example(e) for e in _examples(5)])
    data = bytearray(open(path, "rb").read())
    offset, length = records.index_records(path)[3]
    data[offset + 12 + length // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(records.CorruptRecordError, match=r"a.tfrecord: record 3: data CRC"):
        list(records.iter_records(path))
    truncated = str(tmp_path / "t.tfrecord")
    open(truncated, "wb").write(bytes(data[: offset + 20]))
    with pytest.raises(records.CorruptRecordError, match=r"record 3: truncated"):
        records.index_records(truncated)


def test_manifest_refuses_changed_shard(tmp_path):
    path = str(tmp_path / "s-00000.tfrecord")
    records.write_tfrecord(path, [records.encode_example(e) for e in _examples(3)])
    manifest.write_manifest(str(tmp_path), [path], [3], ["a", "b", "c"], [3, 2, 1])
    loaded = manifest.load_manifest(str(tmp_path))
    assert loaded.num_records == 3 and loaded.label_names == ["a", "b", "c"]
    with open(path, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(manifest.ManifestError, match="sha256"):
        manifest.load_manifest(str(tmp_path))
    os.remove(os.path.join(tmp_path, manifest.MANIFEST_NAME))
    with pytest.raises(manifest.ManifestError, match="no manifest"):
        manifest.load_manifest(str(tmp_path))


def test_batched_framing_and_selective_reads_match_the_one_record_framing(tmp_path):
    """`frame_records` / `write_tfrecord` (headers as one array) write the bytes of `frame_record`;
    `read_records` returns the chosen records and checks every header, each in its own way."""
    import numpy as np

    rng = np.random.default_rng(0)
    datas = [rng.bytes(int(n)) for n in rng.integers(0, 400, 5000)] + [b""]
    framed = b"".join(records.frame_record(d) for d in datas)
    assert records.frame_records(datas) == framed and records.frame_records([]) == b""
    path = str(tmp_path / "a.tfrecord")
    assert records.write_tfrecord(path, iter(datas)) == len(datas)  # more than one write batch
    assert open(path, "rb").read() == framed
    assert list(records.iter_records(path)) == datas
    assert records.read_records(path, [17, 3, 17]) == [datas[17], datas[3], datas[17]]
    offset = records.index_records(path)[1234][0]
    bad = bytearray(framed)
    bad[offset + 9] ^= 0x01  # the length CRC of record 1234
    open(path, "wb").write(bytes(bad))
    with pytest.raises(records.CorruptRecordError, match=r"record 1234: length CRC mismatch"):
        records.read_records(path, [0])
    bad = bytearray(framed)
    bad[offset] ^= 0x10  # its length: the walk goes astray, the header CRC catches it first
    open(path, "wb").write(bytes(bad))
    with pytest.raises(records.CorruptRecordError, match=r"record 1234: length CRC mismatch"):
        records.read_records(path, [0])
    for cut, message in ((3, "record 5000: truncated record data"), (20, "record 4999: truncated record data")):
        open(path, "wb").write(framed[:-cut])
        with pytest.raises(records.CorruptRecordError, match=message):
            records.read_records(path)
    open(path, "wb").write(framed + b"\x00" * 5)
    with pytest.raises(records.CorruptRecordError, match="record 5001: truncated record header"):
        records.read_records(path)


def test_known_spans_are_checked_at_once_and_fall_back_to_the_walk(tmp_path):
    """`read_records(..., spans)` (a cached label index's spans) returns what the walk returns; spans
    that do not describe the file (another file's, a damaged header) fall back to the walk and its
    errors, so a stale cache can neither return wrong records nor hide corruption."""
    import numpy as np

    rng = np.random.default_rng(1)
    datas = [rng.bytes(int(n)) for n in rng.integers(0, 300, 300)]
    path = str(tmp_path / "a.tfrecord")
    records.write_tfrecord(path, datas)
    buf = open(path, "rb").read()
    spans = records.record_spans(buf, path)
    assert records.read_records(path, [5, 0, 299], spans) == [datas[5], datas[0], datas[299]]
    other = str(tmp_path / "b.tfrecord")
    records.write_tfrecord(other, datas[1:] + [b"x"])  # same size and count, shifted spans
    for wrong in (records.record_spans(open(other, "rb").read(), other), (spans[0][:-1], spans[1][:-1])):
        assert records.read_records(path, [7], wrong) == [datas[7]]
        got = records.record_spans(buf, path, wrong)
        np.testing.assert_array_equal(got[0], spans[0])
        np.testing.assert_array_equal(got[1], spans[1])
    offset = int(spans[0][120]) - 12
    bad = bytearray(buf)
    bad[offset + 9] ^= 0x01  # record 120's length CRC
    open(path, "wb").write(bytes(bad))
    with pytest.raises(records.CorruptRecordError, match=r"record 120: length CRC mismatch"):
        records.read_records(path, [0], spans)
    bad = bytearray(buf)
    bad[int(spans[0][50]) + 1] ^= 0x01  # record 50's data
    open(path, "wb").write(bytes(bad))
    with pytest.raises(records.CorruptRecordError, match=r"record 50: data CRC mismatch"):
        records.read_records(path, [50], spans)


def test_weight_suffix_is_the_protos_serialization_and_needs_no_proto_import():
    """`encode_weight_suffix` writes the wire format by hand: the same bytes as the proto's deterministic
    serialization (float32 rounding, negative labels as 10-byte varints, map entries in key order), and
    importing the writer does not import tensorflow_datasets (about 0.2 s per worker process)."""
    import subprocess
    import sys

    def serialized(weight, labels):
        proto = records.example_proto()
        proto.features.feature["image/weight"].float_list.value.append(weight)
        if labels is not None:
            proto.features.feature["image/label"].int64_list.value.extend(labels)
        return proto.SerializeToString(deterministic=True)

    cases: list[tuple[float, tuple[int, ...] | None]] = [
        (w, None) for w in (0.0, -0.0, 1.0, 3.5, 1 / 3, 1e-45, 1e38, 1e39, float("inf"), 123.456)
    ]
    cases += [(2.0, ()), (0.5, (0,)), (0.5, (5, 300, 2**40, -1, -(2**63))), (1.25, tuple(range(200)))]
    for weight, labels in cases:
        assert records.encode_weight_suffix(weight, labels) == serialized(weight, labels), (weight, labels)
    decoded = records.decode_example(
        records.encode_example(records.Example(b"img", (7,), b"id")) + records.encode_weight_suffix(0.75, (1, 2))
    )
    assert decoded == records.Example(b"img", (1, 2), b"id", weight=0.75)

    code = (
        "import sys; from selection import write; print(any(m.startswith('tensorflow_datasets') for m in sys.modules))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "False"
    )


def test_json_text_is_the_stdlib_indented_text():
    """`atomic.json_text` lays out number and string lists itself (a manifest's 150k per-label numbers):
    every file the project writes as JSON must keep the stdlib's exact text (digests, diffs)."""
    import json
    import math

    labels = [f'l{i}, \u00e9"\\\n' for i in range(50)]
    objs = [
        {},
        [],
        [[]],
        [{}],
        {"a": [], "b": {}},
        1,
        -0.0,
        "\u00e9\ud800\u2028",
        None,
        True,
        [1, 2.5, -0.0, math.nan, math.inf, -math.inf, 1e-300, 10**30, True, False, None],
        [3, 1.25, 10**20],
        ["a, b", "c"],
        [1, "a, b", [2, (3, 4.5)], {"z": None, "y": [3]}],
        (1, 2),
        {1: 2, 3: [4]},
        {"x": {1: "a", 2: "b"}, "a": 1},
        {"label_names": labels, "label_counts": list(range(100)), "extra": {"planned": [i / 7 for i in range(100)]}},
    ]
    for obj in objs:
        assert atomic.json_text(obj) == json.dumps(obj, indent=2, sort_keys=True), obj
