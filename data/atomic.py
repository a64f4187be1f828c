"""Atomic file writes: a reader sees the old file or the whole new one, never a half one.

Every file the project writes that another step or a resumed run reads goes through `open_write`
(temp file beside the target, fsync, rename), so this is the one place that decides how.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def open_write(path: str) -> Iterator[IO[bytes]]:
    """A binary handle whose contents replace `path` only when the block completes.

    Written to `<path>.tmp.<pid>` (distinct per process, so processes sharing a directory never write
    the same temp file), fsynced, then renamed over `path`. A crash leaves at most that temp file; an
    exception removes it.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    with open_write(path) as handle:
        handle.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npy(path: str, array: np.ndarray) -> None:
    """`np.save` to exactly `path` (no `.npy` appended), atomically."""
    with open_write(path) as handle:
        np.save(handle, array)


def write_npz(path: str, **arrays: np.ndarray) -> None:
    """`np.savez` to exactly `path`, atomically."""
    with open_write(path) as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
