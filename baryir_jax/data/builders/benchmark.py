"""TFDS builders of the benchmark data sets, each reading a `manual_dir` in the official layout.

`manual_dir` is the official `data/` folder (or the repository root holding it). Layouts and expected counts:

| builder | folders under manual_dir | splits (expected) |
|---|---|---|
| denoise_train | Train/Denoise/ (BSD400 aNNNNNN.jpg or NNNNNN.jpg, WED NNNNN.bmp) | train 5,144 (clean only) |
| rain100l | Train/Derain/{rainy/rain-N, gt/norain-N}.png; test/derain/Rain100L/{input,target}/ | train 200, test 100 |
| reside_ots | Train/Dehaze/{synthetic/partK/XXXX_beta_A.jpg, original/XXXX.jpg} | train 72,135 |
| sots_outdoor | test/dehaze/{input/XXXX_beta_A.jpg, target/XXXX.png} | test 500 |
| gopro | Train/Deblur/{blur,sharp}/; test/deblur/{input,target}/ (or GOPRO_Large/) | train 2,103, test 1,111 |
| lol_v1 | Train/lowlight/{low,high}/; test/lowlight/eval15/{low,high}/ | train 485, eval15 15 |
| cbsd68 | test/denoise/cbsd68/ (colour; also bsd68/ if colour) | sigma15, sigma25, sigma50: 68 each |
"""

from __future__ import annotations

from baryir_jax.data.builders.cbsd68 import Cbsd68
from baryir_jax.data.builders.denoise_train import DenoiseTrain
from baryir_jax.data.builders.gopro import Gopro
from baryir_jax.data.builders.lol_v1 import LolV1
from baryir_jax.data.builders.rain100l import Rain100L
from baryir_jax.data.builders.reside import ResideOts, SotsOutdoor

BENCHMARK_BUILDERS = {b.name: b for b in (DenoiseTrain, Rain100L, ResideOts, SotsOutdoor, Gopro, LolV1, Cbsd68)}

__all__ = ["BENCHMARK_BUILDERS", "Cbsd68", "DenoiseTrain", "Gopro", "LolV1", "Rain100L", "ResideOts", "SotsOutdoor"]
