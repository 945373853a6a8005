"""A workdir over its whole life with ``baryir-train``: config values that cannot work, divergence, extending a
run, SIGKILL and resume, changed settings, damaged checkpoints, other worker and process counts, SLURM without srun.

One reference run (the tiny demo on all seven embedded sources, 4 steps, a checkpoint every step, exported) is
trained once per module and copied by the tests that continue or damage it; programs compile once per session
(tests/conftest.py's cache, shared with test_train_resume.py).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from multiprocess import free_port, run_job
from train_logs import step_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny demo on all seven embedded sources: every degradation id and five potentials, so these runs play the
# whole game. (With the 3D tiny mixture, the 2-process run's step-3 transport cost differed from the 1-process
# run's by 1.4e-5 relative, just above the 1e-5 bound: RMSprop's first steps move every parameter by ±10·lr, so
# gradients that are zero up to rounding take their sign from the reduction order. See test_train_step.)
CONFIG = os.path.join(ROOT, "configs", "demo.py") + ":all,tiny"
STEPS = 4
COMMON = ("--config.train.checkpoint_every=1", "--config.train.max_to_keep=10", "--config.train.log_every=1")


def _env(cache_dir, devices=1, extra=None, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    env.update(extra or {})
    return env


def _cmd(workdir, data_dir, *overrides, config=CONFIG):
    return [
        sys.executable,
        "-m",
        "baryir_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *COMMON,
        *overrides,
    ]


def _run(cmd, env, rc=0, timeout=900):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == rc, (r.returncode, r.stderr[-4000:])
    return r


def _handlers():
    import orbax.checkpoint as ocp

    return dict(
        state=ocp.StandardCheckpointHandler(),
        data_position=ocp.JsonCheckpointHandler(),
        config=ocp.JsonCheckpointHandler(),
    )


def _read_step(workdir, step=None, items=("state",)):
    """A checkpoint's items (the state on this process's first device), newest step by default."""
    import jax
    import orbax.checkpoint as ocp

    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_handlers=_handlers()) as mngr:
        step = mngr.latest_step() if step is None else step
        meta = mngr.item_metadata(step)["state"]
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
        args = {k: ocp.args.StandardRestore(target) if k == "state" else ocp.args.JsonRestore() for k in items}
        out = mngr.restore(step, args=ocp.args.Composite(**args))
    return step, {k: out[k] for k in items}


def _steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _assert_same_state(a, b):
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _copy(src, dst, keep_steps=None):
    shutil.copytree(src, dst)
    if keep_steps is not None:
        for s in _steps(dst):
            if s not in keep_steps:
                shutil.rmtree(os.path.join(dst, "checkpoints", str(s)))
    return str(dst)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_data_dir, jax_cache_dir):
    """(workdir, stderr): 4 uninterrupted steps, a checkpoint at every step, the model exported."""
    wd = str(tmp_path_factory.mktemp("reference") / "run")
    r = _run(_cmd(wd, embedded_data_dir, f"--config.train.num_steps={STEPS}"), _env(jax_cache_dir))
    assert _steps(wd) == [1, 2, 3, 4]
    return wd, r.stderr


# ------------------------------------------------------------------------------ 1. config values that cannot work

BAD_VALUES = [
    ("data.batch_size", 0, "config.data.batch_size=0: allowed: an integer >= 1"),
    ("data.batch_size", -8, "config.data.batch_size=-8"),
    ("train.grad_accum_steps", 0, "config.train.grad_accum_steps=0"),
    ("train.grad_accum_steps", 3, "a divisor of config.data.batch_size=8"),
    ("data.patch_size", 30, "config.data.patch_size=30: allowed: a multiple of 8"),
    ("data.patch_size", 0, "config.data.patch_size=0"),
    ("data.patch_size", 8, "at least 16"),
    ("data.tasks", (), "tasks is empty"),
    ("data.tasks", ("derain", "dehaze", "denoise_51"), "unknown task 'denoise_51'"),
    ("data.tasks", ("derain", "derain"), "duplicates"),
    ("data.collection", "bogus", "config.data.collection='bogus': allowed: one of 'benchmark', 'embedded'"),
    ("data.multipliers", "derain=4,dehze=2", "unknown task 'dehze'"),
    ("data.multipliers", "derain=0", "the multiplier of derain must be a positive integer"),
    ("data.multipliers", "derain:4", "expected 'task=N,task=N'"),
    ("data.num_workers", -1, "config.data.num_workers=-1"),
    ("optim.lr", -1e-4, "config.optim.lr=-0.0001: allowed: a finite number >= 0"),
    ("optim.potentials_lr", float("nan"), "config.optim.potentials_lr=nan"),
    ("optim.eps", 0.0, "config.optim.eps=0.0: allowed: a finite number > 0"),
    ("optim.rmsprop_decay", 1.0, "config.optim.rmsprop_decay=1.0"),
    ("optim.decay_factor", 0.0, "config.optim.decay_factor=0.0"),
    ("optim.decay_every_epochs", 0, "config.optim.decay_every_epochs=0"),
    ("train.num_steps", -5, "config.train.num_steps=-5: allowed: -1 or an integer >= 1"),
    ("train.num_steps", 0, "config.train.num_steps=0"),
    ("train.checkpoint_every", 0, "config.train.checkpoint_every=0"),
    ("train.log_every", -2, "config.train.log_every=-2"),
    ("train.max_to_keep", 0, "config.train.max_to_keep=0"),
    ("train.eval_every", -3, "config.train.eval_every=-3"),
    ("train.init_from", "no/such/model", "config.train.init_from='no/such/model'"),
    ("dtype", "float16", "config.dtype='float16': allowed: one of 'float32', 'bfloat16'"),
    ("seed", -1, "config.seed=-1"),
    ("loss.congruence", "exactly", "config.loss.congruence='exactly': allowed: one of 'penalty'"),
    ("loss.penalty_points", "first", "config.loss.penalty_points='first'"),
    ("loss.potential_update", "three_step", "config.loss.potential_update='three_step'"),
    ("loss.inner_map_steps", 0, "config.loss.inner_map_steps=0"),
    ("loss.tau", 0.0, "config.loss.tau=0.0"),
    ("loss.gamma", -0.05, "config.loss.gamma=-0.05"),
    ("model.heads", (1, 1, 3, 1), "heads[2]=3 must divide"),
    ("model.heads", (1, 1, 1), "config.model.heads=(1, 1, 1): allowed: 4 integers >= 1"),
    ("model.dim", 7, "config.model.dim=7: allowed: an even integer"),
    ("model.num_blocks", (1, -1, 1, 1), "config.model.num_blocks"),
    ("model.ffn_expansion_factor", 0.0, "config.model.ffn_expansion_factor=0.0"),
    ("model.bary_blocks", -2, "config.model.bary_blocks=-2"),
    ("eval.tasks", ("deraim",), "'deraim' has no evaluation split"),
    ("eval.max_images", 0, "config.eval.max_images=0"),
]


def _demo_tiny():
    from baryir_jax.evaluate.checkpoint import load_config

    return load_config(CONFIG)


@pytest.mark.parametrize("path,value,says", BAD_VALUES, ids=[f"{p}={v!r}" for p, v, _ in BAD_VALUES])
def test_a_config_value_that_cannot_work_is_one_line(tmp_path, embedded_data_dir, path, value, says):
    """Building the experiment checks every field first: one line naming the field, the value, what is allowed."""
    from baryir_jax.config import ConfigError
    from baryir_jax.train.experiment import Experiment

    c = _demo_tiny()
    c.data.data_dir = embedded_data_dir
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
        node = node[p]
    with c.unlocked():
        node[leaf] = value
    with pytest.raises(ConfigError) as e:
        Experiment(c, str(tmp_path / "w"))
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_bad_values_on_the_command_line_exit_2_before_anything_is_written(tmp_path, embedded_data_dir):
    for override, says in (
        ("--config.data.batch_size=0", "config.data.batch_size=0: allowed: an integer >= 1"),
        ("--config.data.patch_size=30", "config.data.patch_size=30"),
        ("--config.data.tasks=('derain','dehaz')", "unknown task 'dehaz'"),
    ):
        wd = tmp_path / "w"
        r = subprocess.run(
            _cmd(str(wd), embedded_data_dir, override), capture_output=True, text=True, env=_env(str(tmp_path))
        )
        assert r.returncode == 2, (override, r.stderr[-3000:])
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("baryir-train: ") and says in last, (override, r.stderr[-3000:])
        assert "Traceback" not in r.stderr
        assert not wd.exists()  # validated before anything was written or built


def test_a_workdir_that_is_a_file_is_one_line_before_anything_is_built(tmp_path, embedded_data_dir):
    """--workdir naming a file, or a path below a file: one line and exit 2 from the flags alone (no data read, no
    model built; the orbax traceback it used to be came after the data were loaded)."""
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    for wd, says in ((afile, "exists and is not a folder"), (afile / "sub", f"{afile} is a file, not a folder")):
        r = subprocess.run(_cmd(str(wd), embedded_data_dir), capture_output=True, text=True, env=_env(str(tmp_path)))
        assert r.returncode == 2, (wd, r.stderr[-3000:])
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"baryir-train: --workdir {wd}") and says in last, r.stderr[-3000:]
        assert "Traceback" not in r.stderr
    assert afile.read_bytes() == b""


README_OVERRIDES = [
    {"data.tasks": ("derain", "dehaze")},  # README: "any subset; potentials and λ follow"
    {"loss.congruence": "exact"},
    {"loss.penalty_points": "batch"},
    {"loss.potential_update": "summed", "loss.inner_map_steps": 3},
    {"optim.lr": 2e-4, "loss.gamma": 0.02, "train.num_epochs": 10},
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", README_OVERRIDES, ids=[",".join(o) for o in README_OVERRIDES])
def test_readme_overrides_build_on_the_demo(tmp_path, embedded_data_dir, overrides):
    """README's override examples on configs/demo.py: validated and built (potentials and λ follow the tasks)."""
    from baryir_jax.evaluate.checkpoint import load_config
    from baryir_jax.train.experiment import Experiment

    c = load_config(os.path.join(ROOT, "configs", "demo.py"))
    c.data.data_dir = embedded_data_dir
    for path, v in overrides.items():
        group, leaf = path.split(".")
        c[group][leaf] = v
    exp = Experiment(c, str(tmp_path / "w"))
    assert exp.index.num_potentials == (2 if "data.tasks" in overrides else 3)
    if "data.tasks" in overrides:  # demo.py's table names the noise tasks too: those entries do not apply
        assert exp.multipliers == {"derain": 4, "dehaze": 2}


