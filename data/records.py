"""The project's one record format: `tf.train.Example` protos in TFRecord files.

Every dataset (source corpus, selected shards, target task) is stored this way, so a selected
copy can always be traced back to its source example by `image/id`. Features:

  image/encoded  bytes       PNG or JPEG bytes
  image/label    int64 list  one or more labels (the source corpus may be multi-label)
  image/id       bytes       stable example id
  image/weight   float       importance weight (selected shards only)

TensorFlow is not needed: the proto comes from tensorflow-datasets' copy (`example_proto`, imported
at first use), and TFRecord framing (length, masked crc32c of the length, data, masked crc32c of the
data) is done here with google-crc32c, checked on every read.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING

import google_crc32c
import numpy as np
from etils import epath

from data import atomic

if TYPE_CHECKING:
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


def example_proto() -> tf_example_pb2.Example:
    """A new, empty `tf.train.Example` proto: the one place the proto is imported.

    Imported here, at first use, not with this module: `tensorflow_datasets`' package import costs
    about 0.2 s, paid by every process that touches records (a selection write's worker processes
    need no proto once its label index exists: `encode_weight_suffix` writes the appended bytes directly).
    """
    return _example_type()()


_IMPORT_LOCK = threading.Lock()
_example_class: type[tf_example_pb2.Example] | None = None


def _example_type() -> type[tf_example_pb2.Example]:
    """The proto class, imported by one thread at a time: grain's reader threads decode records in
    parallel, and two of them importing `tensorflow_datasets` at once deadlocked a job (Python 3.11's
    `functools.cached_property` lock in etils' lazy imports against the module import lock)."""
    global _example_class
    if _example_class is None:
        with _IMPORT_LOCK:
            if _example_class is None:
                from tensorflow_datasets.proto import tf_example_pb2

                _example_class = tf_example_pb2.Example
    return _example_class


def encode_example(example: Example) -> bytes:
    """Serialises an Example to `tf.train.Example` bytes."""
    proto = example_proto()
    feature = proto.features.feature
    feature["image/encoded"].bytes_list.value.append(example.image)
    feature["image/label"].int64_list.value.extend(int(label) for label in example.labels)
    feature["image/id"].bytes_list.value.append(example.example_id)
    if example.weight is not None:
        feature["image/weight"].float_list.value.append(float(example.weight))
    return proto.SerializeToString(deterministic=True)


def decode_example(serialized: bytes) -> Example:
    """Parses `tf.train.Example` bytes; raises ValueError when a required feature is missing."""
    proto = example_proto()
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


def encode_weight_suffix(weight: float, labels: Sequence[int] | None = None) -> bytes:
    """The serialized `tf.train.Example` holding only `image/weight` (and `image/label`, when given):
    the bytes the proto serializes deterministically (map entries in key order), written directly in
    protobuf's wire format so that a selection write needs no proto import (`example_proto`; tests
    compare the two). Appended to a record, it adds these features (`selection.allocation.weight_suffix`).
    """
    entries = []  # (key, serialized Feature), in key order
    if labels is not None:  # Feature.int64_list (3) -> Int64List.value (1), packed varints
        packed = b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in labels)
        entries.append((b"image/label", _field(3, _field(1, packed) if packed else b"")))
    # Feature.float_list (2) -> FloatList.value (1), packed little-endian float32 (as the proto: beyond
    # float32's range it is infinite)
    with np.errstate(over="ignore"):
        weight32 = np.array(weight, "<f4").tobytes()
    entries.append((b"image/weight", _field(2, _field(1, weight32))))
    # Example.features (1) -> Features.feature (1): one map entry (key 1, value 2) each
    return _field(1, b"".join(_field(1, _field(1, key) + _field(2, value)) for key, value in entries))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_HEADER = struct.Struct("<QI")  # data length, masked crc32c of the length's 8 bytes
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")  # masked crc32c of the data (after it) or of the length (in the header)
_FRAMING = _HEADER.size + _CRC.size  # bytes a record adds to its data
Spans = tuple[np.ndarray, np.ndarray]  # (data start, data length) of each record of a file


def frame_record(data: bytes) -> bytes:
    """TFRecord framing of one record."""
    length = struct.pack("<Q", len(data))
    return length + _CRC.pack(_masked_crc(length)) + data + _CRC.pack(_masked_crc(data))


