"""Full-size training-step speed and memory: ``python -m baryir_jax.bench.train_step [options]``.

Times the jitted max-min step of a configuration (default: the official 3D run, batch 1, patch 128) in
float32 and bfloat16 and prints one JSON line per dtype: images/s, seconds per step, compile seconds, peak
memory (device peak where the backend reports it, else the process's peak RSS). With ``--official-repo PATH``
(a checkout of github.com/xl-tang3/BaryIR; needs torch) it also times the official PyTorch training iteration
on the same machine — restorer step, fresh forward, the two potential steps, as ``trainer_bary.py`` does — and
prints the JAX/PyTorch speed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_jax(config_path: str, dtype: str, batch: int, patch: int, steps: int, warmup: int) -> dict:
    import jax
    from ml_collections import config_flags  # noqa: F401  (config files import ml_collections)

    from baryir_jax.train import step as step_lib
    from baryir_jax.train.loop import Experiment

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
    peak = (stats or {}).get("peak_bytes_in_use")
    return dict(
        impl="jax",
        dtype=dtype,
        device=f"{dev.platform}:{dev.device_kind}",
        devices=jax.device_count(),
        batch=b,
        patch=patch,
        seconds_per_step=round(dt, 4),
        images_per_s=round(b / dt, 3),
        compile_seconds=round(compile_s, 1),
        peak_memory_mb=round(peak / 2**20, 1) if peak else round(_peak_rss_mb(), 1),
        peak_memory_kind="device" if peak else "process_rss",
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
    import importlib.util

    path, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("bench_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def _in_subprocess(args: list[str]) -> dict:
    """Each measurement in a fresh process, so that peak memory and compile caches are its own."""
    import subprocess

    r = subprocess.run([sys.executable, "-m", "baryir_jax.bench.train_step", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench run {args} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(here, "..", "..", "configs", "three_task.py"))
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batch", type=int, default=1, help="per device")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--official-repo", default=None, help="checkout of github.com/xl-tang3/BaryIR (needs torch)")
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
        print(json.dumps(bench_jax(a.config, a.only, a.batch, a.patch, a.steps, a.warmup)))
        return
    common = [
        "--config",
        a.config,
        "--batch",
        str(a.batch),
        "--patch",
        str(a.patch),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
    ]
    results = []
    for dtype in a.dtypes.split(","):
        r = _in_subprocess(common + ["--only", dtype.strip()])
        print(json.dumps(r), flush=True)
        results.append(r)
    if a.official_repo:
        r = _in_subprocess(common + ["--only", "official", "--official-repo", a.official_repo])
        fp32 = next((x for x in results if x["dtype"] == "float32"), results[0])
        r["jax_float32_speedup"] = round(fp32["images_per_s"] / r["images_per_s"], 3)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
