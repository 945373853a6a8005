"""Full-size training-step speed and memory: ``python -m baryir_jax.bench.train_step [options]``.

Times the jitted max-min step of a configuration (default: the official 3D run, batch 1, patch 128) in
float32 and bfloat16 and prints one JSON line per dtype: images/s, seconds per step, compile seconds, peak
memory (device peak where the backend reports it, else the process's peak RSS). With ``--official-repo PATH``
(a checkout of github.com/xl-tang3/BaryIR; needs torch) it also times the official PyTorch training iteration
on the same machine — restorer step, fresh forward, the two potential steps, as ``trainer_bary.py`` does — and
prints the JAX/PyTorch speed ratio.

The accelerator figures (``accelerator_suite.sh``) come from ``--batches 3,8,16,32 --official-batches 3,8 --out
FILE``: every dtype at every per-device batch, each in a fresh process (a failure, e.g. out of memory, is
recorded and the run goes on), the official iteration at the batches given, and one JSON summary with the
JAX/PyTorch ratios. Each JAX result also carries ``flops_per_step`` (XLA's cost analysis of the compiled step,
per device: the executed FLOPs, rematerialisation included) and ``mfu`` = flops_per_step / seconds_per_step /
the device's peak (``peak_tflops``: the chip's published dense bf16 peak, used for float32 too, or
``--peak-tflops``; null where unknown, e.g. CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

from baryir_jax import cli


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# Published dense (no sparsity) bf16 peaks per chip, TFLOP/s; first match of the device_kind wins.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),  # NVIDIA H200 SXM
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L4", 121.0),
    ("TPU v6 lite", 918.0),  # v6e (Trillium)
    ("TPU v6e", 918.0),
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),  # v5p reports "TPU v5"
    ("TPU v4", 275.0),
)


def peak_tflops(device_kind: str) -> float | None:
    """The chip's published dense bf16 peak (TFLOP/s) for a jax ``device_kind``, or None if unknown."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return value
    return None


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled (per-device, SPMD-partitioned) program from XLA's cost analysis."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (a backend without cost analysis)
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def bench_jax(
    config_path: str,
    dtype: str,
    batch: int,
    patch: int,
    steps: int,
    warmup: int,
    peak: float | None = None,
    compile_only: bool = False,
) -> dict:
    """One JAX measurement in this process. ``compile_only``: initialise and compile, run nothing, and return
    the compile time (with a persistent compilation cache set, this fills it for a later timed process)."""
    import jax

    from baryir_jax.train import step as step_lib
    from baryir_jax.train.experiment import Experiment

    config = _load_config(config_path)
    config.dtype = dtype
    config.data.batch_size = batch * jax.device_count()
    config.data.patch_size = patch
    t_init = time.perf_counter()
    exp = Experiment(config, workdir=".", with_data=False)
    state = exp.init_state()
    print(f"[bench] {dtype}: state initialised in {time.perf_counter() - t_init:.1f}s", file=sys.stderr, flush=True)
    jstep, sharding = step_lib.jit_train_step(exp.train_step, exp.mesh, state)
    state = jax.device_put(state, sharding)
    rng = np.random.default_rng(0)
    ids = np.asarray(exp.degradation_ids(), np.int32)
    b = config.data.batch_size
    host = dict(
        degraded=rng.uniform(0, 1, (b, patch, patch, 3)).astype(np.float32),
        clean=rng.uniform(0, 1, (b, patch, patch, 3)).astype(np.float32),
        degradation_id=ids[np.arange(b) % len(ids)],
    )
    from baryir_jax.data.to_mesh import host_batch_to_global

    batch_arr = host_batch_to_global(host, exp.mesh)
    t0 = time.perf_counter()
    compiled = jstep.lower(state, batch_arr).compile()
    compile_s = time.perf_counter() - t0
    print(f"[bench] {dtype}: compiled in {compile_s:.1f}s", file=sys.stderr, flush=True)
    if compile_only:
        return dict(impl="jax", dtype=dtype, batch_per_device=batch, compile_seconds=round(compile_s, 1))
    for _ in range(warmup):
        state, m = compiled(state, batch_arr)
    jax.block_until_ready(state)
    print(f"[bench] {dtype}: warm-up done", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch_arr)
    jax.block_until_ready((state, m))
    dt = (time.perf_counter() - t0) / steps
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    peak_bytes = (stats or {}).get("peak_bytes_in_use")
    flops = compiled_flops(compiled)
    peak_t = peak if peak else peak_tflops(dev.device_kind)
    return dict(
        impl="jax",
        dtype=dtype,
        device=f"{dev.platform}:{dev.device_kind}",
        devices=jax.device_count(),
        batch=b,
        batch_per_device=batch,
        patch=patch,
        seconds_per_step=round(dt, 4),
        images_per_s=round(b / dt, 3),
        compile_seconds=round(compile_s, 1),
        peak_memory_mb=round(peak_bytes / 2**20, 1) if peak_bytes else round(_peak_rss_mb(), 1),
        peak_memory_kind="device" if peak_bytes else "process_rss",
        flops_per_step=flops,
        peak_tflops=peak_t,
        mfu=round(flops / dt / (peak_t * 1e12), 5) if flops and peak_t else None,
        finite=bool(m["finite"]),
        jax=jax.__version__,
    )


