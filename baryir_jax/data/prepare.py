"""`baryir-prepare`: build one data set into `data_dir` (TFDS array_record) and print its validation summary.

    baryir-prepare --dataset rain100l --manual_dir path/to/data --data_dir ~/baryir_data
    baryir-prepare --dataset embedded --data_dir ~/baryir_data              # no download, no manual_dir
    baryir-prepare --dataset paired_folder --name my_jpeg --manual_dir my_pairs --data_dir ~/baryir_data
    baryir-prepare --dataset cbsd68 --data_dir ~/baryir_data --verify       # re-check the frozen noisy inputs

Exit status: 0 when written (warnings may be printed), 1 when the input was refused (nothing written), 2 when
`--verify` found differences.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from baryir_jax import cli
from baryir_jax.data.report import DataError, Report

REPORT_NAME = "prepare_report.json"


@dataclasses.dataclass
class PrepareResult:
    path: Path  # the prepared data set's folder (<data_dir>/<name>[/<config>]/<version>)
    report: Report | None  # None when the data set was already prepared
    manifest: Path | None = None
    fingerprint: str | None = None


def prepare(
    dataset: str,
    data_dir: str | Path,
    manual_dir: str | Path | None = None,
    *,
    name: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    out: Callable[[str], None] = print,
) -> PrepareResult:
    """Scan, validate and write one data set. Raises `DataError` (nothing written, and no folder this call
    created left behind) when the input is refused or `data_dir` is not a folder."""
    from baryir_jax.data.builders import DATASET_NAMES

    if dataset not in DATASET_NAMES:
        raise DataError(f"unknown --dataset {dataset!r}; choose one of: {', '.join(DATASET_NAMES)}.")
    if name is not None and dataset != "paired_folder":
        raise DataError("--name is only for --dataset paired_folder.")
    full = f"paired_folder/{name or 'default'}" if dataset == "paired_folder" else dataset
    check_data_dir(data_dir)
    created = _not_yet_there(Path(data_dir), full)
    try:
        return _prepare(full, dataset, data_dir, manual_dir, overwrite, progress, out)
    except BaseException:
        _remove_created(created)  # a refused or failed build leaves no folder behind
        raise


def check_data_dir(data_dir: str | Path) -> None:
    """`DataError` when `data_dir` (or a folder above it) exists as something other than a folder."""
    p = Path(data_dir).expanduser().absolute()
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                where = "" if q == p else f": {q} is a file"
                raise DataError(f"--data_dir {data_dir} is not a folder{where}; give the folder for the prepared sets.")
            return


def _not_yet_there(data_dir: Path, full: str) -> list[Path]:
    """The folders a build of `full` may create under (and including) `data_dir` that do not exist yet, innermost
    first: what a refused build removes again."""
    name, _, config = full.partition("/")
    data_dir = data_dir.expanduser().absolute()
    candidates = [data_dir / "downloads" / "extracted", data_dir / "downloads", data_dir / name / ".config"]
    if config:
        candidates.append(data_dir / name / config)
    candidates += [data_dir / name, data_dir, *data_dir.parents]
    return [p for p in candidates if not (p.exists() or p.is_symlink())]


def _remove_created(created: list[Path]) -> None:
    for p in created:  # innermost first; each held nothing before this build
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _prepare(full, dataset, data_dir, manual_dir, overwrite, progress, out) -> PrepareResult:
    import tensorflow_datasets as tfds

    from baryir_jax.data import frozen, sources

    builder = sources.get_builder(data_dir, full, progress=progress)
    if sources.is_prepared(builder):
        if not overwrite:
            out(f"{full} is already prepared in {builder.data_dir}; pass --overwrite to rebuild it.")
            stored = Path(builder.data_dir) / REPORT_NAME
            if stored.exists():
                out(f"(validation summary of that build: {stored})")
            return PrepareResult(Path(builder.data_dir), None)
        shutil.rmtree(builder.data_dir)
        builder = sources.get_builder(data_dir, full, progress=progress)
    builder.scan(manual_dir)  # DataError here: nothing written
    tfds.disable_progress_bar()  # ours (per split, in images) replaces TFDS's
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
        )
    except Exception as e:  # noqa: BLE001 - only the "empty split" case is ours to explain
        if "No examples were yielded" not in str(e):
            raise
        _remove_incomplete(builder)
        report = builder.finish_report()
        report.failed = True
        m = re.search(r'split "([^"]+)"', str(e))
        split = m.group(1) if m else "?"
        raise DataError(
            f"{full}: none of the {report.planned.get(split, 0)} examples of split {split!r} is usable "
            f"(see the problems listed below); nothing was written.\n" + report.render()
        ) from None
    report = builder.finish_report()
    path = Path(builder.data_dir)
    (path / REPORT_NAME).write_text(report.dumps() + "\n")
    result = PrepareResult(path, report)
    out(report.render())
    if dataset in frozen.FROZEN_SPLITS:
        result.manifest = frozen.write_manifest(data_dir, full)
        result.fingerprint = json.loads(result.manifest.read_text())["fingerprint"]
        out(f"frozen noisy inputs: manifest {result.manifest} (fingerprint {result.fingerprint[:16]}...)")
    out(f"written to {path}")
    return result


def _remove_incomplete(builder) -> None:
    version_dir = Path(builder.data_dir)
    parent = version_dir.parent
    if parent.is_dir():
        for p in parent.iterdir():
            if p.name.startswith("incomplete.") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
    if version_dir.is_dir() and not (version_dir / "dataset_info.json").exists():
        shutil.rmtree(version_dir, ignore_errors=True)


PROG = "baryir-prepare"


def main(argv: list[str] | None = None) -> int:
    """``baryir-prepare`` with ``argv``: its exit status (:mod:`baryir_jax.errors`; 2 also = --verify found
    inputs that differ from their manifest)."""
    return cli.run_main(PROG, _main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    from baryir_jax.data.builders import DATASET_NAMES

    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    parser.add_argument("--data_dir", required=True, help="where the prepared data sets live")
    parser.add_argument(
        "--manual_dir",
        default=None,
        help="the official data/ folder (or your pairs folder for paired_folder); not for embedded",
    )
    parser.add_argument("--name", default=None, help="paired_folder only: the name of this source (default: default)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild when already prepared")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="cbsd68/embedded: re-check the prepared frozen noisy inputs against their manifest",
    )
    args = parser.parse_args(argv)
    if args.verify:
        from baryir_jax.data import frozen

        problems = frozen.verify_frozen_inputs(args.data_dir, args.dataset)
        for p in problems:
            print("MISMATCH", p)
        manifest = frozen.read_manifest(args.data_dir, args.dataset)
        print(
            f"{args.dataset}: {manifest['count']} frozen inputs, fingerprint {manifest['fingerprint']}: "
            + ("OK" if not problems else f"{len(problems)} problem(s)")
        )
        return 2 if problems else 0
    if args.dataset != "embedded" and not args.manual_dir:
        parser.error(f"--manual_dir is required for --dataset {args.dataset}")
    prepare(
        args.dataset,
        args.data_dir,
        args.manual_dir,
        name=args.name,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0


run = cli.console(PROG, _main)  # console-script entry point


if __name__ == "__main__":
    run()
