"""The TPU-pod and SLURM launchers pass every override through as the same argv, never as shell.

Each launcher's --dry_run prints its commands shell-quoted; the test has bash parse the printed line,
then runs the remote command (pod) or the batch script (SLURM) against fake `python` / `sbatch` /
`srun` executables that record the argv they receive.
"""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NASTY = [
    "--config.selection.methods=('same','elastic')",
    '--config.data.target_name=it\'s a "test"; rm -rf ~ $HOME `id` && echo pwned',
    "--config.pretrain.steps=7",
    "--config.report.title=two  spaces\ttab",
]


def _argv_of_line(line: str) -> list[str]:
    """The argv a shell makes of one printed command line."""
    out = subprocess.run(
        ["bash", "-c", f"args=( {line} ); printf '%s\\0' \"${{args[@]}}\""], capture_output=True, check=True
    ).stdout
    return out.decode().split("\0")[:-1]


def _recorder(path, name: str) -> str:
    """An executable that writes its argv (NUL-separated) to `<path>/<name>.argv`."""
    path.mkdir(parents=True, exist_ok=True)
    exe = path / name
    exe.write_text(f"#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" > {str(path / name)}.argv\n")
    exe.chmod(0o755)
    return str(path / f"{name}.argv")


def _read_argv(path: str) -> list[str]:
    return open(path, "rb").read().decode().split("\0")[:-1]


def test_tpu_pod_dry_run_quotes_overrides(tmp_path):
    result = subprocess.run(
        [
            "bash",
            "launch/tpu_pod.sh",
            "--dry_run",
            "my-tpu",
            "us-central2-b",
            "v4-32",
            "configs/demo.py:tiny",
            "gs://bucket/run",
            *NASTY,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": "/usr/bin:/bin"},  # no gcloud here: a dry run must not need it
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    argvs = [_argv_of_line(line) for line in lines]
    assert [a[:5] for a in argvs[:1]] == [["gcloud", "compute", "tpus", "tpu-vm", "create"]]
    ssh = [a for a in argvs if a[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert len(ssh) == 2 and all("--worker=all" in a for a in ssh)
    remote_job = next(arg for arg in ssh[1] if arg.startswith("--command=")).removeprefix("--command=")
    # Run the remote command as a worker's shell would, with a recording python in ~/tcpt/.venv/bin.
    home = tmp_path / "home"
    record = _recorder(home / "tcpt" / ".venv" / "bin", "python")
    subprocess.run(["bash", "-c", remote_job], env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True)
    assert _read_argv(record) == [
        "-m",
        "launch.main",
        "--multihost",
        "--config=configs/demo.py:tiny",
        "--workdir=gs://bucket/run",
        *NASTY,
    ]
    assert not os.path.exists(os.path.expanduser("~/pwned"))
    setup = next(arg for arg in ssh[0] if arg.startswith("--command="))
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert f"git checkout -q --detach {commit}" in setup and "scripts/ensure_venv.sh" in setup


def test_tpu_pod_refuses_a_local_workdir():
    result = subprocess.run(
        ["bash", "launch/tpu_pod.sh", "--dry_run", "t", "z", "v4-8", "configs/demo.py", "/tmp/run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "WORKDIR must be a gs:// path" in result.stderr


def test_slurm_dry_run_and_batch_script_pass_argv_unchanged(tmp_path):
    result = subprocess.run(
        [
            "bash",
            "launch/slurm.sh",
            "--dry_run",
            "--nodes=2",
            "--job-name=a b",
            "--",
            "configs/demo.py:tiny",
            "/shared/run one",
            *NASTY,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    fake_bin = tmp_path / "bin"
    sbatch_record = _recorder(fake_bin, "sbatch")
    subprocess.run(["bash", "-c", line], env={"PATH": f"{fake_bin}:/usr/bin:/bin"}, check=True)
    sbatch_argv = _read_argv(sbatch_record)
    assert sbatch_argv == [
        f"--chdir={ROOT}",
        "--nodes=2",
        "--job-name=a b",
        f"{ROOT}/launch/slurm.sbatch",
        "configs/demo.py:tiny",
        "/shared/run one",
        *NASTY,
    ]
    # The batch script, as SLURM runs it (in --chdir, with srun on PATH): srun gets the same argv.
    job_dir = tmp_path / "job"
    (job_dir / "scripts").mkdir(parents=True)
    (job_dir / "scripts" / "ensure_venv.sh").write_text("true\n")
    srun_record = _recorder(fake_bin, "srun")
    subprocess.run(
        ["bash", sbatch_argv[3], *sbatch_argv[4:]], cwd=job_dir, env={"PATH": f"{fake_bin}:/usr/bin:/bin"}, check=True
    )
    assert _read_argv(srun_record) == [
        "python",
        "-m",
        "launch.main",
        "--multihost",
        "--config=configs/demo.py:tiny",
        "--workdir=/shared/run one",
        *NASTY,
    ]


@pytest.mark.parametrize("script", ["launch/tpu_pod.sh", "launch/slurm.sh"])
def test_usage_without_arguments(script):
    result = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr
