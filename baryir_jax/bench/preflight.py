"""``baryir-preflight``: compile the training step for a named TPU slice on this machine's CPU, before paying for it.

    baryir-preflight --config configs/three_task.py --accelerator v5e-16 --config.dtype=bfloat16 --per-device-batch 8
    baryir-preflight --config configs/three_task.py --accelerator v5e-16 --config.dtype=bfloat16 --find-max-batch
    python -m baryir_jax.bench.preflight ...                               # the same

With ``libtpu`` installed (the ``tpu`` extra: ``pip install -e ".[tpu]"``), JAX describes any TPU slice without
having one (``jax.experimental.topologies.get_topology_desc``) and XLA:TPU compiles for it on the CPU. The
preflight builds the :class:`~baryir_jax.train.loop.Experiment` that ``baryir-train`` builds, over a mesh of the
slice's devices (``loop.make_mesh``), takes the jitted step with its shardings from ``step.jit_train_step`` (the
loop's own function), and compiles it for abstract inputs: the state from ``jax.eval_shape`` of the loop's
initialisation, the batch from ``data.pipeline.train_batch_spec``. Then, unless ``--skip-eval``, it compiles the
whole-image evaluation forward of ``baryir-evaluate`` for one chip at the shape buckets of the benchmark test sets.

It prints a table and one JSON line: chips, hosts, per-chip memory (arguments, temporaries, outputs, code) against
the chip's HBM, whether it fits, FLOPs and HBM traffic per step and per image (XLA:TPU's cost analysis of the
compiled step, per chip), a roofline lower bound on the step time from the chip's published peak bf16 FLOP/s and
HBM bandwidth (:data:`CHIPS`, with their sources), and the images/s ceiling it implies. ``--find-max-batch``
compiles two per-chip batches, draws memory = a + s·batch through them, compiles the batch where that line meets
the chip's usable HBM, and redraws the line through the two compiled batches nearest it until its answer is a
batch already compiled that fits (:func:`_find_max_batch`).

Exit status: 0 the step (and the evaluation forward) fits; 1 it does not fit (one line: "needs X GiB of Y per
chip; largest that fits: N"); 2 bad arguments or config, or libtpu missing; 3 XLA refused to compile for
another reason (its first line is printed).

The roofline is a bound, not a forecast: it assumes every FLOP runs at the MXU's peak and every byte XLA counts
moves at the full HBM bandwidth, and ignores collectives (the gradient all-reduce) and the host input pipeline.
On TPU, float32 matrix products and convolutions run at the default precision, one bf16 pass, so the bf16 peak
applies to ``--config.dtype=float32`` too (its memory traffic is what grows).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import resource
import sys
import time
from typing import Any

from baryir_jax import cli
from baryir_jax.errors import InputError, RunFailed, UsageError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures of one TPU generation (Google Cloud TPU documentation, ``source``)."""

    generation: str  # 'v4', 'v5e', 'v5p', 'v6e'
    topology_prefix: str  # how libtpu names its topologies: 'v4', 'v5e', 'v5', 'v6e'
    peak_bf16_flops: float  # FLOP/s per chip
    hbm_bytes: int  # HBM capacity per chip
    hbm_bandwidth: float  # bytes/s per chip
    source: str
    cores_in_name: bool  # the accelerator-type number counts TensorCores (2 per chip, megacore), not chips
    max_single_host_chips: int  # slices up to this many chips are one host; larger ones have 4 chips per host


# Per-chip figures, each from its Google Cloud TPU documentation page ("System architecture" tables):
CHIPS = {
    # https://cloud.google.com/tpu/docs/v4: "Peak compute per chip 275 teraflops (bf16 or int8)", "HBM2 capacity
    # and bandwidth 32 GiB, 1200 GBps"; one chip = 2 TensorCores (megacore), 4 chips per host.
    "v4": Chip("v4", "v4", 275e12, 32 * GiB, 1200e9, "https://cloud.google.com/tpu/docs/v4", True, 4),
    # https://cloud.google.com/tpu/docs/v5e: "Peak compute per chip (bf16) 197 TFLOPs", "HBM2 capacity and
    # bandwidth 16 GB, 819 GBps"; slices of 1, 4 and 8 chips are one host, larger ones 4 chips per host.
    "v5e": Chip("v5e", "v5e", 197e12, 16 * GiB, 819e9, "https://cloud.google.com/tpu/docs/v5e", False, 8),
    # https://cloud.google.com/tpu/docs/v5p: "Peak compute per chip (bf16) 459 TFLOPs", "HBM2e capacity and
    # bandwidth 95GB, 2765 GBps"; one chip = 2 TensorCores (megacore), 4 chips per host.
    "v5p": Chip("v5p", "v5", 459e12, 95 * GiB, 2765e9, "https://cloud.google.com/tpu/docs/v5p", True, 4),
    # https://cloud.google.com/tpu/docs/v6e: "Peak compute per chip (bf16) 918 TFLOPs", "HBM capacity per chip
    # 32 GB", "HBM bandwidth per chip 1638 GBps"; slices of 1, 4 and 8 chips are one host, larger ones 4 per host.
    "v6e": Chip("v6e", "v6e", 918e12, 32 * GiB, 1638e9, "https://cloud.google.com/tpu/docs/v6e", False, 8),
}

