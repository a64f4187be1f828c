"""Record format: round trip, framing checks and manifest verification."""

import os

import pytest

from data import manifest, records


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
