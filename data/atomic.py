"""Atomic file writes: a reader sees the old file or the whole new one, never a half one.

Every file the project writes that another step or a resumed run reads goes through `open_write`,
so this is the one place that decides how: on local disk a temp file beside the target, fsync,
rename; on an object store (gs://, through `etils.epath`) the object itself, which appears only
when its upload completes (a rename there would be a copy).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
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


class Background:
    """Atomic writes run by a few threads while the caller goes on: each local write ends in an fsync
    that waits milliseconds for the device (4 ms each on this project's VM disk), and a write of many
    small files would otherwise wait for each in turn. Concurrent fsyncs overlap each other as well.

    `submit(fn, *args, **kwargs)` runs `fn(*args, **kwargs)` (writes that must land in order go in one call); at most
    `pending` calls are outstanding, so memory holds at most that many calls' data. `wait()`, and
    leaving a `with` block, returns once every call is done and re-raises the first error.
    """

    def __init__(self, threads: int = 4, pending: int = 4):
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="atomic-write")
        self._slots = threading.BoundedSemaphore(pending)
        self._futures: list[concurrent.futures.Future] = []

    def submit(self, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def wait(self) -> None:
        futures, self._futures = self._futures, []
        for future in futures:
            future.result()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


def write_bytes(path: str, data: bytes) -> None:
    with open_write(path) as handle:
        handle.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json_text(obj) + "\n")


def json_text(obj: Any) -> str:
    """`json.dumps(obj, indent=2, sort_keys=True)`, the same text, faster for long lists of numbers.

    The stdlib's indenting encoder is pure Python (about 1 us a number), and a selected set's manifest
    holds per-label counts, draws and plans: 150k numbers for 18k labels, 0.08 s of a 2 s write. Lists of
    plain ints and floats are encoded here by the C encoder (its number text is the indenting encoder's)
    and laid out one per line; anything this does not lay out itself (a dict with non-str keys) goes to
    the stdlib whole (tests compare the two)."""
    try:
        return _indented(obj, 0)
    except _Unlaid:
        return json.dumps(obj, indent=2, sort_keys=True)


_string = json.encoder.encode_basestring_ascii  # C; what both stdlib encoders use for str (ensure_ascii)


class _Unlaid(Exception):
    """A value `_indented` leaves to the stdlib."""


def _indented(obj: Any, level: int) -> str:
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        if not all(type(key) is str for key in obj):  # the stdlib converts (and sorts) other keys its way
            raise _Unlaid
        items = [f"{_string(key)}: {_indented(value, level + 1)}" for key, value in sorted(obj.items())]
    elif isinstance(obj, list | tuple):
        if not obj:
            return "[]"
        types = set(map(type, obj))
        if types <= {int, float}:  # numbers only: no ", " inside an item
            items = json.dumps(obj)[1:-1].split(", ")
        elif types == {str}:
            items = list(map(_string, obj))
        else:
            items = [_indented(value, level + 1) for value in obj]
    elif type(obj) is str:
        return _string(obj)
    else:
        return json.dumps(obj)
    pad = "\n" + "  " * (level + 1)
    opening, closing = ("{", "}") if isinstance(obj, dict) else ("[", "]")
    return opening + pad + ("," + pad).join(items) + "\n" + "  " * level + closing


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