# ----------------------------------------------------------------------------------------------- 2. divergence


@pytest.mark.slow
def test_divergence_names_the_player_and_saves_nothing_non_finite(
    tmp_path, reference, embedded_data_dir, jax_cache_dir
):
    env = _env(jax_cache_dir)
    diverge = ("--config.optim.potentials_lr=1e38",)
    # A fresh run: the potentials' update at step 1 overflows; nothing was saved before.
    fresh = str(tmp_path / "fresh")
    r = _run(_cmd(fresh, embedded_data_dir, "--config.train.num_steps=3", *diverge), env, rc=3)
    line = r.stderr.strip().splitlines()[-1]
    assert "training diverged at step 1: the potentials' parameters or RMSprop state became non-finite" in line
    assert "the restorer's stayed finite" in line and "the last finite state is step 0 (the initial state)" in line
    assert "No checkpoint was written yet" in line and "--config.optim.potentials_lr (now 1e+38)" in line
    assert "Traceback" not in r.stderr and "step None" not in r.stderr
    assert _steps(fresh) == []  # step 1 (non-finite) was not saved
    # Resuming a finite run with the same setting: the newest checkpoint is named, and stays the newest.
    wd = _copy(reference[0], tmp_path / "resumed")
    r = _run(_cmd(wd, embedded_data_dir, f"--config.train.num_steps={STEPS + 2}", *diverge), env, rc=3)
    line = r.stderr.strip().splitlines()[-1]
    assert f"training diverged at step {STEPS + 1}" in line and f"the last finite state is step {STEPS}" in line
    assert f"The newest checkpoint is step {STEPS} in" in line
    assert _steps(wd) == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------ 3. extending a run, export


