"""GoPro deblurring: blur/sharp pairs in the official layout (Train/Deblur/, test/deblur/) or GOPRO_Large/."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.builders.folders import Item, find_dir, find_first, list_images, pair, same_name, show
from baryir_jax.data.report import DataError, Report

GOPRO_COUNTS = {"train": 2103, "test": 1111}


def _scan_gopro_original(split: str, d: Path, report: Report) -> list[Item]:
    """GOPRO_Large layout: <split>/<SEQUENCE>/{blur,sharp}/NNNNNN.png (blur_gamma is not used)."""
    items = []
    for seq in sorted(p for p in d.iterdir() if p.is_dir()):
        blur, sharp = find_dir(seq, "blur"), find_dir(seq, "sharp")
        if blur is None or sharp is None:
            report.add("skipped", split, show(seq), "sequence folder without blur/ and sharp/")
            continue
        fb, fs = list_images(blur, report, split), list_images(sharp, report, split)
        for it in pair(split, report, blur, fb, sharp, fs, same_name, same_name, lambda f: f):
            items.append(
                dataclasses.replace(
                    it,
                    key=f"{seq.name}/{it.key}",
                    name=f"{seq.name}/{it.name}",
                    clean_name=f"{seq.name}/{it.clean_name}",
                )
            )
    return items


def scan_gopro(root: Path, report: Report) -> dict[str, list[Item]]:
    splits = {}
    flat = {"train": ["Train/Deblur"], "test": ["test/deblur"]}
    flat_dirs = {"train": ("blur", "sharp"), "test": ("input", "target")}
    for split in ("train", "test"):
        f = find_first(root, flat[split])
        orig = find_first(root, [f"GOPRO_Large/{split}", f"GoPro/{split}", split])
        if orig is not None and not any(p.is_dir() and p.name.upper().startswith("GOPR") for p in orig[0].iterdir()):
            orig = None  # not a GOPRO_Large split folder (e.g. the official test/ folder)
        if f is not None and find_dir(f[0], flat_dirs[split][0]) is not None:
            deg_dir, cl_dir = find_dir(f[0], flat_dirs[split][0]), find_dir(f[0], flat_dirs[split][1])
            if cl_dir is None:
                raise DataError(
                    f"gopro {split}: {show(f[0])} has {flat_dirs[split][0]}/ but no {flat_dirs[split][1]}/."
                )
            fb, fs = list_images(deg_dir, report, split), list_images(cl_dir, report, split)
            splits[split] = pair(split, report, deg_dir, fb, cl_dir, fs, same_name, same_name, lambda x: x)
        elif orig is not None:
            report.note(
                f"gopro {split}: original GOPRO_Large layout ({orig[1]}/<sequence>/blur, sharp); names are "
                "<sequence>/<frame>; blur_gamma/ is not used (the benchmarks use blur/)"
            )
            splits[split] = _scan_gopro_original(split, orig[0], report)
    if not splits:
        raise DataError(
            f"gopro: found neither the official layout (Train/Deblur/{{blur,sharp}}/ and "
            f"test/deblur/{{input,target}}/, same file names on both sides) nor the GOPRO_Large layout "
            f"(GOPRO_Large/train|test/<sequence>/{{blur,sharp}}/) under {show(root)}."
        )
    return splits


class Gopro(RestorationBuilder):
    name = "gopro"
    EXPECTED = dict(GOPRO_COUNTS)
    DESCRIPTION = "GoPro deblurring: 2,103 training and 1,111 test pairs (blur / sharp)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Official layout: <manual_dir>/Train/Deblur/blur/ and sharp/ (same file names), <manual_dir>/test/deblur/input/
    and target/. The original GOPRO_Large/train|test/<sequence>/blur|sharp/ layout is accepted too.
    """

    _scan = staticmethod(scan_gopro)
