"""A local-mapped stand-in for gs://, for tests: `gs://bucket/x` is `<root>/bucket/x`.

`install(root)` registers an fsspec filesystem for the gs/gcs protocols (what etils.epath uses for
gs:// without TensorFlow), points orbax's TensorStore GCS kvstore at the same folder (TensorStore
talks to GCS itself), and makes `root` the working directory: fsspec paths here are bucket-relative,
so they resolve under it, while a project file that bypassed the path layer and used `open` or `os`
on a gs:// string would land in a separate `gs:` folder, which the tests look for.
"""

from __future__ import annotations

import os

import fsspec
from fsspec.implementations.local import LocalFileSystem


class LocalMappedGCS(LocalFileSystem):
    protocol = ("gs", "gcs")
    root_marker = ""

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.rstrip("/")

    def unstrip_protocol(self, name: str) -> str:
        return "gs://" + name


def install(root: str) -> None:
    os.makedirs(root, exist_ok=True)
    os.chdir(root)
    for protocol in LocalMappedGCS.protocol:
        fsspec.register_implementation(protocol, LocalMappedGCS, clobber=True)
    from orbax.checkpoint._src.path import gcs_utils

    def kvstore(path: str) -> dict:
        bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": os.path.join(root, bucket.removeprefix("gs://"), key)}

    gcs_utils.get_kvstore_for_gcs = kvstore
    gcs_utils.is_hierarchical_namespace_enabled = lambda path: False
