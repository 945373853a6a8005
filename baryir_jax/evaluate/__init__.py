"""Evaluation and inference: skimage-exact metrics, the benchmark evaluator, the unseen suite, tiled restoration.

* `metrics`: `psnr`, `ssim` (uint8 HWC, jit-able, batched; `y_channel=True` for BT.601 luma), `quantize`;
* `benchmark`: `baryir-evaluate`, the scoring loop and its command line (shape buckets: `shapes`);
* `registry`: the benchmarks (3D / 5D / unseen columns, expected image counts); `pairs`: where the evaluation
  pairs come from (prepared splits, unseen tasks built on the fly); `report`: the table, its refusals, the files;
* `unseen`: the deterministic, checksummed unseen-degradation suite;
* `restore`: `baryir-restore` (any size, tiled with blended overlaps);
* `checkpoint`: `load_restorer` (a model checkpoint directory → a runnable restorer).
"""

from baryir_jax.evaluate.metrics import psnr, quantize, ssim

__all__ = ["psnr", "ssim", "quantize"]
