"""Finding the files of each data set in a `manual_dir` laid out as the official repository expects.

`manual_dir` is the official `data/` folder (the one holding `Train/` and `test/`); a folder holding `data/`
(the official repository root) is accepted too. Folder names are matched case-insensitively (the official
README writes `Test/` and `low_light/`, its code reads `test/` and `lowlight/`). Each `scan_*` function
returns `{split: [Item, ...]}`, records every file it does not use in the `Report` (never a silent drop),
and raises `DataError` when a required folder is missing.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from baryir_jax.data.images import is_image_file
from baryir_jax.data.report import DataError, Report, first

IGNORED_FILES = {"thumbs.db", "desktop.ini"}


@dataclasses.dataclass(frozen=True)
class Item:
    """One example to write: a clean image and, for paired data, its degraded partner."""

    key: str  # unique within its split
    name: str  # the degraded file's path relative to its folder (clean file for clean-only data)
    clean: str  # absolute path
    clean_name: str
    degraded: str | None = None  # absolute path, None for clean-only data


# ---------------------------------------------------------------------------------------------------------
# Folder helpers
# ---------------------------------------------------------------------------------------------------------
def resolve_root(manual_dir: str | os.PathLike) -> Path:
    root = Path(manual_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"manual_dir {root} does not exist or is not a folder. Pass the folder that holds the "
            "official layout (the official repository's `data/` folder, with `Train/` and `test/`)."
        )
    inner = find_dir(root, "data")
    if (
        inner is not None
        and (find_dir(inner, "Train") or find_dir(inner, "test"))
        and not (find_dir(root, "Train") or find_dir(root, "test"))
    ):
        return inner
    return root


def find_dir(root: Path, rel: str) -> Path | None:
    """`root/rel` with each component matched case-insensitively (exact match preferred)."""
    cur = root
    for part in [p for p in rel.split("/") if p]:
        exact = cur / part
        if exact.is_dir():
            cur = exact
            continue
        try:
            matches = [c for c in cur.iterdir() if c.is_dir() and c.name.lower() == part.lower()]
        except OSError:
            return None
        if not matches:
            return None
        cur = sorted(matches)[0]
    return cur


def find_first(root: Path, candidates: Iterable[str]) -> tuple[Path, str] | None:
    for rel in candidates:
        d = find_dir(root, rel)
        if d is not None:
            return d, rel
    return None


def list_images(folder: Path, report: Report, split: str, *, recursive: bool = False) -> list[str]:
    """Image files under `folder` as sorted relative POSIX paths; other files are reported as skipped."""
    out = []
    if recursive:
        walker = ((Path(dp), sorted(dns), sorted(fns)) for dp, dns, fns in os.walk(folder))
    else:
        walker = [(folder, [], sorted(p.name for p in folder.iterdir() if p.is_file()))]
    for dp, dns, fns in walker:
        dns[:] = [d for d in dns if not d.startswith(".")]
        for fn in fns:
            if fn.startswith(".") or fn.lower() in IGNORED_FILES:
                continue
            rel = (dp / fn).relative_to(folder).as_posix()
            if is_image_file(fn):
                out.append(rel)
            else:
                report.add("skipped", split, _show(folder / rel), "not an image file (by extension)")
    if not recursive:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        for d in subdirs:
            n = sum(1 for _, _, fns in os.walk(folder / d) for f in fns if is_image_file(f))
            if n:
                report.add(
                    "skipped",
                    split,
                    _show(folder / d),
                    f"subfolder with {n} images: the official layout "
                    "expects the images directly in the folder; move them up one level",
                )
    return sorted(out)


def _show(path: Path | str) -> str:
    return Path(path).as_posix()


def stem(rel: str) -> str:
    return rel.rsplit(".", 1)[0] if "." in os.path.basename(rel) else rel


def pair(
    split: str,
    report: Report,
    deg_dir: Path,
    deg_files: list[str],
    clean_dir: Path,
    clean_files: list[str],
    deg_key: Callable[[str], str | None],
    clean_key: Callable[[str], str | None],
    partner_hint: Callable[[str], str],
) -> list[Item]:
    """Pair degraded and clean files by key. Unrecognised names are skipped, duplicates refused, files without
    a partner reported as unpaired; every case is listed in the report."""

    def index(files, keyfn, folder, side):
        table: dict[str, list[str]] = collections.defaultdict(list)
        for f in files:
            k = keyfn(f)
            if k is None:
                report.add(
                    "skipped", split, _show(folder / f), f"file name not recognised as a {side} image of this set"
                )
            else:
                table[k].append(f)
        unique = {}
        for k, fs in table.items():
            if len(fs) > 1:
                for f in fs:
                    report.add(
                        "refused",
                        split,
                        _show(folder / f),
                        f"ambiguous: {len(fs)} {side} files share the pairing key {k!r} ({first(fs)}); rename them",
                    )
            else:
                unique[k] = fs[0]
        return unique

    degs = index(deg_files, deg_key, deg_dir, "degraded")
    cleans = index(clean_files, clean_key, clean_dir, "clean")
    items = []
    for k in sorted(degs, key=_natural):
        d = degs[k]
        if k in cleans:
            c = cleans[k]
            items.append(Item(key=stem(d), name=d, clean=str(clean_dir / c), clean_name=c, degraded=str(deg_dir / d)))
        else:
            report.add(
                "unpaired",
                split,
                _show(deg_dir / d),
                f"no clean partner (looked for {partner_hint(d)} in {_show(clean_dir)})",
            )
    for k in sorted(set(cleans) - set(degs), key=_natural):
        report.add("unpaired", split, _show(clean_dir / cleans[k]), f"no degraded partner in {_show(deg_dir)}")
    return items


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _need(found, what: str, root: Path, candidates: list[str], hint: str) -> tuple[Path, str]:
    if found is None:
        raise DataError(f"{what}: none of the folders {', '.join(candidates)} exists under {_show(root)}. {hint}")
    return found


# ---------------------------------------------------------------------------------------------------------
# Denoising training images: BSD400 + WED
# ---------------------------------------------------------------------------------------------------------
BSD400_COUNT = 400
WED_COUNT = 4744
_BSD_RE = re.compile(r"^(a?)(\d{3,6})\.jpe?g$", re.IGNORECASE)
_WED_RE = re.compile(r"^(\d{5})\.bmp$", re.IGNORECASE)
_DNCNN_RE = re.compile(r"^test_\d{3}\.png$", re.IGNORECASE)
DENOISE_DIRS = ["Train/Denoise"]


def scan_denoise_train(root: Path, report: Report) -> dict[str, list[Item]]:
    folder, rel = _need(
        find_first(root, DENOISE_DIRS),
        "denoise_train",
        root,
        DENOISE_DIRS,
        "Put the BSD400 (aNNNNNN.jpg or NNNNNN.jpg) and WED (NNNNN.bmp) images in Train/Denoise/.",
    )
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
                    _show(folder / f),
                    f"duplicate of {bsd[canonical]} (BSD400 image "
                    f"{m_b.group(2)} present with and without the a prefix); the first one is used",
                )
                continue
            bsd[canonical] = f
        elif m_w:
            if m_w.group(1) in wed:
                report.add("refused", "train", _show(folder / f), f"duplicate WED name of {wed[m_w.group(1)]}")
                continue
            wed[m_w.group(1)] = f
        elif _DNCNN_RE.match(base):
            report.add(
                "skipped",
                "train",
                _show(folder / f),
                "looks like DnCNN's grayscale Train400 crop (test_NNN.png), which is not the BSD400 set of the "
                "official index: use the colour BSD400 images (aNNNNNN.jpg / NNNNNN.jpg)",
            )
        else:
            report.add(
                "skipped",
                "train",
                _show(folder / f),
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
            report.add("missing", "train", _show(folder / name), "WED image listed in the official index, not found")
    if not wed:
        report.warn(f"WED: none of the {WED_COUNT} WED images (NNNNN.bmp) found in {_show(folder)}.")
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


# ---------------------------------------------------------------------------------------------------------
# Rain100L
# ---------------------------------------------------------------------------------------------------------
RAIN_TRAIN_COUNT = 200
_RAIN_NUM = re.compile(r"^(no)?rain[-_]?0*(\d+)$", re.IGNORECASE)


def _rain_key(expect_no: bool):
    def key(rel: str) -> str | None:
        s = stem(os.path.basename(rel))
        m = _RAIN_NUM.match(s)
        if m:
            return m.group(2) if bool(m.group(1)) == expect_no else None
        return s.lower()  # identical names in input/ and target/ also pair

    return key


def _norain_hint(rel: str) -> str:
    m = _RAIN_NUM.match(stem(os.path.basename(rel)))
    return f"norain-{m.group(2)}.*" if m else stem(rel) + ".*"


def pair_equal_names_first(
    split: str,
    report: Report,
    deg_dir: Path,
    deg_files: list[str],
    clean_dir: Path,
    clean_files: list[str],
    deg_key: Callable[[str], str | None],
    clean_key: Callable[[str], str | None],
    partner_hint: Callable[[str], str],
) -> list[Item]:
    """Pair files with the same name in both folders (case-insensitive), then the rest by key (`pair`). A
    degraded file of the second kind whose stored key would repeat one of the first kind is refused."""
    cleans = {f.lower(): f for f in clean_files}
    same = [d for d in deg_files if d.lower() in cleans]
    if len({d.lower() for d in same}) != len(same):  # e.g. rain-1.png and RAIN-1.png: let `pair` refuse them
        same = [d for d in same if sum(x.lower() == d.lower() for x in same) == 1]
    items = [
        Item(
            key=stem(d),
            name=d,
            clean=str(clean_dir / cleans[d.lower()]),
            clean_name=cleans[d.lower()],
            degraded=str(deg_dir / d),
        )
        for d in same
    ]
    used_deg, used_clean = set(same), {cleans[d.lower()] for d in same}
    rest = pair(
        split,
        report,
        deg_dir,
        [f for f in deg_files if f not in used_deg],
        clean_dir,
        [f for f in clean_files if f not in used_clean],
        deg_key,
        clean_key,
        partner_hint,
    )
    keys = {it.key for it in items}
    for it in rest:
        if it.key in keys:
            report.add(
                "refused",
                split,
                _show(deg_dir / it.name),
                f"ambiguous: its stored name {it.key!r} is already used by an equally named pair; rename it",
            )
        else:
            keys.add(it.key)
            items.append(it)
    return sorted(items, key=lambda it: _natural(it.key))


def scan_rain100l(root: Path, report: Report) -> dict[str, list[Item]]:
    splits = {}
    tr = find_first(root, ["Train/Derain"])
    te = find_first(root, ["test/derain/Rain100L", "test/Rain100L", "Rain100L"])
    if tr is None and te is None:
        raise DataError(
            f"rain100l: neither Train/Derain/ (training pairs rainy/rain-N.png + gt/norain-N.png) nor "
            f"test/derain/Rain100L/ (test pairs input/ + target/) exists under {_show(root)}."
        )
    if tr is not None:
        d = tr[0]
        rainy, gt = find_dir(d, "rainy"), find_dir(d, "gt")
        if rainy is None or gt is None:
            raise DataError(
                f"rain100l train: {_show(d)} must contain rainy/ (rain-N.png) and gt/ (norain-N.png); "
                f"found {sorted(p.name for p in d.iterdir())}."
            )
        rf, gf = list_images(rainy, report, "train"), list_images(gt, report, "train")
        splits["train"] = pair_equal_names_first(
            "train", report, rainy, rf, gt, gf, _rain_key(False), _rain_key(True), _norain_hint
        )
        present = {_RAIN_NUM.match(stem(f)).group(2) for f in rf if _RAIN_NUM.match(stem(f))}
        for n in range(1, RAIN_TRAIN_COUNT + 1):
            if str(n) not in present:
                report.add(
                    "missing",
                    "train",
                    _show(rainy / f"rain-{n}.png"),
                    "listed in the official rainTrain index, not found",
                )
    if te is not None:
        d = te[0]
        inp = find_first(d, ["input", "rainy", "rain"])
        tgt = find_first(d, ["target", "gt", "norain"])
        if inp is None or tgt is None:
            raise DataError(
                f"rain100l test: {_show(d)} must contain input/ and target/ (the official tester's "
                f"--degset/--tarset); found {sorted(p.name for p in d.iterdir())}."
            )
        fi, ft = list_images(inp[0], report, "test"), list_images(tgt[0], report, "test")
        splits["test"] = pair_equal_names_first(
            "test", report, inp[0], fi, tgt[0], ft, _rain_key(False), _rain_key(True), _norain_hint
        )
    return splits


# ---------------------------------------------------------------------------------------------------------
# RESIDE OTS (train) and SOTS-outdoor (test)
# ---------------------------------------------------------------------------------------------------------
OTS_COUNT = 72135
OTS_SCENES = 2061
OTS_PER_SCENE = 35  # 7 beta x 5 airlight values
_HAZY_RE = re.compile(r"^(\d+)_([0-9.]+)(?:_([0-9.]+))?$")


def _hazy_key(rel: str) -> str | None:
    m = _HAZY_RE.match(stem(os.path.basename(rel)))
    return m.group(1) if m else None


def _clear_key(rel: str) -> str | None:
    s = stem(os.path.basename(rel))
    return s if s.isdigit() else None


def scan_reside_ots(root: Path, report: Report) -> dict[str, list[Item]]:
    d, _ = _need(
        find_first(root, ["Train/Dehaze"]),
        "reside_ots",
        root,
        ["Train/Dehaze"],
        "Put RESIDE OTS as Train/Dehaze/synthetic/part1..part4/XXXX_beta_A.jpg and Train/Dehaze/original/XXXX.jpg.",
    )
    syn, orig = find_dir(d, "synthetic"), find_dir(d, "original")
    if syn is None or orig is None:
        raise DataError(
            f"reside_ots: {_show(d)} must contain synthetic/ (hazy images, in part1..part4/ as the "
            f"official index lists them) and original/ (clear images XXXX.jpg); found "
            f"{sorted(p.name for p in d.iterdir())}."
        )
    hazy = list_images(syn, report, "train", recursive=True)
    clear = list_images(orig, report, "train")
    # the clean partner of synthetic/partK/0025_0.8_0.04.jpg is original/0025.<any extension>
    cleans: dict[str, str] = {}
    for c in clear:
        k = _clear_key(c)
        if k is None:
            report.add("skipped", "train", _show(orig / c), "not a clear image name (expected XXXX.jpg)")
        elif k in cleans:
            report.add("refused", "train", _show(orig / c), f"ambiguous: same scene id as {cleans[k]}")
        else:
            cleans[k] = c
    items, used, per_scene = [], set(), collections.Counter()
    for h in hazy:
        k = _hazy_key(h)
        if k is None:
            report.add("skipped", "train", _show(syn / h), "not a hazy image name (expected XXXX_beta_A.jpg)")
            continue
        per_scene[k] += 1
        if k not in cleans:
            report.add("unpaired", "train", _show(syn / h), f"no clear image original/{k}.* for this hazy image")
            continue
        used.add(k)
        items.append(
            Item(key=stem(h), name=h, clean=str(orig / cleans[k]), clean_name=cleans[k], degraded=str(syn / h))
        )
    for k in sorted(set(cleans) - used, key=_natural):
        report.add("unpaired", "train", _show(orig / cleans[k]), "clear image without any hazy version in synthetic/")
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


def scan_sots_outdoor(root: Path, report: Report) -> dict[str, list[Item]]:
    d, rel = _need(
        find_first(root, SOTS_DIRS),
        "sots_outdoor",
        root,
        SOTS_DIRS,
        "Put SOTS-outdoor as test/dehaze/input/XXXX_beta_A.jpg (hazy) and test/dehaze/target/XXXX.png (clear).",
    )
    inp = find_first(d, ["input", "hazy"])
    tgt = find_first(d, ["target", "gt", "clear"])
    if inp is None or tgt is None:
        raise DataError(
            f"sots_outdoor: {_show(d)} must contain input/ (hazy) and target/ (clear) (RESIDE's own "
            f"names hazy/ and gt/ are accepted); found {sorted(p.name for p in d.iterdir())}."
        )
    fi, ft = list_images(inp[0], report, "test"), list_images(tgt[0], report, "test")
    items = pair("test", report, inp[0], fi, tgt[0], ft, _hazy_key, _clear_key, lambda f: f"{_hazy_key(f)}.*")
    if len(items) == 492:
        report.warn(
            "SOTS-outdoor: 492 pairs found. This is the 492-image variant of SOTS-outdoor, not the 500-image "
            "set the all-in-one benchmarks report on; results on it are not comparable. Get the 500-pair "
            "SOTS outdoor set from the RESIDE (v0) site."
        )
    return {"test": items}


# ---------------------------------------------------------------------------------------------------------
# GoPro
# ---------------------------------------------------------------------------------------------------------
GOPRO_COUNTS = {"train": 2103, "test": 1111}


def _same_name(rel: str) -> str:
    return rel.lower()


def _scan_gopro_original(split: str, d: Path, report: Report) -> list[Item]:
    """GOPRO_Large layout: <split>/<SEQUENCE>/{blur,sharp}/NNNNNN.png (blur_gamma is not used)."""
    items = []
    for seq in sorted(p for p in d.iterdir() if p.is_dir()):
        blur, sharp = find_dir(seq, "blur"), find_dir(seq, "sharp")
        if blur is None or sharp is None:
            report.add("skipped", split, _show(seq), "sequence folder without blur/ and sharp/")
            continue
        fb, fs = list_images(blur, report, split), list_images(sharp, report, split)
        for it in pair(split, report, blur, fb, sharp, fs, _same_name, _same_name, lambda f: f):
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
                    f"gopro {split}: {_show(f[0])} has {flat_dirs[split][0]}/ but no {flat_dirs[split][1]}/."
                )
            fb, fs = list_images(deg_dir, report, split), list_images(cl_dir, report, split)
            splits[split] = pair(split, report, deg_dir, fb, cl_dir, fs, _same_name, _same_name, lambda x: x)
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
            f"(GOPRO_Large/train|test/<sequence>/{{blur,sharp}}/) under {_show(root)}."
        )
    return splits


# ---------------------------------------------------------------------------------------------------------
# LOL-v1
# ---------------------------------------------------------------------------------------------------------
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
            raise DataError(f"lol_v1 {split}: {_show(f[0])} must contain low/ and high/ with the same file names.")
        fl, fh = list_images(low, report, split), list_images(high, report, split)
        splits[split] = pair(split, report, low, fl, high, fh, _same_name, _same_name, lambda x: x)
    if not splits:
        raise DataError(
            f"lol_v1: found neither Train/lowlight/{{low,high}}/ (485 training pairs) nor "
            f"test/lowlight/eval15/{{low,high}}/ (15 pairs) under {_show(root)} (LOL's own our485/ and "
            "eval15/ are accepted too)."
        )
    return splits


# ---------------------------------------------------------------------------------------------------------
# CBSD68 (colour only)
# ---------------------------------------------------------------------------------------------------------
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
    d, rel = _need(find_first(root, CBSD68_DIRS), "cbsd68", root, CBSD68_DIRS, GET_CBSD68)
    if "noisy" in d.name.lower():
        raise DataError(f"cbsd68: {_show(d)} holds noisy images; point to the clean originals. {GET_CBSD68}")
    files = list_images(d, report, "all")
    return [Item(key=stem(f), name=f, clean=str(d / f), clean_name=f) for f in files]
