"""Which prepared data set and split feeds each task, opening them, and the evaluation reader.

Tasks use the official `--de_type` names; user sources are `paired_folder:NAME`:

| task | id | benchmark (dataset, split) | embedded (dataset, split) |
|---|---|---|---|
| denoise_15/25/50 (train) | 0/1/2 | denoise_train, train (noise added on the fly) | embedded, train_clean |
| derain | 3 | rain100l, train | embedded, train_derain |
| dehaze | 4 | reside_ots, train | embedded, train_dehaze |
| deblur | 5 | gopro, train | embedded, train_deblur |
| lowlight | 6 | lol_v1, train | embedded, train_lowlight |
| paired_folder:NAME | 7, 8, ... | paired_folder/NAME, train | same |

Evaluation (`EVAL_TASKS`): denoise_σ → cbsd68 sigmaσ (frozen noise); derain → rain100l test; dehaze →
sots_outdoor test; deblur → gopro test; lowlight → lol_v1 eval15; the embedded equivalents are its `test_*`
splits (plus the unseen `jpeg_q20`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from baryir_jax.data import degradations
from baryir_jax.data.images import decode_image
from baryir_jax.data.report import DataError

COLLECTIONS = ("benchmark", "embedded")
OFFICIAL_TASKS = tuple(degradations.DEGRADATION_IDS)

TRAIN_TASKS = {
    "benchmark": {
        "denoise_15": ("denoise_train", "train"),
        "denoise_25": ("denoise_train", "train"),
        "denoise_50": ("denoise_train", "train"),
        "derain": ("rain100l", "train"),
        "dehaze": ("reside_ots", "train"),
        "deblur": ("gopro", "train"),
        "lowlight": ("lol_v1", "train"),
    },
    "embedded": {
        "denoise_15": ("embedded", "train_clean"),
        "denoise_25": ("embedded", "train_clean"),
        "denoise_50": ("embedded", "train_clean"),
        "derain": ("embedded", "train_derain"),
        "dehaze": ("embedded", "train_dehaze"),
        "deblur": ("embedded", "train_deblur"),
        "lowlight": ("embedded", "train_lowlight"),
    },
}
EVAL_TASKS = {
    "benchmark": {
        "denoise_15": ("cbsd68", "sigma15"),
        "denoise_25": ("cbsd68", "sigma25"),
        "denoise_50": ("cbsd68", "sigma50"),
        "derain": ("rain100l", "test"),
        "dehaze": ("sots_outdoor", "test"),
        "deblur": ("gopro", "test"),
        "lowlight": ("lol_v1", "eval15"),
    },
    "embedded": {
        "denoise_15": ("embedded", "test_denoise_15"),
        "denoise_25": ("embedded", "test_denoise_25"),
        "denoise_50": ("embedded", "test_denoise_50"),
        "derain": ("embedded", "test_derain"),
        "dehaze": ("embedded", "test_dehaze"),
        "deblur": ("embedded", "test_deblur"),
        "lowlight": ("embedded", "test_lowlight"),
        "jpeg_q20": ("embedded", "test_jpeg_q20"),
    },
}
# Whole-image evaluation counts of the standard sets (gate evaluation on them): 3D = 804, 5D = 1,930 images.
EXPECTED_EVAL_COUNTS = {
    "denoise_15": 68,
    "denoise_25": 68,
    "denoise_50": 68,
    "derain": 100,
    "dehaze": 500,
    "deblur": 1111,
    "lowlight": 15,
}
USER_PREFIX = "paired_folder:"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One source of the training mixture."""

    task: str
    dataset: str  # 'rain100l', 'embedded', 'paired_folder/NAME'
    split: str
    degradation_id: int
    sigma: float | None = None  # on-the-fly Gaussian noise (denoising sources)