def _export_step(workdir):
    return json.loads(open(os.path.join(workdir, "model", "model_config.json")).read())["extra"]["step"]


@pytest.mark.slow
def test_extending_a_run_exports_the_final_step(tmp_path, reference, embedded_data_dir, jax_cache_dir):
    from baryir_jax.models.io import load_model_checkpoint

    env = _env(jax_cache_dir)
    wd = _copy(reference[0], tmp_path / "w")
    assert _export_step(wd) == STEPS
    more = STEPS + 2
    r = _run(_cmd(wd, embedded_data_dir, f"--config.train.num_steps={more}"), env)
    assert _export_step(wd) == more
    assert f"train.num_steps: {STEPS} → {more}" in r.stderr  # an allowed change, logged
    _, saved = _read_step(wd, more)
    _, params, _, pots, _ = load_model_checkpoint(os.path.join(wd, "model"))
    _assert_same_state(params, saved["state"]["restorer"])
    _assert_same_state(pots, saved["state"]["potentials"])
    history = sorted(os.listdir(os.path.join(wd, "config_history")))
    assert history == ["000_from_step_0.json", f"001_from_step_{STEPS}.json"], history
    assert json.load(open(os.path.join(wd, "config.json")))["train"]["num_steps"] == more
    # An export a kill left incomplete (here: its model_config.json never written) is written again.
    os.remove(os.path.join(wd, "model", "model_config.json"))
    os.makedirs(os.path.join(wd, "model.partial", "params"))  # and the leftovers of an interrupted export
    _run(_cmd(wd, embedded_data_dir, f"--config.train.num_steps={more}"), env)
    assert _export_step(wd) == more and not os.path.exists(os.path.join(wd, "model.partial"))
    _, params, *_ = load_model_checkpoint(os.path.join(wd, "model"))
    _assert_same_state(params, saved["state"]["restorer"])


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, embedded_data_dir, jax_cache_dir):
    """Killed (SIGKILL) once step 1 is saved (3 steps before the end), the same command resumes: step 4 equals the
    uninterrupted run's."""
    env = _env(jax_cache_dir)
    run_dir = str(tmp_path / "killed")
    cmd = _cmd(run_dir, embedded_data_dir, f"--config.train.num_steps={STEPS}")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = os.path.join(run_dir, "checkpoints", "1")
    deadline = time.time() + 600
    while not os.path.isdir(target) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert os.path.isdir(target), "killed before its first checkpoint (stalled or too slow)"
    assert not os.path.isdir(os.path.join(run_dir, "checkpoints", str(STEPS)))

    r = _run(cmd, env)  # the same command resumes
    assert "resumed from" in r.stderr, r.stderr[-2000:]
    step_a, a = _read_step(reference[0])
    step_b, b = _read_step(run_dir)
    assert step_a == step_b == STEPS
    _assert_same_state(a["state"], b["state"])


