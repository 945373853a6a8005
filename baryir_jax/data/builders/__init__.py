"""TFDS builders (array_record, no TensorFlow) for the benchmark data sets, `embedded` and `paired_folder`.

One module per data set holds its folder scan beside its builder: `denoise_train`, `rain100l`, `reside` (OTS and
SOTS-outdoor, one naming scheme), `gopro`, `lol_v1`, `cbsd68`, `embedded`, `paired_folder`; `folders` holds the
helpers every scan uses (case-insensitive folder lookup, image listing, pairing with a report of every file left
out); `base` the shared builder; `benchmark` lists the benchmark builders and their layouts.
"""

from __future__ import annotations

from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.builders.benchmark import (
    BENCHMARK_BUILDERS,
    Cbsd68,
    DenoiseTrain,
    Gopro,
    LolV1,
    Rain100L,
    ResideOts,
    SotsOutdoor,
)
from baryir_jax.data.builders.embedded import Embedded
from baryir_jax.data.builders.paired_folder import PairedFolder

BUILDERS = {**BENCHMARK_BUILDERS, Embedded.name: Embedded, PairedFolder.name: PairedFolder}
DATASET_NAMES = tuple(BUILDERS)  # what `baryir-prepare --dataset` accepts

__all__ = [
    "BUILDERS",
    "DATASET_NAMES",
    "Cbsd68",
    "DenoiseTrain",
    "Embedded",
    "Gopro",
    "LolV1",
    "PairedFolder",
    "Rain100L",
    "ResideOts",
    "RestorationBuilder",
    "SotsOutdoor",
]