def _check_collection(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise ValueError(f"collection must be one of {COLLECTIONS}, got {collection!r}.")


def resolve_sources(tasks, collection: str = "benchmark", user_ids: dict[str, int] | None = None) -> list[SourceSpec]:
    """Task names → `SourceSpec`s, in the given order. `single` is the official name of `paired_folder:default`.
    User sources get ids 7, 8, ... in order of appearance unless `user_ids` maps task → id (≥ 7)."""
    _check_collection(collection)
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    if not tasks:
        raise ValueError(
            "tasks is empty: give at least one of " + ", ".join(OFFICIAL_TASKS) + " or paired_folder:NAME."
        )
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks has duplicates: {tasks}.")
    specs, next_user = [], degradations.FIRST_USER_ID
    user_ids = dict(user_ids or {})
    for task in tasks:
        if task == "single":
            task = USER_PREFIX + "default"
        if task in degradations.DEGRADATION_IDS:
            dataset, split = TRAIN_TASKS[collection][task]
            specs.append(
                SourceSpec(
                    task, dataset, split, degradations.DEGRADATION_IDS[task], degradations.NOISE_SIGMAS.get(task)
                )
            )
        elif task.startswith(USER_PREFIX) or task.startswith("paired_folder/"):
            name = task.split(":", 1)[1] if ":" in task else task.split("/", 1)[1]
            task = USER_PREFIX + name
            if task in user_ids:
                de_id = int(user_ids[task])
                if de_id < degradations.FIRST_USER_ID:
                    raise ValueError(
                        f"user source {task} id {de_id} collides with the official ids 0..6; use 7 or more."
                    )
            else:
                while next_user in user_ids.values():
                    next_user += 1
                de_id, next_user = next_user, next_user + 1
            specs.append(SourceSpec(task, f"paired_folder/{name}", "train", de_id))
        else:
            raise ValueError(
                f"unknown task {task!r}: expected one of {', '.join(OFFICIAL_TASKS)}, single, or "
                "paired_folder:NAME (a folder prepared with baryir-prepare --dataset paired_folder "
                "--name NAME)."
            )
    ids = [s.degradation_id for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two sources share a degradation id: {[(s.task, s.degradation_id) for s in specs]}.")
    return specs


# ---------------------------------------------------------------------------------------------------------
# Opening prepared data
# ---------------------------------------------------------------------------------------------------------
def get_builder(data_dir: str | Path, dataset: str, **kwargs):
    """The builder object of `dataset` ('rain100l', 'embedded', 'paired_folder/NAME' ...) under `data_dir`."""
    from baryir_jax.data.builders import BUILDERS

    name, _, config = dataset.replace(":", "/").partition("/")
    if name not in BUILDERS:
        raise DataError(
            f"unknown dataset {dataset!r}; known: {', '.join(BUILDERS)} (paired_folder/NAME for user data)."
        )
    if name == "paired_folder":
        return BUILDERS[name](data_dir=str(data_dir), config=config or "default", **kwargs)
    if config:
        raise DataError(f"dataset {name} has no configs (got {dataset!r}).")
    return BUILDERS[name](data_dir=str(data_dir), **kwargs)


def is_prepared(builder) -> bool:
    return (Path(builder.data_dir) / "dataset_info.json").exists()


def _prepare_hint(dataset: str) -> str:
    name, _, config = dataset.replace(":", "/").partition("/")
    extra = f" --name {config}" if config else ""
    manual = "" if name == "embedded" else " --manual_dir DIR"
    return f"baryir-prepare --dataset {name}{manual} --data_dir DATA_DIR{extra}"


def open_split(data_dir: str | Path, dataset: str, split: str, *, skip_decoding: tuple[str, ...] = ()):
    """A random-access source (len, [i] → dict of numpy arrays / bytes) of one prepared split."""
    import tensorflow_datasets as tfds

    builder = get_builder(data_dir, dataset, progress=False)
    if not is_prepared(builder):
        raise DataError(
            f"dataset {dataset} is not prepared in {data_dir} (looked for {builder.data_dir}); run: "
            f"{_prepare_hint(dataset)}"
        )
    if split not in builder.info.splits:
        raise DataError(
            f"dataset {dataset} in {builder.data_dir} has no split {split!r}; it has "
            f"{', '.join(sorted(builder.info.splits))}."
        )
    decoders = {k: tfds.decode.SkipDecoding() for k in skip_decoding if k in builder.info.features}
    return builder.as_data_source(split=split, decoders=decoders or None)


def split_size(data_dir: str | Path, dataset: str, split: str) -> int:
    builder = get_builder(data_dir, dataset, progress=False)
    if not is_prepared(builder):
        raise DataError(f"dataset {dataset} is not prepared in {data_dir}; run: {_prepare_hint(dataset)}")
    if split not in builder.info.splits:
        raise DataError(f"dataset {dataset} has no split {split!r}; it has {', '.join(sorted(builder.info.splits))}.")
    return int(builder.info.splits[split].num_examples)


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class EvalExample(NamedTuple):
    name: str  # the degraded file name as stored (relative to its folder)
    degraded: np.ndarray  # uint8 (H, W, 3)
    clean: np.ndarray  # uint8 (H, W, 3), same size


def load_eval_split(
    data_dir: str | Path, dataset: str, split: str, *, limit: int | None = None
) -> Iterator[EvalExample]:
    """Whole images of one prepared split, in name order: (name, degraded uint8, clean uint8).

    Checks (eagerly, before the first image) that the split exists and holds degraded/clean pairs."""
    src = open_split(data_dir, dataset, split, skip_decoding=("degraded", "clean"))
    if "degraded" not in get_builder(data_dir, dataset, progress=False).info.features:
        raise DataError(
            f"{dataset} {split} holds clean images only; it has no degraded inputs to evaluate on "
            "(make them with degradations.frozen_noisy)."
        )
    names = [_text(src[i]["name"]) for i in range(len(src))]
    order = sorted(range(len(names)), key=lambda i: names[i])
    if limit is not None:
        order = order[:limit]

    def generate():
        for i in order:
            rec = src[i]
            yield EvalExample(names[i], decode_image(rec["degraded"]), decode_image(rec["clean"]))

    return generate()


def load_eval_task(
    data_dir: str | Path, task: str, collection: str = "benchmark", *, limit: int | None = None
) -> Iterator[EvalExample]:
    """`load_eval_split` for a task name of `EVAL_TASKS[collection]`."""
    _check_collection(collection)
    if task not in EVAL_TASKS[collection]:
        raise ValueError(
            f"no evaluation split for task {task!r} in {collection}; known: {', '.join(EVAL_TASKS[collection])}."
        )
    dataset, split = EVAL_TASKS[collection][task]
    return load_eval_split(data_dir, dataset, split, limit=limit)
