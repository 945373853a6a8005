"""The accelerator-figures script (baryir_jax/bench/train_step.py, run by accelerator_suite.sh) on a tiny config on
the CPU: the JSON summary has every (dtype, batch) with images/s, peak memory, XLA's FLOPs and the MFU; failures
are recorded, not fatal. The official PyTorch iteration needs a checkout of the official code, so it is not
exercised here (only the ratio arithmetic, on given numbers).

Cost: 2 fresh processes compiling the tiny model (about 1 min on 2 idle cores).
"""

import json
import os
import subprocess
import sys

import pytest

from baryir_jax.bench import train_step as bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_suite_on_a_tiny_config_writes_every_field(tmp_path):
    out, jsonl = tmp_path / "summary.json", tmp_path / "results.jsonl"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "baryir_jax.bench.train_step",
            "--config",
            os.path.join(ROOT, "configs", "demo.py") + ":tiny",
            "--dtypes",
            "float32",
            "--batches",
            "1,2",
            "--patch",
            "16",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--peak-tflops",
            "1.0",
            "--out",
            str(out),
            "--jsonl",
            str(jsonl),
            "--precompile",  # compiled first (one process) into a cache the timed processes load
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(out.read_text())
    results = summary["results"]
    assert [(x["dtype"], x["batch_per_device"]) for x in results] == [("float32", 1), ("float32", 2)]
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == results
    for x in results:
        assert "error" not in x, x
        assert x["impl"] == "jax" and x["device"].startswith("cpu") and x["batch"] == x["batch_per_device"]
        assert x["images_per_s"] > 0 and x["seconds_per_step"] > 0 and x["peak_memory_mb"] > 0
        assert x["flops_per_step"] > 0 and x["peak_tflops"] == 1.0 and x["finite"]
        mfu = x["flops_per_step"] / x["seconds_per_step"] / 1e12
        assert abs(x["mfu"] - mfu) <= 0.02 * mfu + 1e-5, (x["mfu"], mfu)
    # XLA's count is of the whole step: twice the images, about twice the FLOPs
    f = {(x["dtype"], x["batch"]): x["flops_per_step"] for x in results}
    assert 1.6 < f[("float32", 2)] / f[("float32", 1)] < 2.2, f
    assert summary["ratios"] == [] and summary["patch"] == 16 and summary["precompile"] == 1
    for x in results:  # the compile time is the precompiling process's; the timed process only loaded it
        assert x["compiled_in_parallel"] == 1 and x["compile_seconds"] > x["compile_seconds_cached"] > 0, x


def test_a_failed_measurement_is_recorded_and_the_run_goes_on(tmp_path, capsys):
    summary = bench.main(
        [
            "--config",
            str(tmp_path / "missing.py"),
            "--dtypes",
            "float32",
            "--batches",
            "3,8",
            "--budget",
            "0",
            "--out",
            str(tmp_path / "s.json"),
        ]
    )
    assert [x["error"] for x in summary["results"]] == ["skipped: --budget spent"] * 2
    summary = bench.main(["--config", str(tmp_path / "missing.py"), "--dtypes", "float32", "--batches", "3"])
    (x,) = summary["results"]
    assert x["impl"] == "jax" and x["batch_per_device"] == 3 and x["error"].startswith("exit 1")
    assert len(capsys.readouterr().out.strip().splitlines()) == 3  # one JSON line per measurement


def test_ratios_pair_each_official_result_with_the_same_batch_and_dtype():
    results = [
        dict(impl="jax", dtype="float32", batch=3, images_per_s=43.2),
        dict(impl="jax", dtype="bfloat16", batch=3, images_per_s=60.0),
        dict(impl="jax", dtype="float32", batch=8, images_per_s=80.0),
        dict(impl="pytorch-official", dtype="float32", batch=3, images_per_s=8.0),
        dict(impl="pytorch-official", dtype="bfloat16-autocast", batch=3, images_per_s=12.0),
        dict(impl="pytorch-official", dtype="float32", batch=8, error="timed out after 240 s"),
    ]
    assert [(r["batch"], r["jax_dtype"], r["speedup"]) for r in bench.ratios(results)] == [
        (3, "float32", 5.4),
        (3, "bfloat16", 5.0),
    ]


def test_peak_table_knows_the_usual_chips():
    assert bench.peak_tflops("NVIDIA H200") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("TPU v5 lite") == 197.0
    assert bench.peak_tflops("TPU v5") == 459.0
    assert bench.peak_tflops("TPU v6 lite") == 918.0
    assert bench.peak_tflops("cpu") is None
