"""Random access over a shard set's TFRecord files, for grain's `MapDataset.source`.

TFRecord is a stream format; a record-offset index built from the headers (data/records.py)
turns the files into one flat index space [0, num_records), which is what global shuffling,
per-process slicing and exact iterator resume need. The index is numpy arrays, so the source
pickles cheaply into grain's worker processes; files are opened per read, so no handle is
shared between threads or processes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from etils import epath

from data import records


class ShardSetSource:
    """`source[i] -> (i, serialized tf.train.Example)`; reads are CRC checked.

    The global index travels with the bytes so that a later decode error can still name the
    file and record index.
    """

    def __init__(self, files: list[str], index_threads: int = 8):
        self.files = list(files)
        with ThreadPoolExecutor(max(1, min(index_threads, len(self.files)))) as pool:
            indexes = list(pool.map(records.index_records, self.files))
        counts = np.array([len(ix) for ix in indexes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        flat = [entry for ix in indexes for entry in ix]
        table = np.array(flat, dtype=np.int64).reshape(-1, 2)
        self._offsets, self._lengths = table[:, 0], table[:, 1]

    @property
    def record_counts(self) -> list[int]:
        return [int(n) for n in np.diff(self._starts)]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[str, int]:
        """(file path, record index within that file) of global record `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.files[shard], int(index - self._starts[shard])

    def __getitem__(self, index: int) -> tuple[int, bytes]:
        index = int(index)
        path, local = self.locate(index)
        with epath.Path(path).open("rb") as handle:
            data = records.read_record(handle, path, local, int(self._offsets[index]), int(self._lengths[index]))
        return index, data

    def __repr__(self) -> str:
        return f"ShardSetSource({len(self.files)} files, {len(self)} records)"
