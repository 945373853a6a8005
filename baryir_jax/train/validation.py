"""Validation during and after training: per-image PSNR/SSIM (uint8, the official protocol: the restored image
quantised as the official code saves it, scored with :mod:`baryir_jax.evaluate.metrics`) of each task of
``config.eval.tasks`` on whole held-out images (:func:`baryir_jax.evaluate.restore.restore_float`, untiled).

* :func:`write_validation`: the periodic scalars ``val/TASK/psnr|ssim`` and input | restored | target images;
* :func:`evaluate_after_training`: the final table (``evaluation.md``, ``evaluation.json`` in the workdir).

``baryir-evaluate`` (:mod:`baryir_jax.evaluate.benchmark`) is the benchmark protocol (trimmed to multiples of 8,
bucketed shapes, expected counts); this is the training run's quick look on the same metrics.
"""

from __future__ import annotations

import json
import logging

import jax
import numpy as np

from baryir_jax.data import sources as data_sources
from baryir_jax.evaluate import metrics as eval_metrics
from baryir_jax.evaluate.restore import restore_float
from baryir_jax.models.io import as_path

log = logging.getLogger("baryir_jax.train")


def validate(apply_fn, params, examples, *, collect_images: int = 0):
    """Per-image PSNR/SSIM of restored and degraded inputs (uint8, official protocol) on whole images.

    Returns (rows, images): rows = [{'name', 'psnr', 'ssim', 'psnr_input', 'ssim_input'}], images = a few
    (degraded, restored, clean) uint8 triplets.
    """
    rows, images = [], []
    for ex in examples:
        x = ex.degraded.astype(np.float32) / 255.0
        restored = eval_metrics.quantize_np(restore_float(lambda batch: apply_fn(params, batch), x, tile=0))
        rows.append(
            dict(
                name=ex.name,
                psnr=float(eval_metrics.psnr(restored, ex.clean)),
                ssim=float(eval_metrics.ssim(restored, ex.clean)),
                psnr_input=float(eval_metrics.psnr(ex.degraded, ex.clean)),
                ssim_input=float(eval_metrics.ssim(ex.degraded, ex.clean)),
            )
        )
        if len(images) < collect_images:
            images.append((ex.degraded, restored, ex.clean))
    return rows, images


def eval_examples(config, data_dir: str, task: str):
    """The held-out examples of ``task`` (at most ``config.eval.max_images``; all when negative)."""
    limit = int(config.eval.max_images)
    return list(data_sources.load_eval_task(data_dir, task, config.data.collection, limit=None if limit < 0 else limit))


def task_table(results: dict[str, list[dict]]) -> str:
    """The markdown table of mean input and restored PSNR/SSIM and the gain, one row per task."""
    lines = [
        "| task | images | input PSNR | restored PSNR | gain (dB) | input SSIM | restored SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, rows in results.items():
        m = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "psnr_input", "ssim_input")}
        lines.append(
            f"| {task} | {len(rows)} | {m['psnr_input']:.2f} | {m['psnr']:.2f} | "
            f"{m['psnr'] - m['psnr_input']:+.2f} | {m['ssim_input']:.4f} | {m['ssim']:.4f} |"
        )
    return "\n".join(lines)


def write_validation(config, data_dir: str, params, apply_fn, writer, step, *, images: bool, scalars: bool):
    """Process 0 validates ``params`` on each of ``config.eval.tasks`` (a task whose test set cannot be read is
    skipped with a warning) and writes the mean PSNR/SSIM (``scalars``) and two image triplets (``images``)."""
    if jax.process_index() != 0:
        return
    params = jax.device_get(params)
    for task in config.eval.tasks:
        try:
            examples = eval_examples(config, data_dir, task)
        except Exception as e:  # a missing test set must not kill a long training run
            log.warning("validation on %s skipped: %s", task, e)
            continue
        rows, imgs = validate(apply_fn, params, examples, collect_images=2 if images else 0)
        if scalars and rows:
            writer.write_scalars(
                step,
                {
                    f"val/{task}/psnr": float(np.mean([r["psnr"] for r in rows])),
                    f"val/{task}/ssim": float(np.mean([r["ssim"] for r in rows])),
                },
            )
        if images and imgs:
            grid = [np.concatenate(triplet, axis=1) for triplet in imgs]
            w = max(g.shape[1] for g in grid)
            grid = [np.pad(g, ((0, 0), (0, w - g.shape[1]), (0, 0))) for g in grid]
            writer.write_images(
                step, {f"images/{task} (input | restored | target)": np.concatenate(grid, axis=0)[None]}
            )


def evaluate_after_training(config, data_dir: str, apply_fn, params, workdir: str, step: int) -> dict[str, list[dict]]:
    """Validate ``params`` on every task of ``config.eval.tasks``, print the table and write it to
    ``WORKDIR/evaluation.md`` (and the per-image rows to ``evaluation.json``); returns the rows by task."""
    results = {task: validate(apply_fn, params, eval_examples(config, data_dir, task))[0] for task in config.eval.tasks}
    table = task_table(results)
    print(f"\nEvaluation on held-out images ({config.data.collection}), step {step}:\n{table}\n", flush=True)
    (as_path(workdir) / "evaluation.md").write_text(table + "\n")
    (as_path(workdir) / "evaluation.json").write_text(json.dumps(results, indent=1))
    return results
