"""Denoising training images: BSD400 + WED (clean only; noise is added on the fly in training)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.builders.folders import Item, find_required, list_images, show
from baryir_jax.data.report import Report

BSD400_COUNT = 400
WED_COUNT = 4744
_BSD_RE = re.compile(r"^(a?)(\d{3,6})\.jpe?g$", re.IGNORECASE)
_WED_RE = re.compile(r"^(\d{5})\.bmp$", re.IGNORECASE)
_DNCNN_RE = re.compile(r"^test_\d{3}\.png$", re.IGNORECASE)
DENOISE_DIRS = ["Train/Denoise"]
DENOISE_HINT = "Put the BSD400 (aNNNNNN.jpg or NNNNNN.jpg) and WED (NNNNN.bmp) images in Train/Denoise/."


def scan_denoise_train(root: Path, report: Report) -> dict[str, list[Item]]:
    folder, rel = find_required(root, DENOISE_DIRS, "denoise_train", DENOISE_HINT)
    files = list_images(folder, report, "train", recursive=True)
    if any("/" in f for f in files):
        report.note(
            f"images found in subfolders of {rel}/ are used (the official loader lists only the folder "
            "itself and would miss them)"
        )
    bsd, wed, items = {}, {}, []
    unprefixed = []
    for f in files:
        base = os.path.basename(f)
        m_b, m_w = _BSD_RE.match(base), _WED_RE.match(base)
        if m_b:
            canonical = "a" + m_b.group(2)
            if not m_b.group(1):
                unprefixed.append(f)
            if canonical in bsd:
                report.add(
                    "refused",
                    "train",
                    show(folder / f),
                    f"duplicate of {bsd[canonical]} (BSD400 image "
                    f"{m_b.group(2)} present with and without the a prefix); the first one is used",
                )
                continue
            bsd[canonical] = f
        elif m_w:
            if m_w.group(1) in wed:
                report.add("refused", "train", show(folder / f), f"duplicate WED name of {wed[m_w.group(1)]}")
                continue
            wed[m_w.group(1)] = f
        elif _DNCNN_RE.match(base):
            report.add(
                "skipped",
                "train",
                show(folder / f),
                "looks like DnCNN's grayscale Train400 crop (test_NNN.png), which is not the BSD400 set of the "
                "official index: use the colour BSD400 images (aNNNNNN.jpg / NNNNNN.jpg)",
            )
        else:
            report.add(
                "skipped",
                "train",
                show(folder / f),
                "name is neither BSD400 (aNNNNNN.jpg) nor WED (NNNNN.bmp) as listed in the official denoise "
                "index; the official loader ignores it too",
            )
    if unprefixed:
        report.note(
            f"BSD400: {len(unprefixed)} images are named without the `a` prefix of the official index "
            f"(e.g. {os.path.basename(unprefixed[0])} for a{os.path.basename(unprefixed[0])}); the official "
            "loader silently drops them, here they are recognised and used"
        )
    missing_wed = [f"{i:05d}.bmp" for i in range(1, WED_COUNT + 1) if f"{i:05d}" not in wed]
    if wed and missing_wed:
        for name in missing_wed:
            report.add("missing", "train", show(folder / name), "WED image listed in the official index, not found")
    if not wed:
        report.warn(f"WED: none of the {WED_COUNT} WED images (NNNNN.bmp) found in {show(folder)}.")
    if not bsd:
        report.warn(
            f"BSD400: none of the {BSD400_COUNT} BSD400 images (aNNNNNN.jpg or NNNNNN.jpg) found; training "
            f"uses WED only, as the official runs effectively did (the index's `a` prefix did not match the "
            "usual download); λ changes (denoise count 4,744×multiplier instead of 5,144×multiplier)."
        )
    elif len(bsd) != BSD400_COUNT:
        report.warn(f"BSD400: {len(bsd)} images found, the set has {BSD400_COUNT}.")
    for canonical, f in sorted(bsd.items()):
        base = os.path.basename(f)
        items.append(Item(key=canonical, name=base, clean=str(folder / f), clean_name=base))
    for num, f in sorted(wed.items()):
        base = os.path.basename(f)
        items.append(Item(key=num, name=base, clean=str(folder / f), clean_name=base))
    return {"train": items}


class DenoiseTrain(RestorationBuilder):
    name = "denoise_train"
    PAIRED = False
    EXPECTED = {"train": BSD400_COUNT + WED_COUNT}
    DESCRIPTION = (
        "Clean training images for denoising: BSD400 (400 colour jpg) + Waterloo Exploration (4,744 "
        "bmp), named as in the official index. Noise is added on the fly in training."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put the BSD400 and WED images in <manual_dir>/Train/Denoise/ (flat, as the official loader expects;
    subfolders are accepted here). BSD400 files may be named a247012.jpg (official index) or 247012.jpg
    (usual download); WED files are 00001.bmp ... 04744.bmp.
    """

    _scan = staticmethod(scan_denoise_train)
