"""Rain100L: 200 training pairs (Train/Derain/rainy/rain-N + gt/norain-N) and 100 test pairs (test/derain/Rain100L/)."""

from __future__ import annotations

import re
from pathlib import Path

from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.builders.folders import Item, find_first, find_sides, list_images, pair, show
from baryir_jax.data.images import drop_extension, stem
from baryir_jax.data.report import DataError, Report

RAIN_TRAIN_COUNT = 200
_RAIN_NUM = re.compile(r"^(no)?rain[-_]?0*(\d+)$", re.IGNORECASE)


def _rain_key(expect_no: bool):
    def key(rel: str) -> str | None:
        s = stem(rel)
        m = _RAIN_NUM.match(s)
        if m:
            return m.group(2) if bool(m.group(1)) == expect_no else None
        return s.lower()  # identical names in input/ and target/ also pair

    return key


_RAIN_KEYS = (_rain_key(False), _rain_key(True))  # degraded (rain-N), clean (norain-N)


def _norain_hint(rel: str) -> str:
    m = _RAIN_NUM.match(stem(rel))
    return f"norain-{m.group(2)}.*" if m else drop_extension(rel) + ".*"


def scan_rain100l(root: Path, report: Report) -> dict[str, list[Item]]:
    splits = {}
    tr = find_first(root, ["Train/Derain"])
    te = find_first(root, ["test/derain/Rain100L", "test/Rain100L", "Rain100L"])
    if tr is None and te is None:
        raise DataError(
            f"rain100l: neither Train/Derain/ (training pairs rainy/rain-N.png + gt/norain-N.png) nor "
            f"test/derain/Rain100L/ (test pairs input/ + target/) exists under {show(root)}."
        )
    if tr is not None:
        d = tr[0]
        rainy, gt = find_sides(d, ["rainy"], ["gt"], "rain100l train", "rainy/ (rain-N.png) and gt/ (norain-N.png)")
        rf, gf = list_images(rainy, report, "train"), list_images(gt, report, "train")
        splits["train"] = pair("train", report, rainy, rf, gt, gf, *_RAIN_KEYS, _norain_hint, equal_names_first=True)
        present = {_RAIN_NUM.match(stem(f)).group(2) for f in rf if _RAIN_NUM.match(stem(f))}
        for n in range(1, RAIN_TRAIN_COUNT + 1):
            if str(n) not in present:
                report.add(
                    "missing",
                    "train",
                    show(rainy / f"rain-{n}.png"),
                    "listed in the official rainTrain index, not found",
                )
    if te is not None:
        d = te[0]
        inp, tgt = find_sides(
            d,
            ["input", "rainy", "rain"],
            ["target", "gt", "norain"],
            "rain100l test",
            "input/ and target/ (the official tester's --degset/--tarset)",
        )
        fi, ft = list_images(inp, report, "test"), list_images(tgt, report, "test")
        splits["test"] = pair("test", report, inp, fi, tgt, ft, *_RAIN_KEYS, _norain_hint, equal_names_first=True)
    return splits


class Rain100L(RestorationBuilder):
    name = "rain100l"
    EXPECTED = {"train": RAIN_TRAIN_COUNT, "test": 100}
    DESCRIPTION = "Rain100L: 200 training pairs (rain-N / norain-N) and 100 test pairs."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Training pairs: <manual_dir>/Train/Derain/rainy/rain-N.png and Train/Derain/gt/norain-N.png (N = 1..200).
    Test pairs: <manual_dir>/test/derain/Rain100L/input/ and target/ (rain-N <-> norain-N, or equal names).
    """

    _scan = staticmethod(scan_rain100l)
