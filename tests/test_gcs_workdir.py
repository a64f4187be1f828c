"""A whole job with its data and work dir on gs://, through the path layer (etils.epath).

gs:// is `tests/fake_gcs.py`'s local-mapped stand-in: the job's process runs in the fake root, so a
file the project opened with `open`/`os` on a gs:// string would appear in a `gs:` folder instead
of under the bucket, and a later stage looking for it through the path layer would not find it.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from data import manifest
from tests.test_real_data import CLASSES, SOURCE_LABELS, write_config, write_csv_source, write_folder_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_JOB = """
import sys
sys.path.insert(0, {root!r})
from tests import fake_gcs
fake_gcs.install({fake_root!r})
from launch import main
argv = ["launch.main", "--config=" + {config!r}, "--workdir=gs://bucket/run"]
sys.argv = argv
sys.exit(main.main(argv))
"""


@pytest.mark.slow
def test_job_with_data_and_workdir_on_a_bucket(tmp_path):
    fake_root = tmp_path / "gcs"
    bucket = fake_root / "bucket"
    write_folder_target(bucket / "data" / "target")
    write_csv_source(bucket / "data" / "source")
    config = write_config(
        tmp_path / "config.py",
        source=dict(
            kind="csv",
            path="gs://bucket/data/source",
            train_split="labels.csv",
            hierarchy="gs://bucket/data/source/tree.json",
        ),
        target=dict(kind="folder", path="gs://bucket/data/target", validation_fraction=0.25),
    )
    script = _JOB.format(root=ROOT, fake_root=str(fake_root), config=config)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = bucket / "run"
    assert (run / "report.md").exists() and "Entire source" in (run / "report.md").read_text()
    assert all((run / "stages" / f"{stage}.json").exists() for stage in ("prepare", "finetune", "report"))
    assert list((run / "pretrain" / "entire_source" / "checkpoints").iterdir())  # orbax wrote to the bucket
    source = manifest.load_manifest(str(run / "data" / "source"))
    assert source.label_names == list(SOURCE_LABELS) and source.num_records == 64
    assert manifest.load_manifest(str(run / "data" / "target" / "validation")).label_names == list(CLASSES)
    (record,) = (run / "launches").iterdir()
    assert json.loads(record.read_text())["command"].endswith("--workdir=gs://bucket/run")
    stray = [d / "gs:" for d in (fake_root, tmp_path, pathlib.Path(ROOT)) if (d / "gs:").exists()]
    assert not stray, f"files written around the path layer: {stray}"
    assert not (fake_root / "run").exists()  # nothing resolved the work dir as a local relative path