def _crc32c_table() -> np.ndarray:
    """The byte-at-a-time table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    crc = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        crc = np.where(crc & 1, (crc >> 1) ^ np.uint32(0x82F63B78), crc >> 1).astype(np.uint32)
    return crc


_CRC32C_TABLE = _crc32c_table()


def _masked_crc_of_lengths(lengths: np.ndarray) -> np.ndarray:
    """`_masked_crc` of many 8-byte little-endian lengths at once: record headers are all 8 bytes, so
    their CRCs vectorise over records (8 table steps on arrays) instead of one call per record;
    lengths under 64 KiB (every small record) are one lookup in a table of them all."""
    lengths = np.asarray(lengths, np.uint64)
    if len(lengths) > 4096 and int(lengths.max(initial=0)) < _SMALL_LENGTHS:
        return _small_length_crcs()[lengths.astype(np.intp)]
    return _masked_crc_of_any_lengths(lengths)


_SMALL_LENGTHS = 1 << 16


@functools.cache
def _small_length_crcs() -> np.ndarray:
    """`_masked_crc_of_lengths` of every length below `_SMALL_LENGTHS` (256 KiB, computed once)."""
    return _masked_crc_of_any_lengths(np.arange(_SMALL_LENGTHS, dtype=np.uint64))


def _masked_crc_of_any_lengths(lengths: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(lengths, "<u8").view(np.uint8).reshape(-1, 8)
    crc = np.full(len(data), 0xFFFFFFFF, np.uint32)
    for column in range(8):
        crc = _CRC32C_TABLE[(crc ^ data[:, column]) & 0xFF] ^ (crc >> 8)
    return _mask(crc ^ np.uint32(0xFFFFFFFF))


def _mask(crc: np.ndarray) -> np.ndarray:
    """`_masked_crc`'s masking of many CRC-32C values (uint32) at once."""
    crc = np.asarray(crc, np.uint32)
    return ((crc >> 15) | (crc << 17)) + np.uint32(_MASK_DELTA)  # uint32 arithmetic wraps like & 0xFFFFFFFF


def frame_records(datas: Sequence[bytes]) -> bytes:
    """TFRecord framing of many records, concatenated: `b"".join(map(frame_record, datas))` with
    the headers built as one array; only the data CRCs take a call per record."""
    if not datas:
        return b""
    lengths = np.fromiter(map(len, datas), np.uint64, len(datas))
    heads = np.empty(len(datas), [("length", "<u8"), ("crc", "<u4")])
    heads["length"], heads["crc"] = lengths, _masked_crc_of_lengths(lengths)
    tails = np.fromiter(map(_masked_crc, datas), "<u4", len(datas)).tobytes()
    head = heads.tobytes()
    size = _HEADER.size
    return b"".join(
        piece
        for i, data in enumerate(datas)
        for piece in (head[i * size : (i + 1) * size], data, tails[4 * i : 4 * i + 4])
    )


def record_spans(buf: bytes, path: str, known: Spans | None = None) -> Spans:
    """(data start, data length) of every record in a whole file's bytes; every header checked
    (whole, length CRC) and the last record's data whole.

    Without `known` the walk costs one unpack per record (the header CRCs are checked for all records
    at once). `known` (the spans of an earlier walk of this file, e.g. a cached label index) is instead
    checked against every header at once, with no per-record Python: the records must tile the file
    exactly and each header must hold its length and that length's CRC. Any mismatch falls back to
    the walk, which names the first bad record."""
    if known is not None and _spans_match(buf, *known):
        return np.asarray(known[0], np.int64), np.asarray(known[1], np.int64)
    heads: list[int] = []
    append, unpack_length = heads.append, _LENGTH.unpack_from
    pos, size = 0, len(buf)
    while pos + _HEADER.size <= size:
        append(pos)
        pos += _FRAMING + unpack_length(buf, pos)[0]
    head = np.array(heads, np.int64)
    lengths, crcs = _headers(buf, head)
    bad = np.flatnonzero(crcs != _masked_crc_of_lengths(lengths))
    if len(bad):
        raise CorruptRecordError(path, int(bad[0]), "length CRC mismatch")
    if pos != size:  # a partial header, or the last record's data or CRC cut short
        index = len(heads) - (pos > size)
        raise CorruptRecordError(path, index, "truncated record header" if pos < size else "truncated record data")
    return head + _HEADER.size, lengths.astype(np.int64)