# ---------------------------------------------------------------------------------------- 4. changed settings


@pytest.mark.slow
def test_changed_settings_that_a_resumed_run_must_keep_stop_first(tmp_path, reference, embedded_data_dir):
    wd = _copy(reference[0], tmp_path / "w")
    config_before = open(os.path.join(wd, "config.json")).read()
    demo = os.path.join(ROOT, "configs", "demo.py")
    for args, names in (
        (("--config.model.dim=16",), ["model.dim: 8 → 16"]),
        ((), ["data.tasks:", "data.multipliers:"]),  # demo.py:tiny: the 3D tasks instead of all seven
        (("--config.data.patch_size=48", "--config.seed=1"), ["data.patch_size: 32 → 48", "seed: 0 → 1"]),
    ):
        config = demo + ":tiny" if not args else CONFIG
        r = _run(_cmd(wd, embedded_data_dir, *args, config=config), _env(str(tmp_path)), rc=2)
        line = r.stderr.strip().splitlines()[-1]
        for n in names:
            assert n in line, (n, line)
        assert "new --workdir" in line and f"--config.train.init_from={os.path.join(wd, 'model')}" in line
        assert "Traceback" not in r.stderr and "partial_restore" not in r.stderr
        assert open(os.path.join(wd, "config.json")).read() == config_before  # nothing rewritten
        assert _steps(wd) == [1, 2, 3, 4]
        assert os.listdir(os.path.join(wd, "config_history")) == ["000_from_step_0.json"]


