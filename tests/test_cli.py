"""One config loader, one error base class with one exit-code table, one wrapper shape for every console script,
one flag style (issue 16, items 3 and 4).

Cost: about 40 s on a 2-core CPU, nothing compiles: the console-script runs (one subprocess per command of
pyproject.toml, plus two for baryir-train and one Ctrl-C per command with --config) stop at argument or config
checks, before any model is built.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest
from PIL import Image

from baryir_jax import cli, errors
from baryir_jax import config as config_lib
from baryir_jax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "demo.py") + ":tiny"
SCRIPTS = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["scripts"]


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return env


def _script(prog: str, *args: str, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    """Run the console-script entry point `prog` names in pyproject.toml, as the installed script does."""
    module, func = SCRIPTS[prog].split(":")
    code = f"import sys; sys.argv[0] = {prog!r}; from {module} import {func}; {func}()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=_env(), timeout=600, **kw
    )


def _prog_lines(stderr: str, prog: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: ")]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(path)
    return str(path)


# ------------------------------------------------------------------------------------------- the one loader


def test_the_loader_reads_a_variant_and_overrides_with_config_flag_types():
    c = config_lib.load(TINY, ["--config.data.batch_size=16", "--noconfig.train.export_model"])
    assert c.model.dim == 8 and c.data.batch_size == 16 and c.train.export_model is False
    c = config_lib.load(TINY, ["--config.data.tasks=('derain','dehaze')", "--config.optim.lr=2e-4"])
    assert tuple(c.data.tasks) == ("derain", "dehaze") and c.optim.lr == 2e-4
    with pytest.raises(AttributeError, match="locked"):  # no new fields, as baryir-train's config flag
        c.data.nope = 1
    over, rest = config_lib.split_overrides(["--config.seed", "3", "--workdir=w", "--config.train.export_model", "-v"])
    assert over == ["--config.seed=3", "--config.train.export_model"] and rest == ["--workdir=w", "-v"]


@pytest.mark.parametrize(
    "spec, overrides, says",
    [
        (TINY.replace(":tiny", ":fast"), [], "unknown variant 'fast'; known: tiny, all"),
        ("configs/missing.py:tiny", [], "--config=configs/missing.py:tiny: no such file"),
        (TINY, ["--config.model.nope=1"], "unknown config key 'model.nope': model has no field 'nope'"),
        (TINY, ["--config.modle.dim=1"], "unknown config key 'modle.dim': the config has no field 'modle'"),
        (TINY, ["--config.data.batch_size=abc"], "--config.data.batch_size=abc"),
        (TINY, ["--config.train.export_model=maybe"], "--config.train.export_model=maybe"),
    ],
    ids=["variant", "file", "key", "section", "int", "bool"],
)
def test_the_loader_refuses_with_one_line_and_exit_code_2(spec, overrides, says):
    with pytest.raises(ConfigError) as e:
        config_lib.load(spec, overrides)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert e.value.exit_code == 2 and isinstance(e.value, errors.BaryIRError) and isinstance(e.value, ValueError)


def test_a_broken_config_file_is_one_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None):\n    return undefined_name\n")
    with pytest.raises(ConfigError, match="NameError: name 'undefined_name' is not defined"):
        config_lib.load(str(broken))
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        config_lib.load(str(tmp_path / "none.py"))


def test_a_txt_and_a_py_config_of_one_stem_never_load_each_others_code(tmp_path, monkeypatch):
    """Same stem, same size, same modification second (a checkout, an unzip, a generated sweep): each file's own
    code runs. A loader that caches bytecode by stem (__pycache__/exp.*.pyc, checked by mtime and size only)
    ran the first one's code for both."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    text = "import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict(dict(seed={}))\n"
    for name, seed in (("exp.txt", 2222), ("exp.py", 1111)):
        (tmp_path / name).write_text(text.format(seed))
        os.utime(tmp_path / name, (1_700_000_000, 1_700_000_000))
    assert config_lib.load(str(tmp_path / "exp.txt")).seed == 2222
    assert config_lib.load(str(tmp_path / "exp.py")).seed == 1111
    assert not (tmp_path / "__pycache__").exists()  # nothing written beside the user's files


@pytest.mark.parametrize(
    "returns, says",
    [
        ("42", "returned int"),
        ("{'seed': 1}", "returned dict"),
        ("[1, 2]", "returned list"),
    ],
)
def test_get_config_must_return_a_config_dict(tmp_path, returns, says):
    f = tmp_path / "c.py"
    f.write_text(f"def get_config():\n    return {returns}\n")
    with pytest.raises(ConfigError) as e:
        config_lib.load(str(f))
    assert says in str(e.value) and "ConfigDict" in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_frozen_config_dict_is_taken_as_a_config_dict(tmp_path):
    f = tmp_path / "c.py"
    f.write_text(
        "import ml_collections\ndef get_config():\n"
        "    return ml_collections.FrozenConfigDict(dict(seed=3, data=dict(batch_size=2)))\n"
    )
    c = config_lib.load(str(f), ["--config.data.batch_size=4"])
    assert c.seed == 3 and c.data.batch_size == 4
    assert config_lib.load(str(f)).seed == 3


