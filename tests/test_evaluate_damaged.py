"""A damaged params/ folder: one clear error, and no "RuntimeError: Event loop is closed" tracebacks from reads
still in flight when orbax gives up (they used to appear in most runs, a dozen at a time).

Cost: about 45 s on a shared 2-core machine."""

import os
import subprocess
import sys
import time

import pytest

from baryir_jax.evaluate.checkpoint import CheckpointError, load_restorer, numpy_init
from baryir_jax.models import BaryNet

TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))


def _data_files(ckpt):
    d = os.path.join(ckpt, "params", "ocdbt.process_0", "d")
    return sorted((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize)


def _damaged(tmp_path, how):
    from baryir_jax.models.io import save_model_checkpoint

    ckpt = str(tmp_path / how)
    save_model_checkpoint(ckpt, numpy_init(BaryNet(**TINY), 0), TINY)
    files = _data_files(ckpt)
    if how == "data_removed":
        for f in files:
            os.remove(f)
    else:  # the largest data file cut short, as an interrupted copy leaves it
        with open(files[-1], "r+b") as f:
            f.truncate(1000)
    return ckpt


@pytest.mark.parametrize("how", ["data_removed", "truncated"])
def test_damaged_params_give_one_error_and_no_event_loop_tracebacks(tmp_path, capsys, monkeypatch, how):
    ckpt = _damaged(tmp_path, how)
    unraisable = []  # tensorstore reports errors of its callbacks through sys.unraisablehook
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}"))
    for _ in range(10):  # the tracebacks were intermittent: try repeatedly
        with pytest.raises(CheckpointError) as e:
            load_restorer(ckpt)
        assert "cannot read the model checkpoint" in str(e.value) and "\n" not in str(e.value)
    time.sleep(1.0)  # late callbacks from tensorstore's threads would print by now
    err = capsys.readouterr().err
    assert "Event loop is closed" not in err and "Traceback" not in err, err[:2000]
    assert unraisable == [], unraisable[:3]


def test_evaluate_cli_prints_one_line(tmp_path):
    ckpt = _damaged(tmp_path, "data_removed")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-m", "baryir_jax.evaluate.benchmark", "--checkpoint", ckpt, "--data_dir", str(tmp_path)]
        + ["--benchmark", "3d", "--output", str(tmp_path / "eval")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "cannot read the model checkpoint" in lines[0], r.stderr[-3000:]