def bench_official(
    repo: str, batch: int, patch: int, steps: int, warmup: int, num_potentials: int = 3, autocast_bf16: bool = False
) -> dict:
    """One official training iteration (trainer_bary.py's order of operations), timed in PyTorch.

    ``autocast_bf16`` runs the forward passes under ``torch.autocast(bfloat16)`` (the official code has no mixed
    precision; this is only the nearest PyTorch counterpart of our ``dtype=bfloat16``)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures"))
    from make_parity_fixture import import_official  # stubs torchvision.utils if needed

    mb = import_official(repo)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = mb.BaryNet(decoder=True).to(dev).train()
    pots = mb.Potentials(num_potentials=num_potentials, channels=384, size=patch).to(dev).train()
    opt_g = torch.optim.RMSprop(net.parameters(), lr=1e-4)
    opt_f = torch.optim.RMSprop(pots.parameters(), lr=1e-4)
    lam = torch.full((num_potentials,), 1.0 / num_potentials, device=dev)
    x = torch.rand(batch, 3, patch, patch, device=dev)
    y = torch.rand(batch, 3, patch, patch, device=dev)
    de = [i % num_potentials for i in range(batch)]

    def amp():
        if not autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

    def iteration():
        for p in pots.parameters():
            p.requires_grad_(False)
        with amp():
            out, z, b, r = net(x)
        out, z, b, r = out.float(), z.float(), b.float(), r.float()
        loss = 1e4 * F.l1_loss(out, y)
        zf, bf, rf = z.flatten(1), b.flatten(1), r.flatten(1)
        bh, rh = F.normalize(bf, dim=1), F.normalize(rf, dim=1)
        t = 0
        for i in range(batch):  # the official per-sample loops
            dist = torch.sqrt(torch.mean((zf[i] - bf[i]) ** 2))
            ort = sum((bh[i] * rh[j]).sum() ** 2 for j in range(batch))
            sims = torch.stack([torch.exp((rh[i] * rh[j]).sum() / 0.07) for j in range(batch)])
            pos = sum(sims[j] for j in range(batch) if de[j] == de[i])
            con = -torch.log(pos / sims.sum())
            t = t + lam[de[i]] * (dist + 0.05 * (ort + con) - pots(b[i], de[i]).squeeze())
        loss = loss + t / batch
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        for p in pots.parameters():
            p.requires_grad_(True)
        with torch.no_grad(), amp():
            _, _, b2, _ = net(x)
        b2 = b2.float()
        lf = sum(lam[de[i]] * pots(b2[i], de[i]).squeeze() for i in range(batch)) / batch
        opt_f.zero_grad()
        lf.backward()
        opt_f.step()
        lc = 10 * (sum(lam[k] * v.squeeze() for k, v in enumerate(pots(b2[-1])))) ** 2
        opt_f.zero_grad()
        lc.backward()
        opt_f.step()

    for _ in range(warmup):
        iteration()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        iteration()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _peak_rss_mb()
    return dict(
        impl="pytorch-official",
        dtype="bfloat16-autocast" if autocast_bf16 else "float32",
        device=str(dev),
        batch=batch,
        patch=patch,
        seconds_per_step=round(dt, 4),
        images_per_s=round(batch / dt, 3),
        peak_memory_mb=round(peak, 1),
        peak_memory_kind="device" if dev.type == "cuda" else "process_rss",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )


def _load_config(path: str):
    """``FILE[:variant]`` as every command reads it (:func:`baryir_jax.config.load`), unlocked: the benchmark
    sets the dtype, batch and patch."""
    from baryir_jax.config import load

    return load(path, lock=False)


def _in_subprocess(args: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Each measurement in a fresh process, so that peak memory and compile caches are its own.

    A failure (non-zero exit, e.g. out of memory, or the timeout) is returned as ``{"error": ...}``."""
    import subprocess

    try:
        r = subprocess.run(
            [sys.executable, "-m", "baryir_jax.bench.train_step", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    if r.returncode != 0:
        tail = [line for line in r.stderr.strip().splitlines() if line.strip()][-3:]
        return dict(error=f"exit {r.returncode}: " + " | ".join(tail)[-800:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def precompile(
    jobs: list[tuple[str, int]], common: list[str], parallel: int, timeout: float | None, env: dict
) -> dict[tuple[str, int], dict]:
    """Compile every JAX measurement ``(dtype, per-device batch)`` first, ``parallel`` fresh processes at a
    time, into the persistent compilation cache named by ``env`` (``JAX_COMPILATION_CACHE_DIR``), so that the
    timed processes that follow, one at a time, load their executables instead of compiling (and autotuning) them
    one after another. Measured once on an H200 host (16 cores, 2026-11-30): eight full-size processes at once
    did not finish in 290 s, each also compiling the parameter initialisation (148 s alone); use a small N there.
    Returns each job's ``{"compile_seconds": ...}`` or ``{"error": ...}``."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        dtype, batch = job
        return _in_subprocess(common + ["--only", dtype, "--batch", str(batch), "--compile_only"], timeout, env)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return dict(zip(jobs, pool.map(one, jobs)))


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).replace(" ", ",").split(",") if x]


def ratios(results: list[dict]) -> list[dict]:
    """JAX images/s over the official iteration's at the same global batch: float32 against PyTorch float32,
    bfloat16 against PyTorch's bf16 autocast (where both were measured)."""
    out = []
    for off in results:
        if off.get("impl") != "pytorch-official" or "error" in off:
            continue
        want = "bfloat16" if off["dtype"] == "bfloat16-autocast" else "float32"
        for r in results:
            if r.get("impl") == "jax" and "error" not in r and r["dtype"] == want and r["batch"] == off["batch"]:
                out.append(
                    dict(
                        batch=off["batch"],
                        jax_dtype=want,
                        official_dtype=off["dtype"],
                        jax_images_per_s=r["images_per_s"],
                        official_images_per_s=off["images_per_s"],
                        speedup=round(r["images_per_s"] / off["images_per_s"], 3),
                    )
                )
    return out


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(here, "..", "..", "configs", "three_task.py"))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batch", type=int, default=1, help="per device")
    p.add_argument("--batches", default=None, help="per-device batches, e.g. 3,8,16,32 (overrides --batch)")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--official_repo", default=None, help="checkout of github.com/xl-tang3/BaryIR (needs torch)")
    p.add_argument(
        "--official_batches", default=None, help="batches of the official iteration (default: the first batch)"
    )
    p.add_argument("--official_bf16", action="store_true", help="also time the official iteration in bf16 autocast")
    p.add_argument("--peak_tflops", type=float, default=None, help="the device's peak for the MFU (default: table)")
    p.add_argument("--each_timeout", type=float, default=None, help="seconds per measurement (a fresh process)")
    p.add_argument("--budget", type=float, default=None, help="seconds in all; later measurements are skipped")
    p.add_argument(
        "--precompile",
        type=int,
        default=0,
        help="compile every JAX measurement first, N processes at a time, into a persistent compilation cache that "
        "the timed processes then load (0: each timed process compiles its own step)",
    )
    p.add_argument("--precompile_timeout", type=float, default=None, help="seconds per precompiling process")
    p.add_argument(
        "--compilation_cache", default=None, help="the cache folder for --precompile (default: a temporary one)"
    )
    p.add_argument("--compile_only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="write the summary JSON here")
    p.add_argument("--jsonl", default=None, help="append every result here as soon as it exists")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one measurement, in this process
    a = p.parse_args(argv)
    if a.only in ("official", "official-bf16"):
        print(
            json.dumps(
                bench_official(
                    a.official_repo, a.batch, a.patch, a.steps, a.warmup, autocast_bf16=a.only == "official-bf16"
                )
            )
        )
        return
    if a.only:
        r = bench_jax(a.config, a.only, a.batch, a.patch, a.steps, a.warmup, a.peak_tflops, a.compile_only)
        print(json.dumps(r))
        return
    batches = _ints(a.batches) if a.batches else [a.batch]
    official_batches = _ints(a.official_batches) if a.official_batches else batches[:1]
    common = ["--config", a.config, "--patch", str(a.patch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    if a.peak_tflops:
        common += ["--peak-tflops", str(a.peak_tflops)]
    plan = []  # in priority order: per batch, JAX float32, the official float32, JAX bf16, the official bf16
    for batch in batches:
        for dtype in a.dtypes.split(","):
            plan.append((dtype.strip(), batch))
            if a.official_repo and batch in official_batches and dtype.strip() == "float32":
                plan.append(("official", batch))
        if a.official_repo and a.official_bf16 and batch in official_batches:
            plan.append(("official-bf16", batch))
    t_start = time.perf_counter()
    env, compiled, cache_tmp = None, {}, None
    if a.precompile:
        import shutil
        import tempfile

        cache = a.compilation_cache or (cache_tmp := tempfile.mkdtemp(prefix="baryir-bench-cache-"))
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        jobs = [(what, batch) for what, batch in plan if not what.startswith("official")]
        # the compiling processes share the device: none may take most of its memory up front
        compile_env = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")
        compiled = precompile(jobs, common, a.precompile, a.precompile_timeout, compile_env)
        for (what, batch), r in compiled.items():
            print(json.dumps({**r, "precompiled": what, "batch_per_device": batch}), flush=True)
        print(f"[bench] precompiled in {time.perf_counter() - t_start:.0f}s", file=sys.stderr, flush=True)
    results = []
    for what, batch in plan:
        if a.budget is not None and time.perf_counter() - t_start > a.budget:
            r = dict(error="skipped: --budget spent")
        else:
            extra = ["--official-repo", a.official_repo] if what.startswith("official") else []
            r = _in_subprocess(common + ["--only", what, "--batch", str(batch)] + extra, a.each_timeout, env)
        if (what, batch) in compiled and "error" not in r:
            # the timed process loaded its step from the cache: its own compile time is the load
            first = compiled[(what, batch)]
            r["compile_seconds_cached"] = r.pop("compile_seconds")
            r["compile_seconds"] = first.get("compile_seconds")
            r["compiled_in_parallel"] = a.precompile
        if "error" in r:
            impl = "pytorch-official" if what.startswith("official") else "jax"
            r = dict(impl=impl, dtype=what, batch_per_device=batch, **r)
        print(json.dumps(r), flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(r) + "\n")
        results.append(r)
    if cache_tmp:
        shutil.rmtree(cache_tmp, ignore_errors=True)
    summary = dict(
        config=a.config,
        precompile=a.precompile,
        patch=a.patch,
        steps=a.steps,
        warmup=a.warmup,
        date=time.strftime("%Y-%m-%d"),
        wall_seconds=round(time.perf_counter() - t_start, 1),
        results=results,
        ratios=ratios(results),
    )
    for r in summary["ratios"]:
        print(json.dumps(dict(ratio=r)), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