@pytest.mark.parametrize("name", ["config.txt", "config", "config.py.bak", "config.json"])
def test_a_config_file_not_named_py_is_read_as_python(tmp_path, name):
    """The loader reads FILE as Python source whatever its name (a backup, a file without suffix), and one that
    is not Python is one line naming what went wrong, never an AttributeError from the import machinery."""
    f = tmp_path / name
    f.write_text(
        "import ml_collections\ndef get_config(arg=None):\n    return ml_collections.ConfigDict(dict(v=arg))\n"
    )
    assert config_lib.load(f"{f}:x").v == "x"
    f.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        config_lib.load(str(f))
    f.write_text('{"model": {"dim": 8}}\n')  # JSON, e.g. a saved config.json given by mistake
    with pytest.raises(ConfigError, match="defines no get_config"):
        config_lib.load(str(f))
    f.write_bytes(b"\x00\x01binary")
    with pytest.raises(ConfigError) as e:
        config_lib.load(str(f))
    assert "\n" not in str(e.value) and "AttributeError" not in str(e.value), str(e.value)


# --------------------------------------------------------------------------------------- derived settings


def test_derived_settings_come_from_the_config_layer(tmp_path):
    c = config_lib.load(TINY, lock=False)
    c.data.data_dir, c.data.collection = "", "embedded"
    assert config_lib.data_dir(c, str(tmp_path)) == os.path.join(str(tmp_path), "data")  # prepared there
    assert config_lib.data_dir(c) is None  # evaluation: --data_dir decides
    c.data.collection = "benchmark"
    with pytest.raises(ConfigError, match="config.data.data_dir is empty"):
        config_lib.data_dir(c, str(tmp_path))
    c.data.data_dir = "DATA"
    assert config_lib.data_dir(c, str(tmp_path)) == config_lib.data_dir(c) == "DATA"
    kw = config_lib.model_kwargs(c)
    assert kw == dict(
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=1,
        heads=(1, 1, 1, 1),
        ffn_expansion_factor=2.66,
        bary_blocks=None,
        residual_scale=0.8,
    )
    assert config_lib.model_kwargs(type("C", (), {"model": {"dim": 48, "heads": [1, 2, 4, 8]}})()) == dict(
        dim=48, heads=(1, 2, 4, 8)
    )
    import jax.numpy as jnp

    assert config_lib.compute_dtype("bfloat16") == jnp.bfloat16 and config_lib.compute_dtype(None) == jnp.float32
    with pytest.raises(ConfigError, match="unknown dtype 'float64'"):
        config_lib.compute_dtype("float64")
    assert config_lib.conv_impl(c) == "shifted"  # the CPU devices of this test run
    c.model.conv_impl = "fast"
    with pytest.raises(ConfigError, match="config.model.conv_impl"):
        config_lib.conv_impl(c)
    c.data.multipliers = "derain=4,deblur=2"
    assert config_lib.mixture_multipliers(c) == ({"derain": 4}, ["deblur"])


# ----------------------------------------------------------------------------------- errors and exit codes


def test_every_error_class_is_a_baryir_error_with_the_table_code():
    from baryir_jax.bench.preflight import PreflightError
    from baryir_jax.convert.official import ConversionError
    from baryir_jax.convert.torch_pickle import CheckpointFormatError, UnsafeCheckpointError
    from baryir_jax.data.images import ImageProblem
    from baryir_jax.data.report import DataError
    from baryir_jax.evaluate.checkpoint import CheckpointError
    from baryir_jax.train.checkpointing import NonFiniteLossError
    from baryir_jax.train.workdir import WorkdirError

    codes = {
        ConfigError: 2,
        WorkdirError: 2,
        PreflightError: 2,
        CheckpointError: 1,
        DataError: 1,
        ImageProblem: 1,
        ConversionError: 1,
        CheckpointFormatError: 1,
        UnsafeCheckpointError: 1,
        NonFiniteLossError: 3,
        errors.DistributedError: 4,
    }
    table = dict(errors.EXIT_CODES)
    for cls, code in codes.items():
        assert issubclass(cls, errors.BaryIRError) and cls.exit_code == code and code in table, cls
    # The classes keep the bases callers catch them by.
    import pickle

    assert issubclass(ConfigError, ValueError) and issubclass(NonFiniteLossError, RuntimeError)
    assert issubclass(UnsafeCheckpointError, pickle.UnpicklingError) and issubclass(ConversionError, ValueError)
    # Every exception class defined in the package is one of these (a new one must join the table here).
    from baryir_jax.bench.preflight import OutOfMemory

    known = {c.__name__ for c in codes} | {c.__name__ for c in (OutOfMemory, errors.RunFailed, errors.UsageError)}
    known |= {"BaryIRError", "InputError"}
    assert issubclass(OutOfMemory, errors.BaryIRError)
    pattern = re.compile(r"^class (\w+)\((.*)\):", re.M)
    for dirpath, _, files in os.walk(os.path.join(ROOT, "baryir_jax")):
        for f in files:
            if f.endswith(".py"):
                for name, bases in pattern.findall(open(os.path.join(dirpath, f), encoding="utf-8").read()):
                    if re.search(r"Error|Exception|Problem|OutOfMemory|Failed", name + bases):
                        assert name in known, (f, name, bases)


