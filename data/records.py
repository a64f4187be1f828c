"""The project's one record format: `tf.train.Example` protos in TFRecord files.

Every dataset (source corpus, selected shards, target task) is stored this way, so a selected
copy can always be traced back to its source example by `image/id`. Features:

  image/encoded  bytes       PNG or JPEG bytes
  image/label    int64 list  one or more labels (the source corpus may be multi-label)
  image/id       bytes       stable example id
  image/weight   float       importance weight (selected shards only)

TensorFlow is not needed: the proto comes from tensorflow-datasets' copy, and TFRecord framing
(length, masked crc32c of the length, data, masked crc32c of the data) is done here with
google-crc32c, checked on every read.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterator, Sequence

import google_crc32c
from tensorflow_datasets.proto import tf_example_pb2

_MASK_DELTA = 0xA282EAD8


class CorruptRecordError(IOError):
    """A TFRecord file is truncated, fails its CRC, or holds an undecodable example."""

    def __init__(self, path: str, index: int, reason: str):
        super().__init__(f"{path}: record {index}: {reason}")
        self.path, self.index, self.reason = path, index, reason


@dataclasses.dataclass(frozen=True)
class Example:
    """One decoded record."""

    image: bytes
    labels: tuple[int, ...]
    example_id: bytes
    weight: float | None = None


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_example(example: Example) -> bytes:
    """Serialises an Example to `tf.train.Example` bytes."""
    proto = tf_example_pb2.Example()
    feature = proto.features.feature
    feature["image/encoded"].bytes_list.value.append(example.image)
    feature["image/label"].int64_list.value.extend(int(label) for label in example.labels)
    feature["image/id"].bytes_list.value.append(example.example_id)
    if example.weight is not None:
        feature["image/weight"].float_list.value.append(float(example.weight))
    return proto.SerializeToString(deterministic=True)


def decode_example(serialized: bytes) -> Example:
    """Parses `tf.train.Example` bytes; raises ValueError when a required feature is missing."""
    proto = tf_example_pb2.Example()
    proto.ParseFromString(serialized)
    feature = proto.features.feature
    for key in ("image/encoded", "image/label", "image/id"):
        if key not in feature:
            raise ValueError(f"missing feature {key!r}")
    weight = None
    if "image/weight" in feature and feature["image/weight"].float_list.value:
        weight = float(feature["image/weight"].float_list.value[0])
    return Example(
        image=bytes(feature["image/encoded"].bytes_list.value[0]),
        labels=tuple(int(v) for v in feature["image/label"].int64_list.value),
        example_id=bytes(feature["image/id"].bytes_list.value[0]),
        weight=weight,
    )


def frame_record(data: bytes) -> bytes:
    """TFRecord framing of one record."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def read_record_at(handle, path: str, index: int, offset: int) -> tuple[bytes, int]:
    """Reads and checks the record starting at `offset`; returns (data, next offset)."""
    handle.seek(offset)
    header = handle.read(12)
    if not header:
        raise EOFError
    if len(header) < 12:
        raise CorruptRecordError(path, index, "truncated record header")
    (length,) = struct.unpack("<Q", header[:8])
    (length_crc,) = struct.unpack("<I", header[8:])
    if length_crc != _masked_crc(header[:8]):
        raise CorruptRecordError(path, index, "length CRC mismatch")
    body = handle.read(length + 4)
    if len(body) < length + 4:
        raise CorruptRecordError(path, index, "truncated record data")
    data = body[:length]
    (data_crc,) = struct.unpack("<I", body[length:])
    if data_crc != _masked_crc(data):
        raise CorruptRecordError(path, index, "data CRC mismatch")
    return data, offset + 12 + length + 4


def iter_records(path: str) -> Iterator[bytes]:
    """Yields the raw records of one TFRecord file, checking framing and CRCs."""
    with open(path, "rb") as handle:
        offset, index = 0, 0
        while True:
            try:
                data, offset = read_record_at(handle, path, index, offset)
            except EOFError:
                return
            yield data
            index += 1


def index_records(path: str) -> list[tuple[int, int]]:
    """(offset, length) of every record, from the headers alone; truncation is an error.

    This is what turns a stream-only TFRecord file into a random-access source for grain.
    """
    entries = []
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        offset, index = 0, 0
        while offset < size:
            handle.seek(offset)
            header = handle.read(12)
            if len(header) < 12:
                raise CorruptRecordError(path, index, "truncated record header")
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
                raise CorruptRecordError(path, index, "length CRC mismatch")
            if offset + 16 + length > size:
                raise CorruptRecordError(path, index, "truncated record data")
            entries.append((offset, length))
            offset += 16 + length
            index += 1
    return entries


def read_record(handle, path: str, index: int, offset: int, length: int) -> bytes:
    """Random access read of one indexed record, CRC checked."""
    handle.seek(offset + 12)
    body = handle.read(length + 4)
    if len(body) < length + 4:
        raise CorruptRecordError(path, index, "truncated record data")
    data = body[:length]
    if struct.unpack("<I", body[length:])[0] != _masked_crc(data):
        raise CorruptRecordError(path, index, "data CRC mismatch")
    return data


def write_tfrecord(path: str, records: Sequence[bytes] | Iterator[bytes]) -> int:
    """Writes records atomically (temp file, fsync, rename); returns the record count.

    A crash leaves at most a `*.tmp` file, never a half file under the final name.
    """
    tmp = f"{path}.tmp"
    count = 0
    with open(tmp, "wb") as handle:
        for record in records:
            handle.write(frame_record(record))
            count += 1
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return count