# Accelerator names as MaxText's accelerator_to_spec_map (github.com/AI-Hypercomputer/maxtext) and gcloud use them:
# '<generation>-<count>' → chip grid. The count is chips for v5e/v6e, TensorCores (2 per chip) for v4/v5p.
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_WRAP_2D = {128: (False, True, False), 256: (True, True, False)}
_GRIDS_3D = {
    4: (2, 2, 1),
    8: (2, 2, 2),
    16: (2, 2, 4),
    32: (2, 4, 4),
    64: (4, 4, 4),
    128: (4, 4, 8),
    256: (4, 8, 8),
    512: (8, 8, 8),
    1024: (8, 8, 16),
    2048: (8, 16, 16),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}


class PreflightError(UsageError):
    """A bad argument or config: one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str  # as given
    chip: Chip
    chips: int
    grid: tuple[int, ...]
    wrap: tuple[bool, bool, bool]

    @property
    def topology_name(self) -> str:
        return f"{self.chip.topology_prefix}:" + "x".join(str(g) for g in self.grid)

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        if self.chips <= self.chip.max_single_host_chips:
            return tuple(self.grid) + (1,) * (3 - len(self.grid))
        return (2, 2, 1)

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.chips_per_host_bounds)

    @property
    def chip_config_name(self) -> str:
        return "megacore" if self.chip.cores_in_name else "default"


def known_accelerators() -> list[str]:
    names = [f"{g}-{n}" for g in ("v5e", "v6e") for n in _GRIDS_2D]
    names += [f"{g}-{2 * n}" for g in ("v4", "v5p") for n in _GRIDS_3D]
    return names


def parse_accelerator(name: str) -> Accelerator:
    """'v5e-16' / 'v5litepod-16' / 'v6e-8' / 'v4-8' / 'v5p-8' → :class:`Accelerator` (MaxText's table)."""
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    gen = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if gen not in CHIPS:
        raise PreflightError(
            f"--accelerator {name!r}: unknown TPU type; use a Cloud TPU accelerator type such as v5e-16 "
            f"(= v5litepod-16), v6e-8, v4-8, v5p-8 (known: {', '.join(known_accelerators())})"
        )
    chip, count = CHIPS[gen], int(m.group(2))
    if chip.cores_in_name:
        if count % 2 or count // 2 not in _GRIDS_3D:
            raise PreflightError(
                f"--accelerator {name!r}: {gen} sizes count TensorCores (2 per chip); known: "
                f"{', '.join(f'{gen}-{2 * n}' for n in _GRIDS_3D)}"
            )
        chips = count // 2
        grid = _GRIDS_3D[chips]
        wrap = (True, True, True) if chips >= 64 else (False, False, False)
    else:
        if count not in _GRIDS_2D:
            raise PreflightError(
                f"--accelerator {name!r}: no {gen} slice of {count} chips; known: "
                f"{', '.join(f'{gen}-{n}' for n in _GRIDS_2D)}"
            )
        chips, grid = count, _GRIDS_2D[count]
        wrap = _WRAP_2D.get(count, (False, False, False))
    return Accelerator(name, chip, chips, grid, wrap)


# ------------------------------------------------------------------------------------------------- compiling


def _need_libtpu():
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise PreflightError(
            "libtpu is not installed: the preflight compiles with XLA:TPU, which ships in libtpu; install the tpu "
            'extra (pip install -e ".[tpu]") — it runs on any Linux x86-64 host, no TPU needed'
        ) from None


def _cloud_type(acc: Accelerator) -> str:
    n = acc.chips * (2 if acc.chip.cores_in_name else 1)
    return f"{'v5litepod' if acc.chip.generation == 'v5e' else acc.chip.generation}-{n}"


def topology_devices(acc: Accelerator):
    """The devices of ``acc`` as libtpu describes them (``jax.Device`` objects of platform 'tpu' with their
    process indices: one process per host)."""
    _need_libtpu()
    # libtpu looks for the TPU VM it runs on when it loads: name the slice and say there is no other worker, so
    # that it does not print warnings about the metadata server (the compiled program is the same either way),
    # and skip its one-process-per-TPU lockfile (compiling needs no TPU; a training run may hold the lock).
    for key, value in (
        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
        ("TPU_SKIP_MDS_QUERY", "1"),
        ("TPU_WORKER_HOSTNAMES", "localhost"),
        ("TPU_ACCELERATOR_TYPE", _cloud_type(acc)),
    ):
        os.environ.setdefault(key, value)
    from jax.experimental import topologies

    return topologies.get_topology_desc(
        platform="tpu",
        topology_name=acc.topology_name,
        chip_config_name=acc.chip_config_name,
        chips_per_host_bounds=acc.chips_per_host_bounds,
        num_slices=1,
        wrap=acc.wrap,
    ).devices


_SIZE = r"([0-9.]+)\s*([KMGT]?)i?B?"
_OOM_PATTERNS = (
    # "Ran out of memory on HBM, the total memory required for HLO temporaries (44.00G) exceeds available HBM (15.75G)"
    re.compile(r"required[^()]*\(" + _SIZE + r"\)[^()]*available[^()]*\(" + _SIZE + r"\)"),
    # "Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G."
    re.compile(r"Used\s+" + _SIZE + r"\s+of\s+" + _SIZE + r"\s+hbm", re.IGNORECASE),
)
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class OutOfMemory(InputError):
    """XLA:TPU refused the program: it needs ``needed`` bytes per chip of ``available`` (None when the message
    did not say)."""

    def __init__(self, needed: float | None, available: float | None, message: str):
        super().__init__(message)
        self.needed, self.available = needed, available


def parse_oom(message: str) -> OutOfMemory | None:
    """An XLA:TPU RESOURCE_EXHAUSTED compile error → :class:`OutOfMemory`; None for any other error."""
    if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
        return None
    for pattern in _OOM_PATTERNS:
        m = pattern.search(message)
        if m:
            needed = float(m.group(1)) * _UNIT[m.group(2).upper()]
            available = float(m.group(3)) * _UNIT[m.group(4).upper()]
            return OutOfMemory(needed, available, message)
    return OutOfMemory(None, None, message)


@dataclasses.dataclass
class Compiled:
    """Per-chip figures of one compiled program (XLA:TPU's memory and cost analyses)."""

    argument: int
    output: int
    alias: int
    temp: int
    code: int
    flops: float
    bytes_accessed: float
    compile_s: float
    compile_cpu_s: float
    hlo_text: str = dataclasses.field(default="", repr=False)

    @property
    def total(self) -> int:
        """Peak HBM per chip: arguments + outputs − donated (aliased) outputs + temporaries + code."""
        return self.argument + self.output - self.alias + self.temp + self.code


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# XLA options of --fast-compile: the least effort spent on execution time. Measured on the tiny demo step for
# v5e-4 (docs/preflight.md): a third of the compile time, but twice the temporaries, so memory figures and the
# largest batch are pessimistic with it; the default compile is what a TPU run would compile.
FAST_COMPILE_OPTIONS = {"exec_time_optimization_effort": -1.0}


def compile_lowered(lowered, keep_hlo: bool = False, options: dict | None = None) -> Compiled:
    """Compile a ``jax.stages.Lowered`` (with XLA ``options``); raise :class:`OutOfMemory` when it does not fit,
    ``RuntimeError`` (with XLA's first line) for any other compiler error."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    try:
        compiled = lowered.compile(dict(options)) if options else lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA errors: classify them, never show the C++ traceback
        oom = parse_oom(str(e))
        if oom is not None:
            raise oom from None
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise RuntimeError(first) from None
    dt, dc = time.perf_counter() - t0, _cpu_seconds() - c0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
    return Compiled(
        argument=int(mem.argument_size_in_bytes),
        output=int(mem.output_size_in_bytes),
        alias=int(mem.alias_size_in_bytes),
        temp=int(mem.temp_size_in_bytes),
        code=int(mem.generated_code_size_in_bytes),
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        compile_s=dt,
        compile_cpu_s=dc,
        hlo_text=compiled.as_text() if keep_hlo else "",
    )


def experiment_for(config, devices, per_chip_batch: int):
    """The training :class:`~baryir_jax.train.loop.Experiment` of ``config`` on a mesh of ``devices``, with a
    global batch of ``per_chip_batch`` per device (a copy of the config; the data are not read)."""
    from baryir_jax.train.loop import Experiment, make_mesh

    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.batch_size = int(per_chip_batch) * len(devices)
        config.train.init_from = ""  # a checkpoint to start from has the configured shapes (checked at run time)
    return Experiment(config, workdir=".", with_data=False, mesh=make_mesh(devices))


def lower_train_step(exp):
    """The step ``baryir-train`` runs for ``exp`` — ``step.jit_train_step(exp.train_step, mesh, state)`` — lowered
    for the abstract state (``jax.eval_shape`` of ``exp.init_state``) and batch (``pipeline.train_batch_spec``)."""
    import jax

    from baryir_jax.data.pipeline import train_batch_spec
    from baryir_jax.train import step as step_lib

    state = jax.eval_shape(exp.init_state)
    jstep, _ = step_lib.jit_train_step(exp.train_step, exp.mesh, state)
    c = exp.config
    spec = train_batch_spec(int(c.data.batch_size), int(c.data.patch_size))
    batch = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}
    with jax.set_mesh(exp.mesh):
        return jstep.lower(state, batch)


def compile_train_step(
    config, devices, per_chip_batch: int, keep_hlo: bool = False, options: dict | None = None
) -> Compiled:
    return compile_lowered(lower_train_step(experiment_for(config, devices, per_chip_batch)), keep_hlo, options)


def cpu_cost(config, per_chip_batch: int, tpu_conv_impl: str) -> dict[str, float]:
    """FLOPs per step of the same step on one CPU device at the same per-device batch, counted by XLA's cost
    analysis two ways, for an independent check of the TPU count:

    * ``unoptimized``: the step with the TPU's depthwise convolutions (``tpu_conv_impl``) lowered for the CPU,
      counted before any optimisation (the same arithmetic as the TPU program, as written);
    * ``compiled``: XLA:CPU's count of its optimised executable of the step ``baryir-train`` would run on this
      CPU (``conv_impl`` resolved for the CPU: shifted sums). XLA:CPU rewrites native grouped convolutions into
      far more arithmetic (about 3× the step's FLOPs on the tiny demo step), so that variant is not compiled."""
    import jax

    cpu = jax.devices("cpu")[:1]
    tpu_like = config.copy_and_resolve_references()
    with tpu_like.unlocked():
        tpu_like.model.conv_impl = tpu_conv_impl
    unoptimized = lower_train_step(experiment_for(tpu_like, cpu, per_chip_batch)).cost_analysis() or {}
    host = config.copy_and_resolve_references()
    with host.unlocked():
        host.model.conv_impl = "auto"
    compiled = compile_lowered(lower_train_step(experiment_for(host, cpu, per_chip_batch)))
    return {"unoptimized": float(unoptimized.get("flops", 0.0)), "compiled": compiled.flops}


# Image sizes (H, W) of the benchmark test sets (baryir-evaluate; project notes on the data sets): CBSD68 and
# Rain100L 481×321 / 321×481, SOTS-outdoor 550×413, GoPro 1280×720, LOL-v1 600×400.
TEST_SET_SIZES = {
    "derain": ((321, 481), (481, 321)),
    "dehaze": ((413, 550),),
    "denoise": ((321, 481), (481, 321)),
    "deblur": ((720, 1280),),
    "lowlight": ((400, 600),),
}


def eval_buckets(tasks, max_shapes: int = 8) -> list[tuple[int, int]]:
    """The shapes ``baryir-evaluate`` compiles for ``tasks`` (default ``--mode trim``, ``--max_shapes 8``):
    the test sets' sizes trimmed to multiples of 8, bucketed by ``evaluate.shapes.plan_buckets``."""
    from baryir_jax.evaluate import shapes

    sizes = []
    for t in tasks:
        key = "denoise" if str(t).startswith("denoise") else str(t)
        for h, w in TEST_SET_SIZES.get(key, ()):
            sizes.append((h - h % shapes.MULTIPLE, w - w % shapes.MULTIPLE))
    return sorted(set(shapes.plan_buckets(sizes, max_shapes).values()))


def compile_eval_forward(exp, device, shape: tuple[int, int], options: dict | None = None) -> Compiled:
    """``baryir-evaluate``'s jitted restore-quantise-score call (``evaluate.checkpoint._evaluate``) of the
    experiment's BaryNet for one (1, H, W, 3) image on one ``device``."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding

    from baryir_jax.evaluate.checkpoint import _evaluate

    one = SingleDeviceSharding(device)
    params = jax.eval_shape(lambda: exp.barynet.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))["params"]
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one), params)
    h, w = shape
    x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32, sharding=one)
    target = jax.ShapeDtypeStruct((1, h, w, 3), jnp.uint8, sharding=one)
    hw = jax.ShapeDtypeStruct((1, 2), jnp.int32, sharding=one)
    return compile_lowered(_evaluate(exp.barynet, False).lower(params, x, target, hw), options=options)


def usable_hbm(devices, nominal: int) -> int:
    """HBM per chip that XLA:TPU lets a program use, read from its own out-of-memory message for a program that
    cannot fit (one chip, about a second); ``nominal`` if the message does not say."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding

    big = nominal // 4 + 1  # float32 elements: 4 × this > capacity
    x = jax.ShapeDtypeStruct((2, big // 2), jnp.float32, sharding=SingleDeviceSharding(devices[0]))
    try:
        jax.jit(lambda a: jnp.sin(a) * a[::-1]).lower(x).compile()
    except Exception as e:  # noqa: BLE001
        oom = parse_oom(str(e))
        if oom is not None and oom.available:
            return int(oom.available)
    return int(nominal)


# --------------------------------------------------------------------------------------------------- report


@dataclasses.dataclass
class StepFigures:
    per_chip_batch: int
    compiled: Compiled | None  # None: did not fit
    needed: float | None = None  # bytes per chip when it did not fit (from XLA's message)


def roofline(c: Compiled, chip: Chip, per_chip_batch: int) -> dict[str, Any]:
    t_flops = c.flops / chip.peak_bf16_flops
    t_bytes = c.bytes_accessed / chip.hbm_bandwidth
    t = max(t_flops, t_bytes)
    return dict(
        flops_per_step_per_chip=c.flops,
        bytes_per_step_per_chip=c.bytes_accessed,
        gflop_per_image=c.flops / per_chip_batch / 1e9,
        gb_per_image=c.bytes_accessed / per_chip_batch / 1e9,
        flop_per_byte=c.flops / c.bytes_accessed if c.bytes_accessed else None,
        chip_flop_per_byte=chip.peak_bf16_flops / chip.hbm_bandwidth,
        step_s_compute=t_flops,
        step_s_memory=t_bytes,
        roofline_step_s=t,
        bound="compute" if t_flops >= t_bytes else "HBM bandwidth",
        images_per_s_per_chip=per_chip_batch / t if t > 0 else None,
        peak_fraction=t_flops / t if t > 0 else None,
    )


def memory_dict(c: Compiled) -> dict[str, float]:
    return {
        "arguments_gib": c.argument / GiB,
        "outputs_gib": c.output / GiB,
        "aliased_gib": c.alias / GiB,
        "temporaries_gib": c.temp / GiB,
        "code_gib": c.code / GiB,
        "total_gib": c.total / GiB,
    }


def _num(x) -> str:
    """Three significant digits, thousands separated: 3,020 / 28.7 / 0.0287."""
    if x is None:
        return "–"
    if x == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{digits}f}"


def _fmt(x, nd=2):
    return "–" if x is None else f"{x:,.{nd}f}"


def print_table(report: dict[str, Any], out) -> None:
    r = report
    rows = [
        ("accelerator", f"{r['accelerator']} ({r['topology']}, {r['chips']} chips, {r['hosts']} host(s))"),
        ("config", f"{r['config']}  dtype {r['dtype']}, patch {r['patch_size']}, conv {r['conv_impl']}"),
        ("per-chip batch", f"{r['per_chip_batch']} (global {r['global_batch']})"),
    ]
    m = r.get("memory")
    if m:
        rows.append(
            (
                "memory per chip",
                f"{_fmt(m['total_gib'])} GiB of {_fmt(r['usable_hbm_gib'])} usable ({_fmt(r['hbm_gib'], 0)} GiB HBM): "
                f"arguments {_fmt(m['arguments_gib'])}, temporaries {_fmt(m['temporaries_gib'])}, outputs "
                f"{_fmt(m['outputs_gib'])} (donated {_fmt(m['aliased_gib'])}), code {_fmt(m['code_gib'])}",
            )
        )
    rows.append(("fits", "yes" if r["fits"] else f"NO: {r.get('message', '')}"))
    rf = r.get("roofline")
    if rf:
        rows += [
            (
                "FLOPs per step",
                f"{_num(rf['flops_per_step_per_chip'] / 1e9)} GFLOP per chip, "
                f"{_num(rf['flops_per_step_per_chip'] * r['chips'] / 1e9)} GFLOP on the slice; "
                f"{_num(rf['gflop_per_image'])} GFLOP per image",
            ),
            (
                "HBM traffic",
                f"{_num(rf['bytes_per_step_per_chip'] / 1e9)} GB per step per chip; {_num(rf['gb_per_image'])} GB "
                f"per image; {_num(rf['flop_per_byte'])} FLOP/B (the chip's balance: {rf['chip_flop_per_byte']:,.0f})",
            ),
            (
                "roofline",
                f"≥ {_num(rf['roofline_step_s'])} s per step ({rf['bound']}-bound; compute alone "
                f"{_num(rf['step_s_compute'])} s): ≤ {_num(rf['images_per_s_per_chip'])} images/s per chip, "
                f"≤ {_num(rf['images_per_s_per_chip'] * r['chips'])} on the slice",
            ),
        ]
    if r.get("cpu_gflop_per_image") is not None:
        g, q = r["cpu_gflop_per_image"], r["cpu_vs_tpu_flops"]
        rows.append(
            (
                "XLA:CPU count",
                f"{_num(g['unoptimized'])} GFLOP per image before optimisation ({q['unoptimized']:.3f}× XLA:TPU's), "
                f"{_num(g['compiled'])} compiled for this CPU ({q['compiled']:.3f}×)",
            )
        )
    if r.get("compiler_options"):
        rows.append(("compiler options", f"{r['compiler_options']} (memory figures pessimistic)"))
    if r.get("max_per_chip_batch") is not None:
        rows.append(("largest per-chip batch", f"{r['max_per_chip_batch']} ({r['memory_model']})"))
    for e in r.get("eval", []):
        rows.append(
            (
                f"eval {e['shape'][0]}x{e['shape'][1]}",
                f"{_fmt(e.get('total_gib'))} GiB per chip, {_num(e.get('gflop'))} GFLOP, {_num(e.get('gb'))} GB"
                + ("" if e["fits"] else f" — does NOT fit: {e.get('message', '')}"),
            )
        )
    rows.append(("compile time", f"{r['compile_s_total']:.0f} s wall, {r['compile_cpu_s_total']:.0f} s CPU here"))
    width = max(len(k) for k, _ in rows)
    print(f"baryir-preflight: {r['accelerator']}", file=out)
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}", file=out)


# ------------------------------------------------------------------------------------------------ the tool


def _gib(x):
    return "?" if x is None else f"{x / GiB:.2f}"


def run_preflight(
    config,
    config_name: str,
    acc: Accelerator,
    per_chip_batch: int | None,
    find_max: bool,
    eval_shapes: list[tuple[int, int]] | None,
    log=print,
    options: dict | None = None,
    with_cpu_cost: bool = False,
    keep_hlo: bool = False,
) -> tuple[dict[str, Any], int]:
    """Compile for ``acc`` and return (report dict, exit status); ``report['hlo']`` holds the compiled HLO text
    of the step shown when ``keep_hlo``."""
    import jax

    from baryir_jax import config as config_lib

    devices = topology_devices(acc)
    if len(devices) != acc.chips:
        raise PreflightError(f"libtpu describes {len(devices)} devices for {acc.topology_name}, expected {acc.chips}")
    hosts = len({d.process_index for d in devices})
    usable = usable_hbm(devices, acc.chip.hbm_bytes)
    conv = config_lib.conv_impl(config, devices)
    t_all, c_all = time.perf_counter(), _cpu_seconds()
    if per_chip_batch is None and not find_max:
        gb = int(config.data.batch_size)
        if gb % acc.chips:
            raise PreflightError(
                f"config.data.batch_size={gb} does not split over the {acc.chips} chips of {acc.name}: give "
                f"--per-device-batch N, or a batch_size that is a multiple of {acc.chips}"
            )
        per_chip_batch = gb // acc.chips
    if per_chip_batch is not None and per_chip_batch < 1:
        raise PreflightError(f"--per-device-batch must be >= 1, got {per_chip_batch}")

    tried: dict[int, StepFigures] = {}

    def attempt(b: int) -> StepFigures:
        if b not in tried:
            log(f"[preflight] compiling the train step for {acc.name}, per-chip batch {b} ...")
            try:
                c = compile_train_step(config, devices, b, keep_hlo=keep_hlo, options=options)
                tried[b] = StepFigures(b, c)
                log(f"[preflight]   {c.total / GiB:.2f} GiB per chip; {c.compile_s:.0f} s, {c.compile_cpu_s:.0f} s CPU")
            except OutOfMemory as e:
                tried[b] = StepFigures(b, None, e.needed)
                log(f"[preflight]   does not fit: needs {_gib(e.needed)} GiB of {_gib(e.available or usable)}")
        return tried[b]

    def fits(f: StepFigures) -> bool:
        return f.compiled is not None and f.compiled.total <= usable

    def need(f: StepFigures) -> float | None:
        return f.compiled.total if f.compiled is not None else f.needed

    model_note = None
    largest = None
    if find_max:
        start = per_chip_batch or 2  # probes: half of it and it (1 and 2 by default)
        largest, model_note = _find_max_batch(attempt, fits, need, usable, probes=(max(1, start // 2), start))
        per_chip_batch = largest or 1
    shown = attempt(per_chip_batch)
    report: dict[str, Any] = dict(
        accelerator=acc.name,
        topology=acc.topology_name,
        chips=acc.chips,
        hosts=hosts,
        config=config_name,
        dtype=str(config.dtype),
        patch_size=int(config.data.patch_size),
        conv_impl=conv,
        per_chip_batch=per_chip_batch,
        global_batch=per_chip_batch * acc.chips,
        hbm_gib=acc.chip.hbm_bytes / GiB,
        usable_hbm_gib=usable / GiB,
        peak_bf16_tflops=acc.chip.peak_bf16_flops / 1e12,
        hbm_gb_per_s=acc.chip.hbm_bandwidth / 1e9,
        chip_source=acc.chip.source,
        fits=fits(shown),
    )
    if options:
        report["compiler_options"] = dict(options)
    status = 0
    if shown.compiled is not None:
        report["memory"] = memory_dict(shown.compiled)
        report["roofline"] = roofline(shown.compiled, acc.chip, per_chip_batch)
        report["compile_s"] = shown.compiled.compile_s
        report["compile_cpu_s"] = shown.compiled.compile_cpu_s
        if keep_hlo:
            report["hlo"] = shown.compiled.hlo_text
        if with_cpu_cost:
            log(f"[preflight] compiling the same step for this CPU (per-device batch {per_chip_batch}) ...")
            cc = cpu_cost(config, per_chip_batch, conv)
            tpu = shown.compiled.flops
            report["cpu_gflop_per_image"] = {k: v / per_chip_batch / 1e9 for k, v in cc.items()}
            report["cpu_vs_tpu_flops"] = {k: (v / tpu if tpu else None) for k, v in cc.items()}
    if find_max:
        report["max_per_chip_batch"] = largest
        report["memory_model"] = model_note or "measured"
        report["tried"] = {str(k): (None if need(v) is None else need(v) / GiB) for k, v in sorted(tried.items())}
    if not fits(shown):
        fitting = [f.per_chip_batch for f in tried.values() if fits(f)]
        hint = f"largest that fits: {max(fitting)}" if fitting else "run --find-max-batch for the largest that fits"
        if largest == 0 or (find_max and not fitting):
            hint = "not even a per-chip batch of 1 fits (try --config.train.grad_accum_steps or a smaller patch)"
        report["message"] = (
            f"per-chip batch {per_chip_batch} on {acc.name} needs {_gib(need(shown))} GiB of {usable / GiB:.2f} "
            f"per chip; {hint}"
        )
        status = 1
    if eval_shapes and status == 0:
        exp = experiment_for(config, devices, per_chip_batch)
        evals = []
        for shape in eval_shapes:
            log(f"[preflight] compiling the evaluation forward at {shape[0]}x{shape[1]} for one chip ...")
            entry: dict[str, Any] = dict(shape=list(shape))
            try:
                c = compile_eval_forward(exp, devices[0], shape, options)
                entry.update(
                    fits=c.total <= usable,
                    total_gib=c.total / GiB,
                    temporaries_gib=c.temp / GiB,
                    gflop=c.flops / 1e9,
                    gb=c.bytes_accessed / 1e9,
                    compile_s=c.compile_s,
                )
            except OutOfMemory as e:
                entry.update(fits=False, total_gib=None if e.needed is None else e.needed / GiB)
            if not entry["fits"]:
                needed = None if entry["total_gib"] is None else entry["total_gib"] * GiB
                entry["message"] = (
                    f"the evaluation forward at {shape[0]}x{shape[1]} needs {_gib(needed)} GiB of {usable / GiB:.2f} "
                    "per chip; evaluate on a chip with more HBM, or restore in tiles (baryir-restore --tile)"
                )
                status = 1
            evals.append(entry)
        report["eval"] = evals
        bad = [e for e in evals if not e["fits"]]
        if bad:
            report["fits"] = False
            report["message"] = bad[0]["message"]
    report["compile_s_total"] = time.perf_counter() - t_all
    report["compile_cpu_s_total"] = _cpu_seconds() - c_all
    report["jax"] = jax.__version__
    return report, status


def _find_max_batch(attempt, fits, need, usable: float, probes=(1, 2), max_compiles: int = 7):
    """The largest per-chip batch that fits, in few compiles: memory per chip is close to linear in the batch.

    ``attempt(b)`` compiles (once per b) and returns its :class:`StepFigures`; ``need(f)`` is the bytes per chip
    it needs (XLA's memory analysis, or the figure its out-of-memory message names). Two probe batches give a
    line a + s·b; the batch where it meets ``usable`` is compiled, and the line is redrawn through the two
    compiled batches nearest that capacity (a secant step) until the prediction is a batch already compiled
    that fits, with the next one over (predicted or compiled). Returns (batch, how it was found); batch 0 when not
    even ``probes[0]`` fits."""
    tried = {}
    for b in probes:
        tried[b] = attempt(b)
        if not fits(tried[b]):
            break
    note = "no batch fits"
    while True:
        fitting = [b for b, f in tried.items() if fits(f)]
        best = max(fitting, default=0)
        ceiling = min((b for b, f in tried.items() if not fits(f)), default=None)
        if best == 0:
            if 1 in tried:
                return 0, note
            tried[1] = attempt(1)  # the probes were too large: the smallest batch decides
            continue
        if ceiling is not None and ceiling == best + 1:
            return best, note + f"; {best + 1} compiled and does not fit"
        pts = sorted((b, need(f)) for b, f in tried.items() if need(f) is not None)
        # the two compiled batches nearest the capacity: the largest that fits and the next one measured above it
        below = [p for p in pts if p[0] <= best]
        above = [p for p in pts if p[0] > best]
        (b0, m0), (b1, m1) = (
            (below[-1], above[0]) if above else (below[-2], below[-1]) if len(below) > 1 else (below[-1], below[-1])
        )
        if b1 == b0 or m1 <= m0:
            return best, note
        slope = (m1 - m0) / (b1 - b0)
        intercept = m0 - slope * b0
        note = (
            f"memory per chip ≈ {intercept / GiB:.3f} + {slope / GiB:.4f}·batch GiB through batches {b0} and {b1} "
            f"({len(tried)} compiles)"
        )
        guess = int((usable - intercept) // slope)
        if ceiling is not None:
            guess = min(guess, ceiling - 1)
        if guess <= best:  # the line says best + 1 would not fit: best is the answer
            return best, note
        if len(tried) >= max_compiles:
            return best, note + f"; stopped after {max_compiles} compiles, {guess} may fit too"
        tried[guess] = attempt(guess)


def _parse_shapes(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not m or int(m.group(1)) % 8 or int(m.group(2)) % 8:
            raise PreflightError(f"--eval-shapes: expected HxW,HxW with multiples of 8 (e.g. 320x480), got {part!r}")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def _load_config(path: str, overrides: list[str]):
    """The config as ``baryir-train`` reads it (:func:`baryir_jax.config.load`)."""
    from baryir_jax.config import load

    return load(path, overrides)


PROG = "baryir-preflight"


def main(argv=None) -> int:
    """``baryir-preflight`` with ``argv``: its exit status (:mod:`baryir_jax.errors`; 1 = does not fit)."""
    return cli.run_main(PROG, _main, argv)


def _main(argv=None) -> int:
    p = cli.ArgumentParser(
        prog=PROG,
        description="Compile the training step for a named TPU slice on this machine's CPU (needs libtpu: "
        'pip install -e ".[tpu]") and print the memory per chip, FLOPs, roofline and whether it fits.',
        epilog="Any --config.KEY=VALUE override of baryir-train is accepted (e.g. --config.dtype=bfloat16). Exit "
        "status: 0 fits, 1 does not fit, 2 bad arguments or config (or no libtpu), 3 other compiler error.",
    )
    p.add_argument("--config", required=True, help="training config FILE[:variant], as for baryir-train")
    p.add_argument(
        "--accelerator", required=True, help="Cloud TPU type: v5e-16 (= v5litepod-16), v6e-8, v4-8, v5p-8, ..."
    )
    p.add_argument(
        "--per_device_batch",
        type=int,
        default=None,
        help="per-chip batch (default: batch_size / chips); with --find-max-batch, where the search starts",
    )
    p.add_argument(
        "--find_max_batch",
        action="store_true",
        help="find the largest per-chip batch that fits: compiles N/2 and N (N = --per-device-batch, default 2), "
        "then the batch where the memory line meets the chip's HBM, until it is confirmed",
    )
    p.add_argument("--skip_eval", action="store_true", help="do not compile the evaluation forward")
    p.add_argument(
        "--eval_shapes",
        default=None,
        help="HxW,HxW: evaluation shapes to compile (default: the buckets of config.eval.tasks' test sets)",
    )
    p.add_argument(
        "--fast_compile",
        action="store_true",
        help="least XLA effort: about 2x faster, but memory figures are pessimistic (more temporaries)",
    )
    p.add_argument(
        "--cpu_cost", action="store_true", help="also compile the step for this CPU and print XLA:CPU's FLOP count"
    )
    p.add_argument("--json_only", action="store_true", help="print only the JSON line")
    from baryir_jax.config import split_overrides

    overrides, rest = split_overrides(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(rest)
    out = sys.stdout
    log = (lambda *a: None) if args.json_only else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        acc = parse_accelerator(args.accelerator)
        config = _load_config(args.config, overrides)
        if args.skip_eval:
            shapes = []
        elif args.eval_shapes:
            shapes = _parse_shapes(args.eval_shapes)
        else:
            shapes = eval_buckets(list(config.eval.tasks))
        report, status = run_preflight(
            config,
            args.config,
            acc,
            args.per_device_batch,
            args.find_max_batch,
            shapes,
            log=log,
            options=FAST_COMPILE_OPTIONS if args.fast_compile else None,
            with_cpu_cost=args.cpu_cost,
        )
    except RuntimeError as e:
        raise RunFailed(f"XLA:TPU could not compile the step: {e}") from None
    except ValueError as e:  # a config value that cannot work (ConfigError is one): one line
        if isinstance(e, UsageError):
            raise
        raise UsageError(str(e)) from None
    if not args.json_only:
        print_table(report, out)
    print(json.dumps(report), file=out, flush=True)
    if status:
        print(f"baryir-preflight: {report['message']}", file=sys.stderr)
    return status


def run():  # console-script entry point
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compiling needs no local accelerator (one may be in use)
    cli.console(PROG, _main)()


if __name__ == "__main__":
    run()
