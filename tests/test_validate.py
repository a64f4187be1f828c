"""Every bad value stops launch.main before any compute, in one line naming the key and what it accepts.

`launch.main.main()` runs in-process (one import of JAX for the whole table); the pipeline itself is
replaced by a function that fails the test if it is ever reached, and the work dir must not appear.
"""

import os
import sys
import textwrap

import fsspec
import pytest
from absl import flags
from fsspec.implementations.memory import MemoryFileSystem

from launch import main as launch_main
from launch import stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "demo.py") + ":tiny"


class _MemoryGCS(MemoryFileSystem):
    """An in-memory stand-in for gs://: one bucket, `gs://present`, exists."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]


def _run(argv, capsys):
    argv = ["launch.main", *argv]
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # overrides of an earlier call
        delattr(flags.FLAGS, name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)  # ml_collections reads the --config.* overrides from sys.argv
        code = launch_main.main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_pipeline(monkeypatch):
    def reached(*args, **kwargs):
        raise AssertionError("the pipeline ran despite a bad input")

    monkeypatch.setattr(stages, "run_pipeline", reached)


def _external_config(tmp_path, **target):
    """A config file: the tiny demo with an image-folder target at `target['path']`."""
    path = tmp_path / "external.py"
    path.write_text(
        textwrap.dedent(f"""
        from configs import demo
        from data import sides

        def get_config():
            c = demo.get_config("tiny")
            c.data.kind = "external"
            c.data.source = sides.side_config("embedded")
            c.data.target = sides.side_config(**{target!r})
            return c
        """)
    )
    return str(path)


BAD_OVERRIDES = [
    ("--config.pretrain.global_batch_size=0", "config key 'pretrain.global_batch_size' = 0: must be an integer > 0"),
    ("--config.pretrain.steps=-5", "config key 'pretrain.steps' = -5: must be an integer >= 0"),
    ("--config.finetune.learning_rate=-1", "config key 'finetune.learning_rate' = -1.0: must be a number > 0"),
    (
        "--config.selection.methods=('same','bogus')",
        "config key 'selection.methods' = ('same', 'bogus'): unknown method 'bogus'; known: 'same', 'elastic', "
        "'uniform', 'reverse', 'hierarchy', 'weighted_loss'",  # the registry's first six; more may follow
    ),
    ("--config.selection.methods=()", "config key 'selection.methods' = (): must be a non-empty tuple"),
    ("--config.selection.size=0", "config key 'selection.size' = 0: must be a number > 0"),
    ("--config.pretrain.weight_decay=-0.1", "config key 'pretrain.weight_decay' = -0.1: must be a number >= 0"),
    ("--config.weights.temperature=0", "config key 'weights.temperature' = 0.0: must be a number > 0"),
    ("--config.finetune.seeds=()", "config key 'finetune.seeds' = (): must be a non-empty tuple of integers >= 0"),
    ("--config.finetune.seeds=(1,1)", "config key 'finetune.seeds' = (1, 1): must be a tuple of distinct seeds"),
    ("--config.model.image_size=0", "config key 'model.image_size' = 0: must be an integer > 0"),
    (
        "--config.pretrain.optimizer=adamw",
        "config key 'pretrain.optimizer' = 'adamw': must be one of 'sgd', 'rmsprop', 'adam'",
    ),
    (
        "--config.pretrain.global_batch_size=12",
        "config key 'pretrain.global_batch_size' = 12: must be a multiple of 8 (1 process(es) x 8 local device(s))",
    ),
    ("--config.weights.batch_size=20", "config key 'weights.batch_size' = 20: must be a multiple of 8"),
    (
        "--config.finetune.label_smoothing=1.5",
        "config key 'finetune.label_smoothing' = 1.5: must be a number in [0, 1)",
    ),
    (
        "--config.pretrain.warmup_steps=10",
        "config key 'pretrain.warmup_steps' = 10: must be smaller than pretrain.steps = 6",
    ),
    ("--config.data.kind=tfds", "config key 'data.kind' = 'tfds': must be one of 'embedded', 'external'"),
    (
        "--config.pretrain.end_learning_rate=1",
        "config key 'pretrain.end_learning_rate' = 1.0: must be <= pretrain.learning_rate",
    ),
    ("--config.finetune.min_crop_area=0", "config key 'finetune.min_crop_area' = 0.0: must be a number in (0, 1]"),
    ("--config.pretrain.ema_decay=1", "config key 'pretrain.ema_decay' = 1.0: must be a number in [0, 1)"),
    (
        "--config.finetune.bn_momentum=fast",
        "config key 'finetune.bn_momentum' = 'fast': must be 'model', 'auto' or a number in [0, 1)",
    ),
    ("--config.seed=-1", "config key 'seed' = -1: must be an integer >= 0"),
    (
        "--config.pretrain.compute_dtype=float16",
        "config key 'pretrain.compute_dtype' = 'float16': must be one of 'float32', 'bfloat16'",
    ),
    ("--config.pretrain.steps=0", "config keys 'pretrain.steps' and 'pretrain.epochs' are both 0"),
    (
        "--config.selection.example_weight_rule=sum",
        "config key 'selection.example_weight_rule' = 'sum': must be one of",
    ),
    ("--stages=prepare,trian", "unknown stage(s) ['trian']"),
    ("--config.pretrain.stepz=3", "unknown config key 'pretrain.stepz'"),
]


def _assert_refused(code, err, message, workdir):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not os.path.exists(workdir)  # nothing written


@pytest.mark.parametrize("override, message", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_is_one_line_before_compute(tmp_path, capsys, override, message):
    workdir = tmp_path / "w"
    code, err = _run([f"--config={TINY}", f"--workdir={workdir}", override], capsys)
    _assert_refused(code, err, message, workdir)


def test_inception_image_size_below_its_minimum(tmp_path, capsys):
    workdir = tmp_path / "w"
    code, err = _run([f"--config={TINY}", f"--workdir={workdir}", "--config.model.name=inception_v3"], capsys)
    _assert_refused(
        code,
        err,
        "config key 'model.image_size' = 32: must be an integer >= 75 (inception_v3's smallest input)",
        workdir,
    )


def test_workdir_that_is_a_file(tmp_path, capsys):
    workdir = tmp_path / "taken"
    workdir.write_text("not a directory")
    code, err = _run([f"--config={TINY}", f"--workdir={workdir}"], capsys)
    assert (
        code == 2
        and err.strip() == f"error: --workdir {workdir}: is an existing file; it must be a directory (new or existing)"
    )
    assert workdir.read_text() == "not a directory"


def test_workdir_below_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    workdir = tmp_path / "file" / "run"
    code, err = _run([f"--config={TINY}", f"--workdir={workdir}"], capsys)
    assert code == 2 and f"{tmp_path / 'file'} is a file, so the directory cannot be created" in err


def test_missing_workdir_flag(capsys):
    code, err = _run([f"--config={TINY}"], capsys)
    assert code == 2 and err.startswith("error: --workdir is required")


def test_bucket_that_is_not_there(tmp_path, capsys):
    fsspec.register_implementation("gs", _MemoryGCS, clobber=True)
    fsspec.register_implementation("gcs", _MemoryGCS, clobber=True)
    _MemoryGCS().mkdir("present")
    code, err = _run([f"--config={TINY}", "--workdir=gs://no-such-bucket/run"], capsys)
    assert code == 2 and err.strip() == (
        "error: --workdir gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist "
        "(or this account cannot see it)"
    )
    assert not _MemoryGCS().exists("no-such-bucket")


def test_missing_data_path(tmp_path, capsys):
    config = _external_config(tmp_path, kind="folder", path=str(tmp_path / "nowhere"))
    workdir = tmp_path / "w"
    code, err = _run([f"--config={config}", f"--workdir={workdir}"], capsys)
    _assert_refused(
        code,
        err,
        f"config key 'data.target.train_split' = 'train': must be an image folder under data.target.path; "
        f"{tmp_path / 'nowhere' / 'train'} does not exist",
        workdir,
    )


def test_tfds_dataset_not_prepared(tmp_path, capsys):
    config = _external_config(tmp_path, kind="tfds", name="oxford_iiit_pet", data_dir=str(tmp_path / "tfds"))
    workdir = tmp_path / "w"
    code, err = _run([f"--config={config}", f"--workdir={workdir}"], capsys)
    _assert_refused(
        code, err, "config key 'data.target.name' = 'oxford_iiit_pet': must be a dataset prepared under", workdir
    )


def test_unknown_side_kind(tmp_path, capsys):
    config = _external_config(tmp_path, kind="folder", path=str(tmp_path))
    workdir = tmp_path / "w"
    code, err = _run([f"--config={config}", f"--workdir={workdir}", "--config.data.target.kind=zip"], capsys)
    _assert_refused(
        code,
        err,
        "config key 'data.target.kind' = 'zip': must be one of 'tfds', 'folder', 'csv', 'shards', 'embedded'",
        workdir,
    )
