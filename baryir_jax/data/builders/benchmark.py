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

import os

from baryir_jax.data import degradations
from baryir_jax.data.builders import layouts
from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.images import ImageProblem, encode_png, is_grayscale_content, load_image_file
from baryir_jax.data.report import DataError


class DenoiseTrain(RestorationBuilder):
    name = "denoise_train"
    PAIRED = False
    EXPECTED = {"train": layouts.BSD400_COUNT + layouts.WED_COUNT}
    DESCRIPTION = (
        "Clean training images for denoising: BSD400 (400 colour jpg) + Waterloo Exploration (4,744 "
        "bmp), named as in the official index. Noise is added on the fly in training."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put the BSD400 and WED images in <manual_dir>/Train/Denoise/ (flat, as the official loader expects;
    subfolders are accepted here). BSD400 files may be named a247012.jpg (official index) or 247012.jpg
    (usual download); WED files are 00001.bmp ... 04744.bmp.
    """

    def _scan(self, root, report):
        return layouts.scan_denoise_train(root, report)


class Rain100L(RestorationBuilder):
    name = "rain100l"
    EXPECTED = {"train": layouts.RAIN_TRAIN_COUNT, "test": 100}
    DESCRIPTION = "Rain100L: 200 training pairs (rain-N / norain-N) and 100 test pairs."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Training pairs: <manual_dir>/Train/Derain/rainy/rain-N.png and Train/Derain/gt/norain-N.png (N = 1..200).
    Test pairs: <manual_dir>/test/derain/Rain100L/input/ and target/ (rain-N <-> norain-N, or equal names).
    """

    def _scan(self, root, report):
        return layouts.scan_rain100l(root, report)


class ResideOts(RestorationBuilder):
    name = "reside_ots"
    EXPECTED = {"train": layouts.OTS_COUNT}
    DESCRIPTION = (
        "RESIDE OTS (outdoor training set): 72,135 hazy images of 2,061 scenes (7 beta x 5 A each), "
        "each paired with its clear image. The clear image is stored with every hazy version."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    <manual_dir>/Train/Dehaze/synthetic/part1..part4/XXXX_beta_A.jpg (hazy) and
    <manual_dir>/Train/Dehaze/original/XXXX.jpg (clear), as the official hazy_outside index lists them.
    """

    def _scan(self, root, report):
        return layouts.scan_reside_ots(root, report)


class SotsOutdoor(RestorationBuilder):
    name = "sots_outdoor"
    EXPECTED = {"test": layouts.SOTS_COUNT}
    DESCRIPTION = "SOTS-outdoor (RESIDE): 500 hazy/clear test pairs."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    <manual_dir>/test/dehaze/input/XXXX_beta_A.jpg and test/dehaze/target/XXXX.png (RESIDE's own
    SOTS/outdoor/hazy and gt are accepted too).
    """

    def _scan(self, root, report):
        return layouts.scan_sots_outdoor(root, report)


class Gopro(RestorationBuilder):
    name = "gopro"
    EXPECTED = dict(layouts.GOPRO_COUNTS)
    DESCRIPTION = "GoPro deblurring: 2,103 training and 1,111 test pairs (blur / sharp)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Official layout: <manual_dir>/Train/Deblur/blur/ and sharp/ (same file names), <manual_dir>/test/deblur/input/
    and target/. The original GOPRO_Large/train|test/<sequence>/blur|sharp/ layout is accepted too.
    """

    def _scan(self, root, report):
        return layouts.scan_gopro(root, report)


class LolV1(RestorationBuilder):
    name = "lol_v1"
    EXPECTED = dict(layouts.LOL_COUNTS)
    DESCRIPTION = "LOL-v1 low-light enhancement: 485 training pairs and the 15 eval15 pairs (low / high)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    <manual_dir>/Train/lowlight/low/ and high/ (485 pairs), <manual_dir>/test/lowlight/eval15/low/ and high/
    (15 pairs); LOL's own our485/ and eval15/ folders are accepted too.
    """

    def _scan(self, root, report):
        return layouts.scan_lol_v1(root, report)


CBSD68_SIGMAS = (15, 25, 50)


class Cbsd68(RestorationBuilder):
    """CBSD68 with frozen noisy inputs: for each sigma, the noisy image is `degradations.frozen_noisy(clean,
    name, sigma)` (seed from the file stem and sigma), generated once at build time."""

    name = "cbsd68"
    EXPECTED = {f"sigma{s}": layouts.CBSD68_COUNT for s in CBSD68_SIGMAS}
    DESCRIPTION = (
        "Colour BSD68 (CBSD68) with frozen noisy inputs at sigma 15/25/50: noise = clip(clean + "
        "N(0,1)*sigma, 0, 255) cast to uint8 (truncating), N from numpy PCG64 seeded by "
        'sha256("<stem>|sigma=<sigma>"). A checksum manifest is written next to the data.'
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    <manual_dir>/test/denoise/cbsd68/ with the 68 clean colour images. {layouts.GET_CBSD68}
    """

    def _scan(self, root, report):
        items = layouts.scan_cbsd68(root, report)
        gray, usable = [], []
        for it in items:
            try:
                img = load_image_file(it.clean)
            except ImageProblem as e:
                report.add(e.kind, "all", it.clean, e.message + " (left out)")
                continue
            if img.single_channel or is_grayscale_content(img.decode()):
                gray.append(it)
            else:
                usable.append(it)
        folder = os.path.dirname(items[0].clean) if items else str(root)
        if gray and len(gray) * 2 >= len(items):
            raise DataError(
                f"cbsd68: {len(gray)} of {len(items)} images in {folder} are grayscale. This is the grayscale BSD68 "
                f"(e.g. the DnCNN testsets/BSD68 folder the official README links), not the colour CBSD68 the "
                f"all-in-one benchmarks evaluate on. {layouts.GET_CBSD68}"
            )
        for it in gray:
            report.add(
                "refused",
                "all",
                it.clean,
                "grayscale image in a colour set: CBSD68 images are colour; "
                "replace it with the colour original (left out)",
            )
        return {f"sigma{s}": list(usable) for s in CBSD68_SIGMAS}

    def _make_example(self, split, item):
        sigma = int(split[len("sigma") :])
        clean = self._load(split, item.clean)
        if clean is None:
            return None
        if split == f"sigma{CBSD68_SIGMAS[0]}":
            self._stored(split, (item.clean, clean))
        noisy = degradations.frozen_noisy(clean.decode(), layouts.stem(os.path.basename(item.name)), sigma)
        return {"degraded": encode_png(noisy), "clean": clean.encoded, "name": item.name, "clean_name": item.clean_name}


BENCHMARK_BUILDERS = {b.name: b for b in (DenoiseTrain, Rain100L, ResideOts, SotsOutdoor, Gopro, LolV1, Cbsd68)}