def test_readme_documents_the_exit_code_table():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("\n## Exit status\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M))
    assert sorted(map(int, rows)) == sorted(code for code, _ in errors.EXIT_CODES)


def test_the_wrapper_prints_one_line_and_returns_the_code(capsys):
    def fails(exc):
        def main(argv):
            raise exc

        return main

    assert cli.run_main("prog", fails(ConfigError("config.x=1: allowed: 2"))) == 2
    assert cli.run_main("prog", fails(errors.RunFailed("diverged"))) == 3
    assert cli.run_main("prog", fails(KeyboardInterrupt())) == 130
    assert cli.run_main("prog", lambda argv: None) == 0
    assert capsys.readouterr().err.splitlines() == [
        "prog: config.x=1: allowed: 2",
        "prog: diverged",
        "prog: interrupted",
    ]
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        cli.run_main("prog", fails(ZeroDivisionError()))


# ------------------------------------------------------------------------------------ every console script


def _bad_config_key_args(prog, tmp_path, image):
    out = str(tmp_path / f"out_{prog}")
    return {
        "baryir-train": ["--config=" + TINY, f"--workdir={out}", "--config.model.nope=1"],
        "baryir-evaluate": ["--checkpoint", out, "--benchmark", "3d", "--config", TINY, "--config.model.nope=1"],
        "baryir-restore": [
            "--checkpoint",
            out,
            "--input",
            image,
            "--output",
            out,
            "--config",
            TINY,
            "--config.model.nope=1",
        ],
        "baryir-preflight": ["--config", TINY, "--accelerator", "v5e-4", "--config.model.nope=1"],
    }.get(prog)


def test_every_console_script_goes_through_one_wrapper(tmp_path, image):
    """Each entry point of pyproject.toml: a problem is one line `<prog>: ...` on stderr and the table's exit code,
    never a traceback; a bad --config.KEY is exit 2 in every command that takes --config."""
    (tmp_path / "file").write_text("x")
    other = {
        "baryir-convert": (
            ["--checkpoint", str(tmp_path / "none.pth"), "--output", str(tmp_path / "c")],
            2,
            "no such file",
        ),
        "baryir-prepare": (
            ["--dataset", "lol_v1", "--manual_dir", str(tmp_path / "file"), "--data_dir", str(tmp_path / "d")],
            1,
            "is not a folder",
        ),
    }
    assert set(SCRIPTS) == {"baryir-train", "baryir-evaluate", "baryir-restore", "baryir-preflight", *other}
    for prog in SCRIPTS:
        args = _bad_config_key_args(prog, tmp_path, image)
        args, code, says = (
            (args, 2, "unknown config key 'model.nope': model has no field 'nope'") if args else other[prog]
        )
        r = _script(prog, *args)
        lines = _prog_lines(r.stderr, prog)
        assert r.returncode == code and len(lines) == 1 and says in lines[0], (prog, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, (prog, r.stderr[-3000:])
        assert not os.path.exists(tmp_path / f"out_{prog}")  # refused before anything was written


def test_ctrl_c_is_exit_130_in_every_command_with_a_config(tmp_path, image):
    """A config file that waits: SIGINT while it loads → `<prog>: interrupted`, exit 130, no traceback."""
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import os, time\n"
        "from baryir_jax.config import base_config\n"
        "def get_config(arg=None):\n"
        "    open(os.environ['BARYIR_TEST_MARK'], 'w').close()\n"
        "    time.sleep(60)\n"
        "    return base_config()\n"
    )
    for prog in ("baryir-train", "baryir-evaluate", "baryir-restore", "baryir-preflight"):
        mark = tmp_path / f"mark_{prog}"
        args = [a.replace(TINY, str(slow)) for a in _bad_config_key_args(prog, tmp_path, image)]
        module, func = SCRIPTS[prog].split(":")
        code = (  # Ctrl-C raises KeyboardInterrupt, as in a terminal (a background job may inherit SIGINT ignored)
            "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"sys.argv[0] = {prog!r}; from {module} import {func}; {func}()"
        )
        p = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(_env(), BARYIR_TEST_MARK=str(mark)),
        )
        deadline = time.time() + 120
        while not mark.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 130 and _prog_lines(err, prog) == [f"{prog}: interrupted"], (prog, err[-2000:])
        assert "Traceback" not in err


