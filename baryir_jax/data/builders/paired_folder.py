"""`paired_folder`: a user's own folder of degraded/clean pairs, e.g. to fine-tune or to add a degradation.

Layout (`manual_dir`):
* `degraded/` and `target/` (the official `single` layout; `input/`, `lq/` and `clean/`, `gt/`, `hq/` are
  accepted as synonyms) → split `train`; or
* `train/{degraded,target}/` and optionally `test/{degraded,target}/` → splits `train` and `test`.

Pairs are matched by file name without extension, subfolders included (`a/x.jpg` pairs with `a/x.png`), so
any format and any image size works; both images of a pair must have the same size. Each prepared folder is
one builder config: `--name NAME` (default `default`) stores it under `<data_dir>/paired_folder/NAME/`, and the
training pipeline uses it as the task `paired_folder:NAME`.
"""

from __future__ import annotations

import re

import tensorflow_datasets as tfds

from baryir_jax.data.builders import folders
from baryir_jax.data.builders.base import RestorationBuilder
from baryir_jax.data.images import drop_extension
from baryir_jax.data.report import DataError

DEGRADED_DIRS = ["degraded", "input", "lq"]
CLEAN_DIRS = ["target", "clean", "gt", "hq"]
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def make_config(name: str = "default") -> tfds.core.BuilderConfig:
    if not _NAME_RE.match(name or ""):
        raise DataError(
            f'paired_folder name {name!r} is not valid: use lower-case letters, digits, "_", "-" or "." '
            "(it becomes a folder name and the task name paired_folder:NAME)."
        )
    return tfds.core.BuilderConfig(name=name, description=f'user pairs "{name}"')


class PairedFolder(RestorationBuilder):
    name = "paired_folder"
    BUILDER_CONFIGS = [make_config("default")]
    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    <manual_dir>/degraded/ and <manual_dir>/target/ (or <manual_dir>/train/{degraded,target}/ and
    test/{degraded,target}/), pairs matched by file name without extension.
    """

    def __init__(self, *, config: str | tfds.core.BuilderConfig | None = None, **kwargs):
        if isinstance(config, str):
            made = make_config(config)  # validates the name
            config = config if config in {c.name for c in self.BUILDER_CONFIGS} else made
        super().__init__(config=config, **kwargs)

    def _scan(self, root, report):
        split_dirs = {}
        if folders.find_first(root, DEGRADED_DIRS):
            split_dirs["train"] = root
        else:
            for split in ("train", "test"):
                d = folders.find_dir(root, split)
                if d is not None and folders.find_first(d, DEGRADED_DIRS):
                    split_dirs[split] = d
        if not split_dirs:
            raise DataError(
                f"paired_folder: {root} has no degraded/ folder (nor train/degraded/). Expected "
                f"degraded/ and target/ with pairs of the same file name (synonyms: "
                f"{', '.join(DEGRADED_DIRS)} / {', '.join(CLEAN_DIRS)})."
            )
        plan = {}
        for split, d in split_dirs.items():
            deg_dir, _ = folders.find_first(d, DEGRADED_DIRS)
            cl = folders.find_first(d, CLEAN_DIRS)
            if cl is None:
                raise DataError(
                    f"paired_folder {split}: {d} has {deg_dir.name}/ but no clean folder ({' / '.join(CLEAN_DIRS)})."
                )
            fd = folders.list_images(deg_dir, report, split, recursive=True)
            fc = folders.list_images(cl[0], report, split, recursive=True)
            key = lambda f: drop_extension(f).lower()  # noqa: E731
            plan[split] = folders.pair(
                split, report, deg_dir, fd, cl[0], fc, key, key, lambda f: drop_extension(f) + ".*"
            )
        return plan