def _headers(buf: bytes, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (length, length CRC) fields of the headers at byte offsets `head`, as arrays."""
    data = np.frombuffer(buf, np.uint8)
    if len(data) < _HEADER.size:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint32)
    rows = np.lib.stride_tricks.as_strided(data, (len(data) - _HEADER.size + 1, _HEADER.size), (1, 1))
    raw = rows[head]  # one 12-byte row per header: a row gather, not a gather per byte
    return raw[:, :8].copy().view("<u8")[:, 0], raw[:, 8:].copy().view("<u4")[:, 0]


def _spans_match(buf: bytes, starts: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether (starts, lengths) are exactly this file's records: they tile it, and every header
    holds its length with a matching CRC."""
    starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
    if len(starts) == 0 or len(starts) != len(lengths):
        return len(buf) == 0 and len(starts) == len(lengths)
    head, ends = starts - _HEADER.size, starts + lengths + _CRC.size
    if head[0] != 0 or ends[-1] != len(buf) or np.any(head[1:] != ends[:-1]) or np.any(lengths < 0):
        return False
    stored, crcs = _headers(buf, head)
    return bool(np.array_equal(stored, lengths) and np.array_equal(crcs, _masked_crc_of_lengths(stored)))


def records_at(buf: bytes, spans: Spans, path: str, indices: Iterable[int] | None = None) -> list[bytes]:
    """The records at `indices` (all when None) of a file's bytes with these spans (`record_spans`),
    in that order, each one's data CRC checked."""
    starts, lengths = spans
    chosen = range(len(starts)) if indices is None else indices
    return [_checked_data(buf, int(starts[i]), int(lengths[i]), path, int(i)) for i in chosen]


def framed_with_suffixes(
    path: str, indices: np.ndarray, spans: Spans, suffixes: Sequence[bytes], order: np.ndarray | None = None
) -> tuple[bytes, np.ndarray]:
    """`frame_record(record + suffix)` for the record at each of `indices` of one TFRecord file and the
    suffix beside it, from one sequential read, concatenated in `order` (places in `indices`, repeats
    allowed; default: `indices` order); returns those bytes and each framed record's offset in them
    (one more than records, the last the total).

    Every header is checked against `spans` (`record_spans`), and each chosen record's data CRC, in
    `indices` order. The output's data CRC is carried from the source's, extended over the suffix
    (CRC-32C runs left to right), so each record's data is hashed once, by one C call, and the framing
    is built as arrays, the pieces put in `order` as object arrays and joined once: the per-record
    Python is a few slices (benchmarks/selection_write.py)."""
    buf = epath.Path(path).read_bytes()
    starts, lengths = record_spans(buf, path, spans)
    chosen = np.asarray(indices, np.int64).reshape(-1)
    if len(chosen) != len(suffixes):
        raise ValueError(f"{len(chosen)} records but {len(suffixes)} suffixes")
    count = len(chosen)
    begin, end = starts[chosen], starts[chosen] + lengths[chosen]
    datas = list(map(buf.__getitem__, map(slice, begin.tolist(), end.tolist())))
    crcs = np.fromiter(map(google_crc32c.value, datas), np.uint32, count)
    stored = np.frombuffer(buf, np.uint8)[end[:, None] + np.arange(_CRC.size)].copy().view("<u4")[:, 0]
    bad = np.flatnonzero(_mask(crcs) != stored)
    if len(bad):
        raise CorruptRecordError(path, int(chosen[bad[0]]), "data CRC mismatch")
    sizes = lengths[chosen] + np.fromiter(map(len, suffixes), np.int64, count)
    heads = np.empty(count, [("length", "<u8"), ("crc", "<u4")])
    heads["length"], heads["crc"] = sizes, _masked_crc_of_lengths(sizes)
    tails = _mask(np.fromiter(map(google_crc32c.extend, crcs.tolist(), suffixes), np.uint32, count))
    head, tail = heads.tobytes(), tails.astype("<u4").tobytes()
    emit = np.arange(count) if order is None else np.asarray(order, np.int64).reshape(-1)
    pieces = np.empty(4 * len(emit), object)
    for k, items in enumerate(
        (
            [head[i : i + _HEADER.size] for i in range(0, len(head), _HEADER.size)],
            datas,
            suffixes,
            [tail[i : i + _CRC.size] for i in range(0, len(tail), _CRC.size)],
        )
    ):
        column = np.empty(count, object)
        column[:] = items
        pieces[k::4] = column[emit]
    offsets = np.zeros(len(emit) + 1, np.int64)
    np.cumsum((sizes + _FRAMING)[emit], out=offsets[1:])
    return b"".join(pieces.tolist()), offsets


def read_records(path: str, indices: Iterable[int] | None = None, spans: Spans | None = None) -> list[bytes]:
    """The records at `indices` (all when None) of one TFRecord file, in that order, from one
    sequential read. Every header is checked (against `spans` when given: see `record_spans`); the
    data CRC of each record returned."""
    buf = epath.Path(path).read_bytes()
    return records_at(buf, record_spans(buf, path, spans), path, indices)


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
    yield from read_records(path)


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


_WRITE_BATCH = 4096  # records framed per write: one array op and one write call each


def write_tfrecord(path: str, records: Iterable[bytes]) -> int:
    """Writes records atomically (`data.atomic.open_write`); returns the record count. Records are
    framed and written in batches (`frame_records`), so small records cost no per-record write."""
    count = 0
    iterator = iter(records)
    with atomic.open_write(path) as handle:
        while batch := list(itertools.islice(iterator, _WRITE_BATCH)):
            handle.write(frame_records(batch))
            count += len(batch)
    return count
