"""Finding files in a `manual_dir` laid out as the official repository expects: the helpers every data set's
folder scan uses (each scan lives beside its builder, e.g. `rain100l.scan_rain100l`).

`manual_dir` is the official `data/` folder (the one holding `Train/` and `test/`); a folder holding `data/`
(the official repository root) is accepted too. Folder names are matched case-insensitively (the official
README writes `Test/` and `low_light/`, its code reads `test/` and `lowlight/`). Each scan returns
`{split: [Item, ...]}`, records every file it does not use in the `Report` (never a silent drop),
and raises `DataError` when a required folder is missing.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from baryir_jax.data.images import drop_extension, is_image_file
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
                report.add("skipped", split, show(folder / rel), "not an image file (by extension)")
    if not recursive:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        for d in subdirs:
            n = sum(1 for _, _, fns in os.walk(folder / d) for f in fns if is_image_file(f))
            if n:
                report.add(
                    "skipped",
                    split,
                    show(folder / d),
                    f"subfolder with {n} images: the official layout "
                    "expects the images directly in the folder; move them up one level",
                )
    return sorted(out)


def show(path: Path | str) -> str:
    """`path` as written in reports: POSIX separators."""
    return Path(path).as_posix()


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
    *,
    equal_names_first: bool = False,
) -> list[Item]:
    """Pair degraded and clean files by key. Unrecognised names are skipped, duplicates refused, files without
    a partner reported as unpaired; every case is listed in the report.

    With `equal_names_first`, files with the same name in both folders (case-insensitive) pair first, then the
    rest by key; a degraded file of the second kind whose stored key would repeat one of the first is refused."""
    if equal_names_first:
        return _pair_equal_names_first(
            split, report, deg_dir, deg_files, clean_dir, clean_files, deg_key, clean_key, partner_hint
        )

    def index(files, keyfn, folder, side):
        table: dict[str, list[str]] = collections.defaultdict(list)
        for f in files:
            k = keyfn(f)
            if k is None:
                report.add(
                    "skipped", split, show(folder / f), f"file name not recognised as a {side} image of this set"
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
                        show(folder / f),
                        f"ambiguous: {len(fs)} {side} files share the pairing key {k!r} ({first(fs)}); rename them",
                    )
            else:
                unique[k] = fs[0]
        return unique

    degs = index(deg_files, deg_key, deg_dir, "degraded")
    cleans = index(clean_files, clean_key, clean_dir, "clean")
    items = []
    for k in sorted(degs, key=natural_key):
        d = degs[k]
        if k in cleans:
            c = cleans[k]
            items.append(
                Item(key=drop_extension(d), name=d, clean=str(clean_dir / c), clean_name=c, degraded=str(deg_dir / d))
            )
        else:
            report.add(
                "unpaired",
                split,
                show(deg_dir / d),
                f"no clean partner (looked for {partner_hint(d)} in {show(clean_dir)})",
            )
    for k in sorted(set(cleans) - set(degs), key=natural_key):
        report.add("unpaired", split, show(clean_dir / cleans[k]), f"no degraded partner in {show(deg_dir)}")
    return items


def natural_key(s: str):
    """Sort key putting rain-2 before rain-10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def find_required(root: Path, candidates: list[str], what: str, hint: str) -> tuple[Path, str]:
    """The first of `candidates` under `root` (`find_first`), or `DataError` naming the folders looked for and
    `hint` (how to fix it)."""
    found = find_first(root, candidates)
    if found is None:
        raise DataError(f"{what}: none of the folders {', '.join(candidates)} exists under {show(root)}. {hint}")
    return found


def find_sides(folder: Path, degraded: list[str], clean: list[str], what: str, contents: str) -> tuple[Path, Path]:
    """The degraded and the clean subfolder of `folder` (the first of each candidate list), or `DataError`:
    "`what`: `folder` must contain `contents`; found [its subfolders]"."""
    deg, cl = find_first(folder, degraded), find_first(folder, clean)
    if deg is None or cl is None:
        found = sorted(p.name for p in folder.iterdir())
        raise DataError(f"{what}: {show(folder)} must contain {contents}; found {found}.")
    return deg[0], cl[0]


def same_name(rel: str) -> str:
    """Pairing key of sets whose degraded and clean files have the same name (GoPro, LOL)."""
    return rel.lower()


def _pair_equal_names_first(split, report, deg_dir, deg_files, clean_dir, clean_files, deg_key, clean_key, hint):
    cleans = {f.lower(): f for f in clean_files}
    same = [d for d in deg_files if d.lower() in cleans]
    if len({d.lower() for d in same}) != len(same):  # e.g. rain-1.png and RAIN-1.png: let `pair` refuse them
        same = [d for d in same if sum(x.lower() == d.lower() for x in same) == 1]
    items = [
        Item(
            key=drop_extension(d),
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
        hint,
    )
    keys = {it.key for it in items}
    for it in rest:
        if it.key in keys:
            report.add(
                "refused",
                split,
                show(deg_dir / it.name),
                f"ambiguous: its stored name {it.key!r} is already used by an equally named pair; rename it",
            )
        else:
            keys.add(it.key)
            items.append(it)
    return sorted(items, key=lambda it: natural_key(it.key))
