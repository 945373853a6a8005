"""The results of one `baryir-evaluate` run: the reasons to refuse the average, the files written
(`per_image.csv`, `table.json`, `table.md`) and the Markdown table laid out as the paper's Tables 1/2.

The table is the dict `benchmark.evaluate` returns (what `table.json` holds): `columns` (task, title, in_average),
`tasks` (per task: psnr in dB, ssim, count, expected, skipped, optionally error), `average` ({psnr, ssim} over the
in-average columns, or None), `average_refused` (list of reasons, or None), `images`, `expected_images`,
`compiled_shapes`, `protocol`, `label`, `extra_note`, `seconds`.
"""

from __future__ import annotations

import csv
import math
import os

from baryir_jax.evaluate.checkpoint import save_json

PER_IMAGE_FIELDS = ("task", "name", "psnr", "ssim", "height", "width")


def refusals(per_task: dict, refuse: list[str] | None = None) -> list[str]:
    """Why the average must not be printed: `refuse` (e.g. `--limit`), then every task with an error or whose count
    differs from its expected count (missing images, more than the benchmark has, skipped ones). Empty: print it."""
    reasons = list(refuse or [])
    for task, res in per_task.items():
        exp = res["expected"]
        if "error" in res:
            reasons.append(f"{task}: {res['count']}/{exp} images ({res['error'].splitlines()[0]})")
        elif exp is not None and res["count"] != exp:
            gap = exp - res["count"]
            what = f"{gap} missing" if gap > 0 else f"{-gap} more than the benchmark has"
            reasons.append(
                f"{task}: {res['count']}/{exp} images ({what}"
                + (f"; {len(res['skipped'])} skipped" if res["skipped"] else "")
                + ")"
            )
    return reasons


def write_per_image(output_dir: str, rows: list[dict]) -> None:
    """`output_dir/per_image.csv`: one row per scored image (`PER_IMAGE_FIELDS`; PSNR 'inf' for an exact match)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "per_image.csv"), "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(PER_IMAGE_FIELDS)
        for r in rows:
            wr.writerow([r["task"], r["name"], _fmt(r["psnr"]), f"{r['ssim']:.6f}", r["height"], r["width"]])


def write_table(output_dir: str, table: dict) -> None:
    """`output_dir/table.json` (non-finite floats as strings) and `output_dir/table.md` (`render_markdown`)."""
    os.makedirs(output_dir, exist_ok=True)
    save_json(os.path.join(output_dir, "table.json"), _finite(table))
    with open(os.path.join(output_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(render_markdown(table))


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.6f}"


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _cell(res) -> str:
    if res.get("psnr") is None:
        return "—"
    cell = f"{res['psnr']:.2f}/{res['ssim']:.3f}"
    if res.get("expected") is not None and res["count"] != res["expected"]:
        cell += f" ({res['count']}/{res['expected']})"
    return cell


def render_markdown(table: dict) -> str:
    """The table as Markdown: one row for the method (PSNR dB / SSIM per column, the average or 'refused', the
    columns outside the average after it, marked †), one row of image counts, the protocol and any refusals."""
    cols = table["columns"]
    main = [c for c in cols if c["in_average"]]
    extra = [c for c in cols if not c["in_average"]]
    head = ["Method"] + [c["title"] for c in main] + ["Average"] + [c["title"] for c in extra]
    avg = table["average"]
    avg_cell = f"{avg['psnr']:.2f}/{avg['ssim']:.3f}" if avg else "refused"
    row = (
        [table["label"]]
        + [_cell(table["tasks"][c["task"]]) for c in main]
        + [avg_cell]
        + [_cell(table["tasks"][c["task"]]) for c in extra]
    )
    n_main = sum(table["tasks"][c["task"]]["count"] for c in main)
    e_main = sum(table["tasks"][c["task"]]["expected"] or 0 for c in main)
    counts = (
        ["images"]
        + [f"{table['tasks'][c['task']]['count']}/{table['tasks'][c['task']]['expected']}" for c in main]
        + [f"{n_main}/{e_main}"]
        + [f"{table['tasks'][c['task']]['count']}/{table['tasks'][c['task']]['expected']}" for c in extra]
    )
    lines = [
        f"# {table['label']}: {table['benchmark']} benchmark, {table['title']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| " + " | ".join(row) + " |",
        "| " + " | ".join(counts) + " |",
        "",
        f"PSNR (dB) / SSIM. {table['images']} of {table['expected_images']} expected images; "
        f"{table['compiled_shapes']} compiled shape(s); {table['seconds']} s.",
        "",
        f"Protocol: {table['protocol']}.",
    ]
    if extra and table.get("extra_note"):
        lines += ["", table["extra_note"]]
    if table["average_refused"]:
        lines += ["", "**Average refused**: the benchmark is incomplete:"] + [
            f"- {r}" for r in table["average_refused"]
        ]
    return "\n".join(lines) + "\n"
