"""RESIDE: OTS (outdoor training set, Train/Dehaze/) and SOTS-outdoor (test, test/dehaze/); hazy images named
XXXX_beta_A pair with the clear image XXXX of their scene.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.builders.folders import (
    Item,
    find_required,
    find_sides,
    list_images,
    natural_key,
    pair,
    show,
)
from baryir_jax.data.images import drop_extension, stem
from baryir_jax.data.report import Report

OTS_COUNT = 72135
OTS_SCENES = 2061
OTS_PER_SCENE = 35  # 7 beta x 5 airlight values
_HAZY_RE = re.compile(r"^(\d+)_([0-9.]+)(?:_([0-9.]+))?$")


def _hazy_key(rel: str) -> str | None:
    m = _HAZY_RE.match(stem(rel))
    return m.group(1) if m else None


def _clear_key(rel: str) -> str | None:
    s = stem(rel)
    return s if s.isdigit() else None


def scan_reside_ots(root: Path, report: Report) -> dict[str, list[Item]]:
    d, _ = find_required(
        root,
        ["Train/Dehaze"],
        "reside_ots",
        "Put RESIDE OTS as Train/Dehaze/synthetic/part1..part4/XXXX_beta_A.jpg and Train/Dehaze/original/XXXX.jpg.",
    )
    syn, orig = find_sides(
        d,
        ["synthetic"],
        ["original"],
        "reside_ots",
        "synthetic/ (hazy images, in part1..part4/ as the official index lists them) and original/ "
        "(clear images XXXX.jpg)",
    )
    hazy = list_images(syn, report, "train", recursive=True)
    clear = list_images(orig, report, "train")
    # the clean partner of synthetic/partK/0025_0.8_0.04.jpg is original/0025.<any extension>
    cleans: dict[str, str] = {}
    for c in clear:
        k = _clear_key(c)
        if k is None:
            report.add("skipped", "train", show(orig / c), "not a clear image name (expected XXXX.jpg)")
        elif k in cleans:
            report.add("refused", "train", show(orig / c), f"ambiguous: same scene id as {cleans[k]}")
        else:
            cleans[k] = c
    items, used, per_scene = [], set(), collections.Counter()
    for h in hazy:
        k = _hazy_key(h)
        if k is None:
            report.add("skipped", "train", show(syn / h), "not a hazy image name (expected XXXX_beta_A.jpg)")
            continue
        per_scene[k] += 1
        if k not in cleans:
            report.add("unpaired", "train", show(syn / h), f"no clear image original/{k}.* for this hazy image")
            continue
        used.add(k)
        items.append(
            Item(
                key=drop_extension(h), name=h, clean=str(orig / cleans[k]), clean_name=cleans[k], degraded=str(syn / h)
            )
        )
    for k in sorted(set(cleans) - used, key=natural_key):
        report.add("unpaired", "train", show(orig / cleans[k]), "clear image without any hazy version in synthetic/")
    partial = sorted(k for k, n in per_scene.items() if n != OTS_PER_SCENE)
    if partial:
        report.warn(
            f"OTS subset: {len(partial)} of {len(per_scene)} scenes do not have the {OTS_PER_SCENE} hazy "
            f"versions (7 beta x 5 A) of the full RESIDE OTS (e.g. scene {partial[0]}: "
            f"{per_scene[partial[0]]}); the official index uses all {OTS_COUNT:,} images of {OTS_SCENES:,} "
            "scenes. A subset (e.g. a 40k/60k list or a partial download) changes the dehaze count and λ."
        )
    if any("/" not in h for h in hazy) and hazy:
        report.note("some hazy images lie directly in synthetic/ instead of synthetic/partK/; they are used")
    return {"train": items}


SOTS_COUNT = 500
SOTS_DIRS = ["test/dehaze", "SOTS/outdoor", "outdoor"]
SOTS_HINT = "Put SOTS-outdoor as test/dehaze/input/XXXX_beta_A.jpg (hazy) and test/dehaze/target/XXXX.png (clear)."


def scan_sots_outdoor(root: Path, report: Report) -> dict[str, list[Item]]:
    d, rel = find_required(root, SOTS_DIRS, "sots_outdoor", SOTS_HINT)
    inp, tgt = find_sides(
        d,
        ["input", "hazy"],
        ["target", "gt", "clear"],
        "sots_outdoor",
        "input/ (hazy) and target/ (clear) (RESIDE's own names hazy/ and gt/ are accepted)",
    )
    fi, ft = list_images(inp, report, "test"), list_images(tgt, report, "test")
    items = pair("test", report, inp, fi, tgt, ft, _hazy_key, _clear_key, lambda f: f"{_hazy_key(f)}.*")
    if len(items) == 492:
        report.warn(
            "SOTS-outdoor: 492 pairs found. This is the 492-image variant of SOTS-outdoor, not the 500-image "
            "set the all-in-one benchmarks report on; results on it are not comparable. Get the 500-pair "
            "SOTS outdoor set from the RESIDE (v0) site."
        )
    return {"test": items}


class ResideOts(RestorationBuilder):
    name = "reside_ots"
    EXPECTED = {"train": OTS_COUNT}
    DESCRIPTION = (
        "RESIDE OTS (outdoor training set): 72,135 hazy images of 2,061 scenes (7 beta x 5 A each), "
        "each paired with its clear image. The clear image is stored with every hazy version."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    <manual_dir>/Train/Dehaze/synthetic/part1..part4/XXXX_beta_A.jpg (hazy) and
    <manual_dir>/Train/Dehaze/original/XXXX.jpg (clear), as the official hazy_outside index lists them.
    """

    _scan = staticmethod(scan_reside_ots)


class SotsOutdoor(RestorationBuilder):
    name = "sots_outdoor"
    EXPECTED = {"test": SOTS_COUNT}
    DESCRIPTION = "SOTS-outdoor (RESIDE): 500 hazy/clear test pairs."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    <manual_dir>/test/dehaze/input/XXXX_beta_A.jpg and test/dehaze/target/XXXX.png (RESIDE's own
    SOTS/outdoor/hazy and gt are accepted too).
    """

    _scan = staticmethod(scan_sots_outdoor)