def test_ctrl_c_is_exit_130_in_convert_and_prepare(tmp_path, monkeypatch, capsys):
    from baryir_jax.convert import cli as convert_cli
    from baryir_jax.convert import official
    from baryir_jax.data import prepare

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    (tmp_path / "x.pth").write_bytes(b"x")
    monkeypatch.setattr(official, "torch_to_flax", interrupted)
    assert convert_cli.main(["--checkpoint", str(tmp_path / "x.pth"), "--output", str(tmp_path / "o")]) == 130
    monkeypatch.setattr(prepare, "prepare", interrupted)
    assert prepare.main(["--dataset", "embedded", "--data_dir", str(tmp_path / "d")]) == 130
    assert capsys.readouterr().err.splitlines() == ["baryir-convert: interrupted", "baryir-prepare: interrupted"]


# ------------------------------------------------------------------------------------------ one flag style


def test_hyphen_and_underscore_spellings_are_the_same_flag(tmp_path, capsys):
    from baryir_jax.bench import preflight
    from baryir_jax.convert import cli as convert_cli
    from baryir_jax.evaluate import benchmark

    p = benchmark.build_parser()
    for flag in ("--max_shapes", "--max-shapes"):
        assert p.parse_args(["--checkpoint", "c", "--benchmark", "3d", flag, "3"]).max_shapes == 3
    help_text = p.format_help()
    assert "--max_shapes MAX_SHAPES" in help_text and "--max-shapes MAX_SHAPES" not in help_text  # shown once
    # preflight's hyphenated flags (README) and their underscore spellings: parsed, then the accelerator refused
    for flag in ("--per-device-batch", "--per_device_batch"):
        assert preflight.main(["--config", TINY, "--accelerator", "v9-8", flag, "2", "--skip_eval"]) == 2
        assert "unknown TPU type" in capsys.readouterr().err
    (tmp_path / "x.pth").write_bytes(b"x")
    for flag in ("--patch-size", "--patch_size"):
        assert (
            convert_cli.main(["--checkpoint", str(tmp_path / "x.pth"), "--output", str(tmp_path / "o"), flag, "12"])
            == 2
        )
        assert "must be a multiple of 8" in capsys.readouterr().err
    assert cli.canonical_flags(["--a-b=c-d", "--config.x=a-b", "-v", "--", "--e-f"]) == [
        "--a_b=c-d",
        "--config.x=a-b",
        "-v",
        "--",
        "--e-f",
    ]


def test_train_takes_hyphenated_flags_and_reports_bad_flags_as_usage_errors(tmp_path):
    r = _script("baryir-train", "--config=" + TINY, f"--workdir={tmp_path / 'w'}", "--distributed-timeout=soon")
    lines = _prog_lines(r.stderr, "baryir-train")
    assert r.returncode == 2 and len(lines) == 1 and "--distributed_timeout=soon" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "flag",
    [
        "--distributed-timeout=-5",
        "--distributed_timeout=0",
        "--distributed_timeout=99999999999999999999",
        "--num_processes=0",
        "--process_id=-1",
        "--num_processes=2 --process_id=2",  # ids are 0 .. N-1
        "--num_processes=2 --process_id=1",  # no coordinator (flag, environment, SLURM step or TPU slice)
        "--process_id=1",
    ],
)
def test_train_refuses_out_of_range_process_flags_before_training(tmp_path, flag):
    """A timeout, process count or process index that cannot work is a usage error (exit 2, one line naming the
    flag) before anything is built, also when the job turns out to be single-process."""
    r = _script("baryir-train", "--config=" + TINY, f"--workdir={tmp_path / 'w'}", *flag.split())
    lines = _prog_lines(r.stderr, "baryir-train")
    name = flag.split()[-1].split("=")[0].lstrip("-").replace("-", "_")
    assert r.returncode == 2 and len(lines) == 1 and name in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_exit_0_in_every_command(prog, flag):
    """Help asked for is success (absl exits 1 after printing it; baryir-train turns that into 0 and takes -h)."""
    r = _script(prog, flag)
    assert r.returncode == 0, (prog, flag, r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and ("usage" in r.stdout.lower() or "flags:" in r.stdout.lower()), r.stdout[:500]
