"""The shared TFDS builder: array_record output (no TensorFlow), validation while writing, one summary.

Features of every data set: `clean` (uint8 RGB image), `name` and `clean_name` (file names relative to their
folder), and for paired data `degraded` (uint8 RGB image of the same size as `clean`).

A build runs in two phases: `scan(manual_dir)` finds the files and raises `DataError` for layout problems
before anything is written; generation then decodes every file, converts or leaves out the bad ones (each
counted in `self.report`) and never stops halfway.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from baryir_jax.data.builders import folders
from baryir_jax.data.images import ImageProblem, LoadedImage, load_image_file
from baryir_jax.data.report import DataError, Report

SMALL_SIDE = 128  # images smaller than the official patch in a side are noted (the pipeline pads them)


class RestorationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base class; subclasses set the class attributes and `_scan`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    PAIRED = True
    NEEDS_MANUAL_DIR = True
    EXPECTED: dict[str, int] = {}
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    def __init__(self, *, file_format: str = "array_record", progress: bool = True, **kwargs):
        super().__init__(file_format=file_format, **kwargs)
        self.progress = progress
        self.report: Report | None = None
        self._plan: dict[str, list[folders.Item]] | None = None
        self._small = 0

    # ---- TFDS interface ----
    def _info(self) -> tfds.core.DatasetInfo:
        feats = {
            "clean": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "name": tfds.features.Text(),
            "clean_name": tfds.features.Text(),
        }
        if self.PAIRED:
            feats["degraded"] = tfds.features.Image(shape=(None, None, 3), dtype=np.uint8)
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(feats),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
        )

    def _split_generators(self, dl_manager):
        if self._plan is None:
            self.scan(dl_manager.manual_dir if self.NEEDS_MANUAL_DIR else None)
        return {
            split: self._generate_examples(split=split, items=items) for split, items in self._plan.items() if items
        }

    def _generate_examples(self, split: str, items: list) -> Iterator[tuple[str, dict]]:
        for item in tqdm(items, desc=f"{self.name} {split}", unit="img", disable=not self.progress, leave=False):
            example = self._make_example(split, item)
            if example is not None:
                self.report.written[split] += 1
                yield item.key, example

    # ---- scanning ----
    def scan(self, manual_dir: str | os.PathLike | None) -> dict[str, list]:
        """Find and pair the files (no pixel data is read except where a builder must, e.g. CBSD68's colour
        check). Raises DataError before anything is written."""
        self.report = Report(self.name, str(manual_dir or "(no download: built from bundled data)"))
        self._small = 0
        if self.NEEDS_MANUAL_DIR:
            if manual_dir is None:
                raise DataError(f"{self.name} needs --manual_dir: {self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")
            root = folders.resolve_root(manual_dir)
            plan = self._scan(root, self.report)
        else:
            plan = self._scan(None, self.report)
        self.report.set_expected({s: n for s, n in self.EXPECTED.items() if s in plan})
        self.report.planned = {s: len(v) for s, v in plan.items()}
        for s, v in plan.items():
            if not v:
                self.report.warn(f"{s}: no usable examples found; the split is not written.")
        if not any(plan.values()):
            self.report.failed = True  # the summary must say NOTHING WRITTEN, not "written with warnings"
            raise DataError(
                f"{self.name}: no usable examples in {manual_dir}; nothing would be written.\n" + self.report.render()
            )
        self._plan = plan
        return plan

    def _scan(self, root, report: Report) -> dict[str, list]:
        raise NotImplementedError

    # ---- loading one example ----
    def _load(self, split: str, path: str, partner: str | None = None) -> LoadedImage | None:
        try:
            img = load_image_file(path)
        except ImageProblem as e:
            tail = f" (the pair with {os.path.basename(partner)} is left out)" if partner else " (left out)"
            self.report.add(e.kind, split, path, e.message + tail)
            return None
        return img

    def _stored(self, split: str, *loaded: tuple[str, LoadedImage]) -> None:
        """Record conversions and small sizes of images that are actually written."""
        for path, img in loaded:
            if img.conversion:
                self.report.add("converted", split, path, img.conversion)
        if min(loaded[0][1].height, loaded[0][1].width) < SMALL_SIDE:
            self._small += 1

    def _make_example(self, split: str, item: folders.Item) -> dict | None:
        if not self.PAIRED:
            clean = self._load(split, item.clean)
            if clean is None:
                return None
            self._stored(split, (item.clean, clean))
            return {"clean": clean.encoded, "name": item.name, "clean_name": item.clean_name}
        deg = self._load(split, item.degraded, item.clean)
        clean = self._load(split, item.clean, item.degraded)
        if deg is None or clean is None:
            return None
        if (deg.height, deg.width) != (clean.height, clean.width):
            self.report.add(
                "refused",
                split,
                item.degraded,
                f"size {deg.width}x{deg.height} differs from its clean image "
                f"{os.path.basename(item.clean)} "
                f"({clean.width}x{clean.height}); pairs must be pixel-aligned (pair left out)",
            )
            return None
        self._stored(split, (item.degraded, deg), (item.clean, clean))
        return {"degraded": deg.encoded, "clean": clean.encoded, "name": item.name, "clean_name": item.clean_name}

    def finish_report(self) -> Report:
        if self._small:
            self.report.note(
                f"{self._small} image(s) are smaller than {SMALL_SIDE} px in a side; the training "
                "pipeline pads them symmetrically to the patch size"
            )
        self.report.finish()
        return self.report
