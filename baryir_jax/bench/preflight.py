"""``baryir-preflight``: compile the training step for a named TPU slice on this machine's CPU, before paying for it.

    baryir-preflight --config configs/three_task.py --accelerator v5e-16 --config.dtype=bfloat16 --per-device-batch 8
    baryir-preflight --config configs/three_task.py --accelerator v5e-16 --config.dtype=bfloat16 --find-max-batch
    python -m baryir_jax.bench.preflight ...                               # the same

With ``libtpu`` installed (the ``tpu`` extra: ``pip install -e ".[tpu]"``), JAX describes any TPU slice without
having one (``jax.experimental.topologies.get_topology_desc``) and XLA:TPU compiles for it on the CPU. The
preflight builds the :class:`~baryir_jax.train.experiment.Experiment` that ``baryir-train`` builds, over a mesh of the
slice's devices (``experiment.make_mesh``), takes the jitted step with its shardings from ``step.jit_train_step`` (the
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

This module holds the run (:func:`run_preflight`), the largest-batch search and the CLI; the chip table and slice
naming live in :mod:`baryir_jax.bench.tpu_chips`, the compiles and their figures in
:mod:`baryir_jax.bench.tpu_compile`, the roofline and the printed table in :mod:`baryir_jax.bench.preflight_report`
(their names are importable from here too).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from typing import Any

from baryir_jax import cli
from baryir_jax.bench.preflight_report import memory_dict, print_table, roofline
from baryir_jax.bench.tpu_chips import (  # noqa: F401 - re-exported: this module's public names
    CHIPS,
    Accelerator,
    Chip,
    GiB,
    PreflightError,
    known_accelerators,
    parse_accelerator,
    topology_devices,
)
from baryir_jax.bench.tpu_compile import (  # noqa: F401 - re-exported: this module's public names
    FAST_COMPILE_OPTIONS,
    TEST_SET_SIZES,
    Compiled,
    OutOfMemory,
    _cpu_seconds,
    compile_eval_forward,
    compile_lowered,
    compile_train_step,
    cpu_cost,
    eval_buckets,
    experiment_for,
    lower_train_step,
    parse_oom,
    usable_hbm,
)
from baryir_jax.errors import RunFailed, UsageError


@dataclasses.dataclass
class StepFigures:
    per_chip_batch: int
    compiled: Compiled | None  # None: did not fit
    needed: float | None = None  # bytes per chip when it did not fit (from XLA's message)


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
