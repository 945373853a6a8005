"""CBSD68 (colour BSD68, 68 test images) with frozen noisy inputs at σ 15/25/50, generated once at build time."""

from __future__ import annotations

import os
from pathlib import Path

from baryir_jax.data import degradations
from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.builders.folders import Item, find_required, list_images, show
from baryir_jax.data.images import ImageProblem, drop_extension, encode_png, is_grayscale_content, load_image_file, stem
from baryir_jax.data.report import DataError, Report

CBSD68_COUNT = 68
CBSD68_DIRS = [
    "test/denoise/cbsd68",
    "test/denoise/CBSD68",
    "test/denoise/bsd68",
    "CBSD68/original_png",
    "CBSD68/original",
    "CBSD68",
]
GET_CBSD68 = (
    "Get the colour CBSD68 (68 colour images of 481x321 or 321x481, e.g. the clean originals of "
    "the clausmichele/CBSD68-dataset repository, not its noisy* folders) and put them in "
    "test/denoise/cbsd68/."
)


def scan_cbsd68(root: Path, report: Report) -> list[Item]:
    d, rel = find_required(root, CBSD68_DIRS, "cbsd68", GET_CBSD68)
    if "noisy" in d.name.lower():
        raise DataError(f"cbsd68: {show(d)} holds noisy images; point to the clean originals. {GET_CBSD68}")
    files = list_images(d, report, "all")
    return [Item(key=drop_extension(f), name=f, clean=str(d / f), clean_name=f) for f in files]


CBSD68_SIGMAS = (15, 25, 50)


class Cbsd68(RestorationBuilder):
    """CBSD68 with frozen noisy inputs: for each sigma, the noisy image is `degradations.frozen_noisy(clean,
    name, sigma)` (seed from the file stem and sigma), generated once at build time."""

    name = "cbsd68"
    EXPECTED = {f"sigma{s}": CBSD68_COUNT for s in CBSD68_SIGMAS}
    DESCRIPTION = (
        "Colour BSD68 (CBSD68) with frozen noisy inputs at sigma 15/25/50: noise = clip(clean + "
        "N(0,1)*sigma, 0, 255) cast to uint8 (truncating), N from numpy PCG64 seeded by "
        'sha256("<stem>|sigma=<sigma>"). A checksum manifest is written next to the data.'
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    <manual_dir>/test/denoise/cbsd68/ with the 68 clean colour images. {GET_CBSD68}
    """

    def _scan(self, root, report):
        items = scan_cbsd68(root, report)
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
                f"all-in-one benchmarks evaluate on. {GET_CBSD68}"
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
        noisy = degradations.frozen_noisy(clean.decode(), stem(item.name), sigma)
        return {"degraded": encode_png(noisy), "clean": clean.encoded, "name": item.name, "clean_name": item.clean_name}