def test_the_way_forward_names_an_export_only_when_there_is_one(tmp_path):
    """The one line of a fixed-setting change points to WORKDIR/model for fine-tuning; a run stopped before any
    export has none, and the line says so and how to write one (resume with its own settings up to its newest
    checkpoint's step: nothing is trained, the step is exported)."""
    from baryir_jax.train import workdir as workdir_lib
    from baryir_jax.train.workdir import WorkdirError

    wd = tmp_path / "w"
    os.makedirs(wd / "checkpoints" / "2")
    os.makedirs(wd / "checkpoints" / "6")
    saved, current = {"model": {"dim": 8}}, {"model": {"dim": 16}}
    with pytest.raises(WorkdirError) as e:
        workdir_lib.check_resume_config(str(wd), saved, "config.json", current)
    line = str(e.value)
    assert "\n" not in line and "model.dim: 8 → 16" in line
    assert "no exported model yet" in line and "--config.train.num_steps=6" in line, line
    os.makedirs(wd / "model" / "params")
    (wd / "model" / "model_config.json").write_text(json.dumps({"extra": {"step": 6}}))
    with pytest.raises(WorkdirError) as e:
        workdir_lib.check_resume_config(str(wd), saved, "config.json", current)
    line = str(e.value)
    assert f"--config.train.init_from={os.path.join(str(wd), 'model')}" in line and "no exported model" not in line


# -------------------------------------------------------------------------------------- 5. damaged checkpoints


