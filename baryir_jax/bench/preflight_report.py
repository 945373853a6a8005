"""``baryir-preflight``'s report: the roofline bound of one compiled step (:func:`roofline`), its memory figures
in GiB (:func:`memory_dict`), and the table printed for a person (:func:`print_table`)."""

from __future__ import annotations

import math
from typing import Any

from baryir_jax.bench.tpu_chips import Chip, GiB
from baryir_jax.bench.tpu_compile import Compiled


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
