"""The main job as a user runs it: resume after SIGTERM (preemption), bad overrides, the config it writes, the demo
variants (SIGKILL and multi-process jobs: test_train_lifecycle.py, beside the reference run they compare with)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_train_lifecycle import _read_step  # the newest checkpoint's state, on this process's device

from baryir_jax.config import load as load_config  # the one config loader (FILE[:variant])

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny demo on all seven embedded sources: every degradation id and five potentials (the same program as
# test_train_lifecycle.py's runs, compiled once per run through the shared cache).
CONFIG = os.path.join(ROOT, "configs", "demo.py") + ":all,tiny"


@pytest.fixture(scope="module")
def data_dir(embedded_data_dir):
    return embedded_data_dir


@pytest.fixture(scope="module")
def cache_dir(jax_cache_dir):
    return jax_cache_dir


def _env(cache_dir, devices=1, extra=None):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    # identical programs compile once per run (tests/conftest.py's jax_cache_dir)
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    env.update(extra or {})
    return env


def _cmd(workdir, data_dir, *overrides):
    return [
        sys.executable,
        "-m",
        "baryir_jax.main",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.train.export_model=false",
        *overrides,
    ]


def _run(cmd, env, timeout=600):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_sigterm_saves_and_the_run_resumes(tmp_path, data_dir, cache_dir):
    env = _env(cache_dir)
    run_dir = str(tmp_path / "preempted")
    cmd = _cmd(run_dir, data_dir, "--config.train.num_steps=100000", "--config.train.checkpoint_every=100000")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # wait for training to be under way (clu logs the first scalars at step 2), then preempt
    seen = ""
    deadline = time.time() + 600
    while "[2] train/" not in seen and time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        seen += line
    p.send_signal(signal.SIGTERM)
    _, rest = p.communicate(timeout=300)
    assert p.returncode == 0, (seen + rest)[-3000:]
    assert "SIGTERM: saved step" in rest
    step, _ = _read_step(run_dir)
    assert 2 <= step < 100000
    r = _run(cmd[:-2] + [f"--config.train.num_steps={step + 2}", "--config.train.checkpoint_every=1"], env)
    assert "resumed from" in r.stderr and f"at step {step}" in r.stderr
    assert _read_step(run_dir)[0] == step + 2


def test_unknown_override_names_the_key(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "baryir_jax.main",
            f"--config={CONFIG}",
            f"--workdir={tmp_path}",
            "--config.optim.learning_rate=1",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert "learning_rate" in r.stderr
    assert "Traceback" not in r.stderr


def test_config_file_problems_are_one_clear_message(tmp_path):
    demo = os.path.join(ROOT, "configs", "demo.py")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None):\n    return undefined_name\n")
    for spec, says in (
        (demo + ":fast", "unknown variant 'fast'; known: tiny, all"),
        (str(tmp_path / "missing.py"), "missing.py: no such file"),
        (str(broken), "NameError: name 'undefined_name' is not defined"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "baryir_jax.main", f"--config={spec}", f"--workdir={tmp_path / 'w'}"],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2, (spec, r.stderr[-2000:])
        assert says in r.stderr and "Traceback" not in r.stderr, (spec, r.stderr[-2000:])


def test_config_and_data_problems_are_one_clear_message(tmp_path):
    three_task = os.path.join(os.path.dirname(CONFIG), "three_task.py")
    cmd = [
        sys.executable,
        "-m",
        "baryir_jax.main",
        f"--config={three_task}",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.data_dir={tmp_path / 'empty'}",
    ]
    # 8 forced CPU devices (this test session's XLA_FLAGS) and the official batch of 3: a config problem.
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "config.data.batch_size=3 must be divisible by the 8 devices" in r.stderr
    assert "Traceback" not in r.stderr
    # One device: the data sets are not prepared.
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, XLA_FLAGS=""))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "is not prepared in" in r.stderr and "baryir-prepare --dataset" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_resolved_config_is_written(tmp_path, data_dir, cache_dir):
    wd = str(tmp_path / "w")
    _run(_cmd(wd, data_dir, "--config.train.num_steps=1", "--config.optim.lr=0.0005"), _env(cache_dir))
    cfg = json.load(open(os.path.join(wd, "config.json")))
    assert cfg["optim"]["lr"] == 0.0005 and cfg["data"]["data_dir"] == data_dir


def test_demo_variants_train_what_they_say(tmp_path, data_dir):
    """configs/demo.py: the default is the official 3D task list, `all` adds blur and low light, and the x0.1
    decay of each lands where its comment says (steps per epoch counted from the prepared embedded data)."""
    from baryir_jax.train.experiment import Experiment

    demo = os.path.join(ROOT, "configs", "demo.py")
    official_3d = load_config(os.path.join(ROOT, "configs", "three_task.py"))
    expected = {
        "": (tuple(official_3d.data.tasks), 18, 324, 400),
        "all": (tuple(official_3d.data.tasks) + ("deblur", "lowlight"), 32, 704, 850),
    }
    for variant, (tasks, per_epoch, decay_step, steps) in expected.items():
        c = load_config(demo + (":" + variant if variant else ""))
        assert tuple(c.data.tasks) == tuple(c.eval.tasks) == tasks, variant
        c.data.data_dir = data_dir
        exp = Experiment(c, str(tmp_path / (variant or "default")))
        assert exp.steps_per_epoch == per_epoch, variant
        assert c.optim.decay_every_epochs * exp.steps_per_epoch == decay_step < c.train.num_steps == steps, variant
        assert c.train.image_every == steps, variant  # the TensorBoard images of the last step
    both = load_config(demo + ":all,tiny")
    assert both.model.dim == 8 and "deblur" in both.data.tasks
    with pytest.raises(ValueError, match="unknown variant 'fast'.*tiny, all"):
        load_config(demo + ":fast")
