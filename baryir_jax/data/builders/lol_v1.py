"""LOL-v1 low-light enhancement: low/high pairs (Train/lowlight/, test/lowlight/eval15/, or LOL's own folders)."""

from __future__ import annotations

from pathlib import Path

from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.builders.folders import Item, find_dir, find_first, list_images, pair, same_name, show
from baryir_jax.data.report import DataError, Report

LOL_COUNTS = {"train": 485, "eval15": 15}


def scan_lol_v1(root: Path, report: Report) -> dict[str, list[Item]]:
    splits = {}
    cands = {
        "train": ["Train/lowlight", "Train/low_light", "our485", "LOLdataset/our485"],
        "eval15": ["test/lowlight/eval15", "eval15", "LOLdataset/eval15"],
    }
    for split, cs in cands.items():
        f = find_first(root, cs)
        if f is None:
            continue
        low, high = find_dir(f[0], "low"), find_dir(f[0], "high")
        if low is None or high is None:
            raise DataError(f"lol_v1 {split}: {show(f[0])} must contain low/ and high/ with the same file names.")
        fl, fh = list_images(low, report, split), list_images(high, report, split)
        splits[split] = pair(split, report, low, fl, high, fh, same_name, same_name, lambda x: x)
    if not splits:
        raise DataError(
            f"lol_v1: found neither Train/lowlight/{{low,high}}/ (485 training pairs) nor "
            f"test/lowlight/eval15/{{low,high}}/ (15 pairs) under {show(root)} (LOL's own our485/ and "
            "eval15/ are accepted too)."
        )
    return splits


class LolV1(RestorationBuilder):
    name = "lol_v1"
    EXPECTED = dict(LOL_COUNTS)
    DESCRIPTION = "LOL-v1 low-light enhancement: 485 training pairs and the 15 eval15 pairs (low / high)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    <manual_dir>/Train/lowlight/low/ and high/ (485 pairs), <manual_dir>/test/lowlight/eval15/low/ and high/
    (15 pairs); LOL's own our485/ and eval15/ folders are accepted too.
    """

    _scan = staticmethod(scan_lol_v1)