def _truncate_largest_file(folder):
    """Cut the largest array data file of a checkpoint's state (tensorstore OCDBT `d/` files) to half."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if os.path.basename(d) == "d"]
    biggest = max(files, key=os.path.getsize)
    size = os.path.getsize(biggest)
    with open(biggest, "r+b") as f:
        f.truncate(size // 2)


def _make_non_finite(workdir, step):
    """Rewrite checkpoint `step` with a NaN in the potentials (as a diverged run of old code could save it)."""
    import jax
    import orbax.checkpoint as ocp

    folder = os.path.join(workdir, "checkpoints", str(step))
    names = [n for n in ("state", "data_position", "config") if os.path.isdir(os.path.join(folder, n))]
    _, items = _read_step(workdir, step, items=names)
    state = jax.tree.map(np.array, items["state"])  # writable copies
    leaf = state["potentials"]["potential_0"]["fc3"]["bias"]
    leaf[...] = np.nan
    shutil.rmtree(folder)
    args = {n: ocp.args.StandardSave(state) if n == "state" else ocp.args.JsonSave(items[n]) for n in names}
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_handlers=_handlers()) as mngr:
        mngr.save(step, args=ocp.args.Composite(**args))
        mngr.wait_until_finished()


@pytest.mark.slow
def test_damaged_and_non_finite_checkpoints_are_skipped(tmp_path, reference, embedded_data_dir, jax_cache_dir):
    wd = _copy(reference[0], tmp_path / "w")
    _make_non_finite(wd, 4)
    shutil.rmtree(os.path.join(wd, "checkpoints", "3", "state"))
    _truncate_largest_file(os.path.join(wd, "checkpoints", "2", "state"))
    r = _run(_cmd(wd, embedded_data_dir, f"--config.train.num_steps={STEPS}"), _env(jax_cache_dir))
    assert "checkpoint step 4 skipped: it holds non-finite values (the potentials'" in r.stderr
    assert "checkpoint step 3 skipped: it cannot be read" in r.stderr
    assert "checkpoint step 2 skipped: it cannot be read" in r.stderr
    assert "resumed from" in r.stderr and "at step 1" in r.stderr
    assert sorted(os.listdir(os.path.join(wd, "checkpoints_set_aside"))) == ["2", "3", "4"]
    # Steps 2..4 trained again from step 1: the same state as the uninterrupted run, bit for bit.
    _, ours = _read_step(wd, STEPS)
    _, ref = _read_step(reference[0], STEPS)
    _assert_same_state(ours["state"], ref["state"])


@pytest.mark.slow
def test_no_checkpoint_that_restores_is_one_message(tmp_path, reference, embedded_data_dir, jax_cache_dir):
    wd = _copy(reference[0], tmp_path / "w", keep_steps=(3, 4))
    shutil.rmtree(os.path.join(wd, "checkpoints", "4", "state"))
    _truncate_largest_file(os.path.join(wd, "checkpoints", "3", "state"))
    r = _run(_cmd(wd, embedded_data_dir, f"--config.train.num_steps={STEPS}"), _env(jax_cache_dir), rc=2)
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("baryir-train: no checkpoint in ") and "step 4: it cannot be read" in line
    assert "step 3: it cannot be read" in line and f"delete {os.path.join(wd, 'checkpoints')}" in line
    assert "Traceback" not in r.stderr
    assert _steps(wd) == [3, 4]  # nothing moved or deleted


# ---------------------------------------------------------------------------- 6. other worker and process counts


@pytest.mark.slow
def test_resume_with_another_worker_count_is_bit_identical(tmp_path, reference, embedded_data_dir, jax_cache_dir):
    env = _env(jax_cache_dir)
    wd = _copy(reference[0], tmp_path / "w", keep_steps=(1, 2))
    _run(_cmd(wd, embedded_data_dir, "--config.train.num_steps=3", "--config.data.num_workers=2"), env)  # 0 → 2
    _run(_cmd(wd, embedded_data_dir, f"--config.train.num_steps={STEPS}", "--config.data.num_workers=0"), env)  # 2 → 0
    _, ours = _read_step(wd, STEPS)
    _, ref = _read_step(reference[0], STEPS)
    _assert_same_state(ours["state"], ref["state"])


@pytest.mark.slow
def test_two_processes_match_one_process_and_one_process_resumes_them(
    tmp_path, reference, embedded_data_dir, jax_cache_dir
):
    """One job of 2 processes (one CPU device each, gloo collectives) takes the steps one process with 2 devices
    takes; and its checkpoint, resumed by 1 process (a preempted job moved to a smaller slice), continues the data
    stream where the two processes left it. (One 2-process run serves both, so that the suite launches it once.)"""
    import jax

    from baryir_jax.config import load as load_config

    wd = str(tmp_path / "two")
    two = _env(jax_cache_dir, extra={"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"})
    outs = run_job(_cmd(wd, embedded_data_dir, "--config.train.num_steps=3"), two, timeout=900)
    for rc, _, err in outs:
        assert rc == 0, err[-3000:]
    assert _steps(wd) == [1, 2, 3] and _export_step(wd) == 3  # process 0 exported alone

    # 1. the same 3 steps as one process with 2 devices
    one = _run(_cmd(str(tmp_path / "one"), embedded_data_dir, "--config.train.num_steps=3"), _env(jax_cache_dir, 2))
    l1, l2 = step_scalars(one.stderr), step_scalars(outs[0][2])
    assert sorted(l1) == sorted(l2) == [1, 2, 3]
    for s in l1:
        for k in ("restorer_loss", "l1", "transport_cost"):
            assert abs(l1[s][k] - l2[s][k]) <= 1e-5 * abs(l1[s][k]), (s, k, l1[s][k], l2[s][k])
        # the potential objective is a near-zero sum of potentials of either sign (see test_train_step)
        k = "potential_objective"
        assert abs(l1[s][k] - l2[s][k]) <= 1e-5 * max(abs(l1[s][k]), 1.0), (s, k, l1[s][k], l2[s][k])
    (_, a), (_, b) = _read_step(str(tmp_path / "one"), 3), _read_step(wd, 3)
    params = lambda st: jax.tree.leaves([st["state"]["restorer"], st["state"]["potentials"]])  # noqa: E731
    d = np.concatenate([np.abs(np.asarray(x) - np.asarray(y)).ravel() for x, y in zip(params(a), params(b))])
    lr = load_config(CONFIG).optim.lr
    assert np.mean(d > 3 * lr) <= 1e-2 and d.max() <= 3 * 20 * lr  # see test_train_step for the bounds

    # 2. its step-2 checkpoint resumed by 1 process (as if the job had been preempted after step 2)
    resumed = _copy(wd, tmp_path / "resumed", keep_steps=[1, 2])
    r = _run(_cmd(resumed, embedded_data_dir, f"--config.train.num_steps={STEPS}"), _env(jax_cache_dir))
    assert "at step 2" in r.stderr
    ours, ref = step_scalars(r.stderr), step_scalars(reference[1])
    assert sorted(ours) == [3, 4]
    for s in (3, 4):  # the same batches as the uninterrupted run: equal up to the 2-device rounding of steps 1-2
        for k in ("restorer_loss", "l1", "transport_cost"):
            assert abs(ours[s][k] - ref[s][k]) <= 1e-3 * abs(ref[s][k]), (s, k, ours[s][k], ref[s][k])


# --------------------------------------------------------------------------------------------------- 7. SLURM


@pytest.mark.slow
def test_slurm_allocation_without_srun_trains_as_one_process(tmp_path, reference, embedded_data_dir, jax_cache_dir):
    wd = _copy(reference[0], tmp_path / "w")
    batch_script_env = {  # what a batch script of a 2-task allocation sees (no job step: not launched by srun)
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "2",
        "SLURM_NPROCS": "2",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NODELIST": "localhost",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_TASKS_PER_NODE": "2",
        "SLURM_PROCID": "0",
    }
    r = _run(
        _cmd(wd, embedded_data_dir, f"--config.train.num_steps={STEPS}"),
        _env(jax_cache_dir, extra=batch_script_env),
        timeout=300,
    )
    assert "not launched by srun" in r.stderr and "training as one process" in r.stderr
    assert "resumed from" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_srun_task_whose_peers_never_come_is_one_line(tmp_path, embedded_data_dir):
    port = free_port()
    step_env = {  # task 1 of a 2-task srun step whose task 0 never starts
        "SLURM_JOB_ID": "4243",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_STEP_TASKS_PER_NODE": "2",
        "JAX_COORDINATOR_PORT": str(port),
    }
    r = subprocess.run(
        _cmd(str(tmp_path / "w"), embedded_data_dir, "--distributed_timeout=5"),
        env=_env(str(tmp_path), extra=step_env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 4, r.stderr[-3000:]
    assert f"waiting for 2 processes at localhost:{port}" in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("baryir-train: the 2 processes of this job did not all reach the coordinator")
    assert "--distributed=no" in line and "Traceback" not in r.stderr


def test_which_processes_form_a_multi_process_job():
    """`baryir-train --distributed=auto`: the SLURM environments it meets, and what it asks JAX for."""
    from baryir_jax import main

    names = ("distributed", "coordinator_address", "num_processes", "process_id")
    saved = {n: getattr(main.FLAGS, n) for n in names}
    try:
        _check_distributed_plan(main)
    finally:
        for n, v in saved.items():
            setattr(main.FLAGS, n, v)


def _check_distributed_plan(main):
    main.FLAGS.distributed, main.FLAGS.coordinator_address = "auto", None
    main.FLAGS.num_processes, main.FLAGS.process_id = None, None
    job = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[1-2]"}
    # a batch script (or salloc shell) of a 2-task allocation, not launched by srun: one process, and a warning
    kwargs, warning = main._distributed_plan(dict(job, SLURM_PROCID="0"))
    assert kwargs is None and "not launched by srun" in warning
    step = dict(job, SLURM_STEP_ID="0", SLURM_PROCID="1", SLURM_NODEID="1", SLURM_STEP_NUM_TASKS="2")
    # srun, one task per node (launch/slurm_multinode.sbatch without its flags): every device of the node
    kwargs, warning = main._distributed_plan(dict(step, SLURM_STEP_TASKS_PER_NODE="1(x2)"))
    assert kwargs["num_processes"] == 2 and kwargs["process_id"] == 1 and warning == ""
    assert "local_device_ids" in kwargs and kwargs["local_device_ids"] is None
    # srun, one task per GPU: JAX's own choice (the GPU numbered SLURM_LOCALID)
    kwargs, _ = main._distributed_plan(dict(step, SLURM_STEP_NUM_TASKS="8", SLURM_STEP_TASKS_PER_NODE="4(x2)"))
    assert kwargs["num_processes"] == 8 and "local_device_ids" not in kwargs
    # an interactive one-task step (srun --pty bash): one process
    assert main._distributed_plan(dict(step, SLURM_STEP_NUM_TASKS="1", SLURM_NTASKS="1")) == (None, "")
    # all three flags (what the sbatch script passes): no detection, every device of the host
    main.FLAGS.coordinator_address, main.FLAGS.num_processes, main.FLAGS.process_id = "n1:12345", 2, 1
    kwargs, _ = main._distributed_plan(dict(step, SLURM_STEP_TASKS_PER_NODE="1(x2)"))
    assert kwargs == dict(
        coordinator_address="n1:12345", num_processes=2, process_id=1, cluster_detection_method="deactivate"
    )
    main.FLAGS.distributed, main.FLAGS.num_processes, main.FLAGS.process_id = "no", None, None  # in a step: one
    assert main._distributed_plan(step) == (None, "")
    # process flags that ask for a job nobody coordinates: one line (exit 2), wherever the run is
    from baryir_jax.errors import UsageError

    main.FLAGS.coordinator_address = None
    for distributed, n, pid, environment, says in (
        ("no", 2, None, {}, "--distributed=no contradicts"),
        ("no", None, 1, {}, "--distributed=no contradicts"),
        ("auto", 2, None, dict(job, SLURM_PROCID="0"), "need the job's coordinator"),  # allocation, not a step
        ("auto", None, 1, dict(job, SLURM_PROCID="0"), "need the job's coordinator"),
        ("auto", None, 5, dict(step, SLURM_STEP_TASKS_PER_NODE="1(x2)"), "not one of this job step's 2"),
    ):
        main.FLAGS.distributed, main.FLAGS.num_processes, main.FLAGS.process_id = distributed, n, pid
        with pytest.raises(UsageError, match=says):
            main._distributed_plan(environment)
