"""The one path layer: every file the project reads or writes goes through `etils.epath`.

So a `gs://bucket/run` work dir works on TPU VMs (every worker sees the same bucket) and local disk
runs the same code. A URL is never passed through `os.path.abspath`, which would turn
`gs://bucket/run` into a local folder `./gs:/bucket/run` on each worker.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import shutil
import time
from typing import Literal

import numpy as np
from etils import epath


def is_url(path: str | os.PathLike) -> bool:
    """`scheme://...` (gs://, s3://, ...), as opposed to a local path."""
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> str:
    """Absolute local paths (so a chdir cannot move them); URLs unchanged."""
    text = os.fspath(path)
    return text if is_url(text) else os.path.abspath(os.path.expanduser(text))


def bucket_of(url: str) -> str:
    """`gs://bucket/a/b` -> `gs://bucket`."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def unusable_dir(path: str) -> str | None:
    """Why `path` cannot be this job's output directory (created if needed), or None when it can."""
    if is_url(path):
        bucket = bucket_of(path)
        try:
            if not epath.Path(bucket).exists():
                return f"bucket {bucket} does not exist (or this account cannot see it)"
            target = epath.Path(path)
            if target.exists() and not target.is_dir():
                return "is an existing file; it must be a directory (new or existing)"
        except Exception as err:  # a missing filesystem driver or credentials: say which
            return f"cannot reach {bucket} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        return None
    local = resolve(path)
    if os.path.exists(local) and not os.path.isdir(local):
        return "is an existing file; it must be a directory (new or existing)"
    ancestor = local
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        return f"{ancestor} is a file, so the directory cannot be created"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} is not writable by this user"
    return None


def missing(path: str) -> bool:
    """True when nothing exists at `path` (local or URL)."""
    return not epath.Path(resolve(path)).exists()


def np_load(path: str, mmap_mode: Literal["r+", "r", "w+", "c"] | None = None):
    """`np.load` through the path layer: memory-mapped on local disk when asked, read whole from a URL."""
    if not is_url(path):
        return np.load(path, mmap_mode=mmap_mode)
    return np.load(io.BytesIO(epath.Path(path).read_bytes()))


def remove_tree(path: str) -> None:
    """Removes a directory tree. Local files are unlinked by several threads at once: on a disk mounted
    with `discard` (this project's VM) each unlink of a written file waits about 3 ms for the device,
    and concurrent unlinks overlap those waits (a 320-file scratch dir: 1.1 s alone, about 0.1 s)."""
    if is_url(path):
        epath.Path(path).rmtree()
        return
    files = [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(os.unlink, files))
    shutil.rmtree(path)


def wait_for(files: list[str], timeout_s: float = 24 * 3600.0, until: str | None = None) -> bool:
    """Polls until every path exists: files that other processes write to the shared work dir.

    Multi-process phases (selection writes, scoring passes) hand work over through files rather
    than a collective, so a process that finished early needs no open connection to the others.
    `until`: a path whose existence ends the wait early (the whole work is complete, and the files
    waited for may be cleaned up already); returns whether it did.
    """
    deadline = time.monotonic() + timeout_s
    pending = [p for p in files if not epath.Path(p).exists()]
    delay = 0.05
    while pending:
        if until is not None and epath.Path(until).exists():
            return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f}s for {len(pending)} file(s), e.g. {pending[0]}")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
        pending = [p for p in pending if not epath.Path(p).exists()]
    return False
