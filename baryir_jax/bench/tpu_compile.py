"""XLA:TPU compiles for ``baryir-preflight``: the training step and the evaluation forward lowered for abstract
inputs on a slice's devices, compiled, and read back as per-chip memory and cost figures (:class:`Compiled`);
XLA's out-of-memory messages parsed (:func:`parse_oom`, :func:`usable_hbm`); XLA:CPU's FLOP count of the same
step (:func:`cpu_cost`); the evaluation shape buckets of the benchmark test sets (:func:`eval_buckets`)."""

from __future__ import annotations

import dataclasses
import re
import resource
import time

from baryir_jax.errors import InputError

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
    """The training :class:`~baryir_jax.train.experiment.Experiment` of ``config`` on a mesh of ``devices``, with a
    global batch of ``per_chip_batch`` per device (a copy of the config; the data are not read)."""
    from baryir_jax.train.experiment import Experiment, make_mesh

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
