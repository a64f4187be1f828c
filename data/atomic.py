"""Atomic file writes: a reader sees the old file or the whole new one, never a half one.

Every file the project writes that another step or a resumed run reads goes through `open_write`,
so this is the one place that decides how: on local disk a temp file beside the target, fsync,
rename; on an object store (gs://, through `etils.epath`) the object itself, which appears only
when its upload completes (a rename there would be a copy).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
from etils import epath

from data import paths


@contextlib.contextmanager
def open_write(path: str) -> Iterator[IO[bytes]]:
    """A binary handle whose contents replace `path` only when the block completes.

    Local: written to `<path>.tmp.<pid>` (distinct per process, so processes sharing a directory never
    write the same temp file), fsynced, then renamed over `path`. A crash leaves at most that temp
    file; an exception removes it. URL: staged in a local temp file, then uploaded as one object.
    """
    target = epath.Path(paths.resolve(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    if paths.is_url(path):  # staged on local disk, uploaded whole: a failed block uploads nothing
        with tempfile.TemporaryFile() as staged:
            yield staged
            staged.seek(0)
            with target.open("wb") as upload:
                shutil.copyfileobj(staged, upload, 1 << 24)
        return
    tmp = f"{target}.tmp.{os.getpid()}"
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
    return json.loads(epath.Path(path).read_text(encoding="utf-8"))
