"""baryir-preflight: the training step compiled for TPU slices through libtpu on this CPU (no TPU needed).

Cost: three XLA:TPU compiles of a reduced tiny step (demo.py:tiny without encoder/decoder blocks, patch 16, one
task) at the lowest optimisation effort (--fast-compile): about 20 s of CPU each for a single-host (v5e-4) and a
multi-host (v5e-16) slice and 14 s for a batch that does not fit, plus the evaluation forward at 32x48 and one CPU
lowering. The whole file, measured on the shared 2-core VM (2026-11-29, other jobs running): 88 s of CPU, 2 min
16 s of wall time. These tests need libtpu (the tpu extra) and fail, not skip, without it.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from baryir_jax.bench import preflight as pf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# demo.py:tiny (dim 8) with the latent and barycenter blocks only, one potential, patch 16: the smallest step that
# still has every kind of layer (attention, depthwise convolutions, both players' optimizers, the congruence).
SMALL = [
    "--config.model.num_blocks=(0,0,0,1)",
    "--config.model.num_refinement_blocks=0",
    "--config.data.patch_size=16",
    "--config.data.tasks=('derain',)",
    "--config.eval.tasks=('derain',)",
]


@pytest.fixture(scope="module")
def small_config():
    if importlib.util.find_spec("libtpu") is None:
        pytest.fail(
            "libtpu is not installed: the preflight tests compile for TPU slices with XLA:TPU on this CPU; "
            'install the tpu extra: pip install -e ".[test,tpu]"'
        )
    return pf._load_config("configs/demo.py:tiny", SMALL)


@pytest.fixture(scope="module")
def reports(small_config):
    """The preflight of the small step at per-chip batch 2 on one host (v5e-4) and on four hosts (v5e-16)."""
    out = {}
    for name in ("v5e-4", "v5e-16"):
        out[name] = pf.run_preflight(
            small_config,
            "demo.py:tiny (small)",
            pf.parse_accelerator(name),
            2,
            False,
            [(32, 48)] if name == "v5e-4" else [],
            log=lambda msg: None,
            options=pf.FAST_COMPILE_OPTIONS,
            keep_hlo=name == "v5e-4",
        )
    return out


@pytest.mark.slow
def test_single_and_multi_host_slices_compile_with_the_same_flops_per_image(reports):
    (one, s1), (four, s4) = reports["v5e-4"], reports["v5e-16"]
    assert s1 == s4 == 0
    assert (one["chips"], one["hosts"], four["chips"], four["hosts"]) == (4, 1, 16, 4)
    assert one["global_batch"] == 8 and four["global_batch"] == 32
    for r in (one, four):
        assert r["fits"] and r["conv_impl"] == "native"
        assert 0 < r["memory"]["total_gib"] < r["usable_hbm_gib"] <= r["hbm_gib"] == 16
        assert r["memory"]["arguments_gib"] > 0 and r["memory"]["temporaries_gib"] > 0
        rf = r["roofline"]
        assert rf["gflop_per_image"] > 0 and rf["gb_per_image"] > 0
        # the bound is the larger of the two times, and the images/s ceiling follows from it
        assert rf["roofline_step_s"] == max(rf["step_s_compute"], rf["step_s_memory"])
        assert rf["images_per_s_per_chip"] == pytest.approx(2 / rf["roofline_step_s"])
    # data parallel: each chip runs the same program on its 2 images, whatever the number of hosts
    assert four["roofline"]["gflop_per_image"] == pytest.approx(one["roofline"]["gflop_per_image"], rel=0.01)
    # baryir-evaluate's whole-image forward, compiled for one chip at a 32x48 bucket
    (ev,) = one["eval"]
    assert ev["shape"] == [32, 48] and ev["fits"] and 0 < ev["total_gib"] < one["usable_hbm_gib"] and ev["gflop"] > 0


def test_evaluation_buckets_are_the_test_sets_sizes_after_the_official_trim():
    assert pf.eval_buckets(["derain", "dehaze", "denoise_15", "denoise_25", "denoise_50"]) == [
        (320, 480),
        (408, 544),
        (480, 320),
    ]
    assert pf.eval_buckets(["deblur", "lowlight"]) == [(400, 600), (720, 1280)]


def _depthwise_group_counts(hlo: str) -> set[int]:
    return {int(n) for n in re.findall(r"feature_group_count\s*=\s*(\d+)", hlo)} - {1, 4}


@pytest.mark.slow
def test_the_tpu_executable_uses_the_native_grouped_convolution_and_the_cpu_step_does_not(reports, small_config):
    """Compiled on this CPU host for TPU: XLA's depthwise convolutions (one group per channel) are in the TPU
    executable. The same config's step for this host's CPU mesh has none (shifted sums)."""
    from baryir_jax.train.experiment import Experiment

    dim = int(small_config.model.dim)
    tpu = _depthwise_group_counts(reports["v5e-4"][0]["hlo"])
    assert {3 * 8 * dim, 3 * 16 * dim} <= tpu  # the latent block's and level 3's qkv_dwconv (3·channels groups)
    exp = Experiment(small_config, ".", with_data=False)  # this host's CPU devices
    assert exp.barynet.conv_impl == "shifted"
    assert _depthwise_group_counts(pf.lower_train_step(exp).as_text()) == set()


@pytest.mark.slow
def test_a_batch_that_does_not_fit_is_one_line_and_exit_status_1(small_config):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "baryir_jax.bench.preflight",
            "--config",
            "configs/demo.py:tiny",
            "--accelerator",
            "v5litepod-4",
            "--per-device-batch",
            "200000",
            "--fast-compile",
            "--skip-eval",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS=""),  # the CLI itself chooses the CPU
        timeout=900,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    ours = [line for line in r.stderr.splitlines() if line.startswith("baryir-preflight:")]
    assert len(ours) == 1, r.stderr[-3000:]
    assert re.fullmatch(
        r"baryir-preflight: per-chip batch 200000 on v5litepod-4 needs [0-9,.]+ GiB of 15\.75 per chip; "
        r"run --find-max-batch for the largest that fits",
        ours[0],
    ), ours[0]
    assert "Traceback" not in r.stderr and "RESOURCE_EXHAUSTED" not in r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["fits"] is False and report["per_chip_batch"] == 200000


# ------------------------------------------------------------------------------------ without compiling


@pytest.mark.parametrize(
    "name, topology, chips, hosts",
    [
        ("v5e-16", "v5e:4x4", 16, 4),
        ("v5litepod-16", "v5e:4x4", 16, 4),
        ("v5e-8", "v5e:2x4", 8, 1),
        ("v5e-32", "v5e:4x8", 32, 8),
        ("v6e-8", "v6e:2x4", 8, 1),
        ("v4-8", "v4:2x2x1", 4, 1),
        ("v4-32", "v4:2x2x4", 16, 4),
        ("v5p-8", "v5:2x2x1", 4, 1),
        ("v5p-128", "v5:4x4x4", 64, 16),
    ],
)
def test_accelerator_names_map_to_libtpu_topologies(name, topology, chips, hosts):
    acc = pf.parse_accelerator(name)
    assert (acc.topology_name, acc.chips, acc.hosts) == (topology, chips, hosts)


def test_the_topology_libtpu_describes_has_the_chips_and_hosts_of_the_name(small_config):
    for name in ("v5e-32", "v5p-16", "v6e-8"):
        acc = pf.parse_accelerator(name)
        devices = pf.topology_devices(acc)
        assert len(devices) == acc.chips and len({d.process_index for d in devices}) == acc.hosts
        assert {d.platform for d in devices} == {"tpu"}


@pytest.mark.parametrize("name", ["v5e-12", "v3-8", "v4-6", "tpu", "v5p-7"])
def test_unknown_accelerators_are_named(name):
    with pytest.raises(pf.PreflightError, match=re.escape(name)):
        pf.parse_accelerator(name)


def test_xla_out_of_memory_messages_are_read():
    oom = pf.parse_oom(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (44.00G) "
        "exceeds available HBM (15.75G)."
    )
    assert oom.needed == 44 * 2**30 and oom.available == 15.75 * 2**30
    oom = pf.parse_oom("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Used 20.50G of 15.75G hbm.")
    assert oom.needed == 20.5 * 2**30 and oom.available == 15.75 * 2**30
    assert pf.parse_oom("INVALID_ARGUMENT: something else") is None


GIB = 2**30


@pytest.mark.parametrize(
    "memory, truth",
    [
        # a fixed part, a linear part and a small quadratic one (the batch-squared contrastive terms)
        (lambda b: (2.1 + 1.6 * b + 0.004 * b * b) * GIB, 8),
        # steeper at small batches (as measured on the tiny step): the first prediction falls short
        (lambda b: (1 + 3 * min(b, 2) + 1.0 * max(b - 2, 0)) * GIB, 10),
    ],
)
def test_the_largest_batch_is_found_in_few_compiles(memory, truth):
    usable = 15.75 * GIB
    assert truth == max(b for b in range(1, 100) if memory(b) <= usable)
    best, compiled = _search(memory, usable)
    assert best == truth and compiled[:2] == [1, 2] and len(compiled) <= 5, compiled


def _fake_compiled(total):
    return pf.Compiled(int(total), 0, 0, 0, 0, 1.0, 1.0, 0.0, 0.0)


def test_bad_arguments_are_one_line_and_exit_status_2(capsys, small_config):
    assert pf.main(["--config", "configs/demo.py:tiny", "--accelerator", "v9-8"]) == 2
    assert pf.main(["--config", "configs/nope.py", "--accelerator", "v5e-4"]) == 2
    assert pf.main(["--config", "configs/demo.py:tiny", "--accelerator", "v5e-4", "--config.model.nope=1"]) == 2
    assert pf.main(["--config", "configs/demo.py:tiny", "--accelerator", "v5e-16", "--config.data.batch_size=20"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("baryir-preflight: ") for line in err), err
    assert "unknown TPU type" in err[0] and "no such file" in err[1] and "has no field 'nope'" in err[2]
    assert "does not split over the 16 chips" in err[3]


def _search(memory, usable, probes=(1, 2)):
    """Run the search against a memory curve (bytes per chip as a function of the batch) and a capacity."""
    compiled = []

    def attempt(b):
        compiled.append(b)
        m = memory(b)
        return pf.StepFigures(b, None, m) if m > usable else pf.StepFigures(b, _fake_compiled(m))

    fits = lambda f: f.compiled is not None and f.compiled.total <= usable  # noqa: E731
    need = lambda f: f.compiled.total if f.compiled is not None else f.needed  # noqa: E731
    best, note = pf._find_max_batch(attempt, fits, need, usable, probes=probes)
    return best, compiled


@pytest.mark.parametrize("probes", [(1, 2), (4, 8), (16, 32)])
def test_the_search_starts_anywhere(probes):
    line = lambda b: 2.1 * 2**30 + 1.6 * 2**30 * b  # noqa: E731
    best, compiled = _search(line, 15.75 * 2**30, probes)
    assert best == 8 and len(compiled) <= 4, compiled
    assert _search(line, 3.0 * 2**30, probes)[0] == 0  # not even batch 1
    assert _search(line, 100 * 2**30, probes)[0] == 61
