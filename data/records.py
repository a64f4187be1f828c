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
import struct
from collections.abc import Iterable, Iterator
from typing import IO

import google_crc32c
from etils import epath
from tensorflow_datasets.proto import tf_example_pb2

from data import atomic

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


_HEADER = struct.Struct("<QI")  # data length, masked crc32c of the length's 8 bytes
_CRC = struct.Struct("<I")  # masked crc32c of the data (after it) or of the length (in the header)
_FRAMING = _HEADER.size + _CRC.size  # bytes a record adds to its data


def frame_record(data: bytes) -> bytes:
    """TFRecord framing of one record."""
    length = struct.pack("<Q", len(data))
    return length + _CRC.pack(_masked_crc(length)) + data + _CRC.pack(_masked_crc(data))


def _data_length(buf: bytes, pos: int, path: str, index: int) -> int:
    """The data length in the record header at `buf[pos:]`, after checking the header is whole and
    its CRC. With `_checked_data`, the one parser of the framing; every reader below uses both."""
    if pos + _HEADER.size > len(buf):
        raise CorruptRecordError(path, index, "truncated record header")
    length, length_crc = _HEADER.unpack_from(buf, pos)
    if length_crc != _masked_crc(buf[pos : pos + 8]):
        raise CorruptRecordError(path, index, "length CRC mismatch")
    return length


def _checked_data(buf: bytes, pos: int, length: int, path: str, index: int) -> bytes:
    """The `length` data bytes at `buf[pos:]`, after checking they and their CRC are whole and match."""
    stop = pos + length
    if stop + _CRC.size > len(buf):
        raise CorruptRecordError(path, index, "truncated record data")
    data = buf[pos:stop]
    if _CRC.unpack_from(buf, stop)[0] != _masked_crc(data):
        raise CorruptRecordError(path, index, "data CRC mismatch")
    return data


def iter_records(path: str) -> Iterator[bytes]:
    """Yields the records of one TFRecord file, checking framing and CRCs.

    The file is read in one sequential read (memory: one shard) and parsed in memory: a seek and two
    reads per record cost several times more for small records (benchmarks/selection_write.py).
    """
    buf = epath.Path(path).read_bytes()
    pos, index = 0, 0
    while pos < len(buf):
        length = _data_length(buf, pos, path, index)
        yield _checked_data(buf, pos + _HEADER.size, length, path, index)
        pos += _FRAMING + length
        index += 1


def index_records(path: str) -> list[tuple[int, int]]:
    """(offset, length) of every record, from the headers alone; truncation is an error.

    This is what turns a stream-only TFRecord file into a random-access source for grain.
    """
    entries = []
    file = epath.Path(path)
    size = file.stat().length
    with file.open("rb") as handle:
        offset, index = 0, 0
        while offset < size:
            handle.seek(offset)
            length = _data_length(handle.read(_HEADER.size), 0, path, index)
            if offset + _FRAMING + length > size:
                raise CorruptRecordError(path, index, "truncated record data")
            entries.append((offset, length))
            offset += _FRAMING + length
            index += 1
    return entries


def read_record(handle: IO[bytes], path: str, index: int, offset: int, length: int) -> bytes:
    """Random access read of one indexed record, CRC checked."""
    handle.seek(offset + _HEADER.size)
    return _checked_data(handle.read(length + _CRC.size), 0, length, path, index)


def write_tfrecord(path: str, records: Iterable[bytes]) -> int:
    """Writes records atomically (`data.atomic.open_write`); returns the record count."""
    count = 0
    with atomic.open_write(path) as handle:
        for record in records:
            handle.write(frame_record(record))
            count += 1
    return count
