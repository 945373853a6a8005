"""The training input pipeline on grain: the official oversampled mixture, 128² crops, 7-mode augmentation.

What one epoch is (as the official `TrainDataset`): each source k (one task: a data set split plus a
degradation id) is repeated `multiplier_k` times, the sources are concatenated into one list of
`n_k = multiplier_k · size_k` entries each, and the list is shuffled uniformly (reshuffled every epoch).
Per entry, with a generator derived from (seed, global position in the stream):
1. read the record (degraded/clean pair, or the clean image of a denoising source);
2. centre-crop both images to a multiple of 16 (official `crop_img(base=16)`; images that would then be smaller
   than the patch are padded symmetrically instead), take a random `patch_size²` crop at the **same** location
   in both;
3. apply one of the official augmentation modes 1..7 (identity never drawn) to both;
4. denoising sources: add the official Gaussian noise (σ 15/25/50, truncating uint8 cast) to the clean patch;
5. scale to float32 [0, 1].

Batches are dicts of NumPy arrays (NHWC): `degraded` and `clean` float32 (B, P, P, 3), `degradation_id` int32 (B,)
(0/1/2 noise σ15/25/50, 3 rain, 4 haze, 5 blur, 6 low light, 7+ user sources).

Multi-host: every process builds the same shuffled stream and keeps positions `process_index::process_count`,
so the shards are disjoint and together cover every epoch; each process gets `global_batch_size /
process_count` examples per batch. The output does not depend on the worker count.

Checkpointing, portable: the position in the shared stream (examples consumed by all processes together) is
all a resumed run needs; `make_train_pipeline(..., start_index=position)` starts there, whatever the worker and
process counts (the training loop saves it this way). grain's own iterator state also works, but only for the
same worker count and process count it was saved with:

    it = iter(make_train_pipeline(...))
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                               data_iter=grain.checkpoint.CheckpointRestore(it)))
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import grain
import numpy as np

from baryir_jax.data import degradations
from baryir_jax.data.images import augment, crop_to_multiple
from baryir_jax.data.sources import SourceSpec, open_split, resolve_sources, split_size

# Official oversampling [universal_dataset.py]: noise x5 per sigma (x15 for sigma 25 when not all three
# sigmas are used), rain x360, haze x1, blur x35, low light x150, a `single` / user source x5.
OFFICIAL_MULTIPLIERS = {
    "denoise_15": 5,
    "denoise_25": 5,
    "denoise_50": 5,
    "derain": 360,
    "dehaze": 1,
    "deblur": 35,
    "lowlight": 150,
}
OFFICIAL_DENOISE_25_ALONE = 15
OFFICIAL_USER_MULTIPLIER = 5
# Embedded data: 7 clean train photos, 14 pairs per synthetic task; x1 keeps the potentials' counts close.
EMBEDDED_MULTIPLIERS = {
    "denoise_15": 1,
    "denoise_25": 1,
    "denoise_50": 1,
    "derain": 1,
    "dehaze": 1,
    "deblur": 1,
    "lowlight": 1,
}
EMBEDDED_DENOISE_25_ALONE = 2
EMBEDDED_USER_MULTIPLIER = 1
CROP_BASE = 16


def default_multipliers(tasks: Sequence[str], collection: str = "benchmark") -> dict[str, int]:
    """The official multipliers for these tasks (the `embedded` collection has its own, all about 1)."""
    specs = resolve_sources(tasks, collection)
    table, alone, user = (
        (OFFICIAL_MULTIPLIERS, OFFICIAL_DENOISE_25_ALONE, OFFICIAL_USER_MULTIPLIER)
        if collection == "benchmark"
        else (EMBEDDED_MULTIPLIERS, EMBEDDED_DENOISE_25_ALONE, EMBEDDED_USER_MULTIPLIER)
    )
    names = {s.task for s in specs}
    out = {}
    for s in specs:
        if s.task == "denoise_25" and not set(degradations.NOISE_SIGMAS) <= names:
            out[s.task] = alone
        else:
            out[s.task] = table.get(s.task, user)
    return out


def _multipliers(specs: list[SourceSpec], tasks, multipliers, collection) -> dict[str, int]:
    out = default_multipliers([s.task for s in specs], collection)
    if multipliers is None:
        return out
    if isinstance(multipliers, Mapping):
        unknown = set(multipliers) - set(out)
        if unknown:
            raise ValueError(
                f"multipliers for tasks that are not in the mixture: {sorted(unknown)}; tasks: {list(out)}."
            )
        out.update({k: v for k, v in multipliers.items()})
    else:
        multipliers = list(multipliers)
        if len(multipliers) != len(specs):
            raise ValueError(
                f"{len(multipliers)} multipliers for {len(specs)} tasks {list(tasks)}; give one per task "
                "or a dict task -> multiplier."
            )
        out = {s.task: m for s, m in zip(specs, multipliers)}
    for k, v in out.items():
        if int(v) != v or v < 1:
            raise ValueError(f"multiplier of {k} must be a positive integer, got {v!r}.")
        out[k] = int(v)
    return out


@dataclasses.dataclass(frozen=True)
class Mixture:
    """The oversampled mixture: source k holds entries [offsets[k], offsets[k] + counts[k])."""

    sources: tuple[SourceSpec, ...]
    sizes: tuple[int, ...]  # records per source (before oversampling)
    multipliers: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(n * m for n, m in zip(self.sizes, self.multipliers))

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.counts)[:-1]]))

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    def counts_by_task(self) -> dict[str, int]:
        return {s.task: c for s, c in zip(self.sources, self.counts)}

    def counts_by_id(self) -> dict[int, int]:
        return {s.degradation_id: c for s, c in zip(self.sources, self.counts)}

    def locate(self, entry: int) -> tuple[int, int]:
        """Entry index in [0, total) → (source index, record index)."""
        k = bisect.bisect_right(self.offsets, entry) - 1
        return k, (entry - self.offsets[k]) % self.sizes[k]


def make_mixture(
    tasks,
    sizes: Mapping[str, int],
    *,
    multipliers=None,
    collection: str = "benchmark",
    user_ids: dict[str, int] | None = None,
) -> Mixture:
    """A `Mixture` from known source sizes `{task: number of records}` (no data needed)."""
    specs = resolve_sources(tasks, collection, user_ids)
    mult = _multipliers(specs, tasks, multipliers, collection)
    missing = [s.task for s in specs if s.task not in sizes]
    if missing:
        raise ValueError(f"sizes lacks {missing}; give the number of records of every task.")
    empty = [s.task for s in specs if int(sizes[s.task]) <= 0]
    if empty:
        raise ValueError(f"sources with no records: {empty}; prepare them or drop these tasks.")
    return Mixture(tuple(specs), tuple(int(sizes[s.task]) for s in specs), tuple(mult[s.task] for s in specs))


def load_mixture(
    data_dir: str | Path,
    tasks,
    *,
    multipliers=None,
    collection: str = "benchmark",
    user_ids: dict[str, int] | None = None,
) -> Mixture:
    """The `Mixture` of prepared data under `data_dir` (sizes read from the data sets' metadata)."""
    specs = resolve_sources(tasks, collection, user_ids)
    sizes = {s.task: split_size(data_dir, s.dataset, s.split) for s in specs}
    return make_mixture(
        [s.task for s in specs],
        sizes,
        multipliers=multipliers,
        collection=collection,
        user_ids={s.task: s.degradation_id for s in specs if s.degradation_id >= 7},
    )


def oversampled_counts(
    tasks,
    sizes: Mapping[str, int],
    *,
    multipliers=None,
    collection: str = "benchmark",
    by: str = "task",
    user_ids: dict[str, int] | None = None,
) -> dict:
    """Entries per source after oversampling, from known sizes: `{task: n}` (by='task') or `{id: n}` (by='id').
    λ_k ∝ 1/n_k (official: the three noise levels form one potential, n = their sum)."""
    m = make_mixture(tasks, sizes, multipliers=multipliers, collection=collection, user_ids=user_ids)
    return _by(m, by)


def entry_counts(
    data_dir: str | Path,
    tasks,
    *,
    multipliers=None,
    collection: str = "benchmark",
    by: str = "task",
    user_ids: dict[str, int] | None = None,
) -> dict:
    """Entries per source after oversampling for prepared data: `{task: n}` or `{degradation_id: n}`."""
    return _by(load_mixture(data_dir, tasks, multipliers=multipliers, collection=collection, user_ids=user_ids), by)


def _by(m: Mixture, by: str) -> dict:
    if by == "task":
        return m.counts_by_task()
    if by == "id":
        return m.counts_by_id()
    raise ValueError(f"by must be 'task' or 'id', got {by!r}.")


# ---------------------------------------------------------------------------------------------------------
# Per-example work
# ---------------------------------------------------------------------------------------------------------
def train_batch_spec(global_batch_size: int, patch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every leaf of a global training batch (what the module docstring promises and the
    pipeline yields, all processes together): ``{'degraded': ((B, P, P, 3), float32), 'clean': …,
    'degradation_id': ((B,), int32)}``. The preflight compiles the step for these without reading data."""
    image = ((int(global_batch_size), int(patch_size), int(patch_size), 3), np.dtype(np.float32))
    return {"degraded": image, "clean": image, "degradation_id": ((int(global_batch_size),), np.dtype(np.int32))}


def random_patch(images: Sequence[np.ndarray], patch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Official crop: base-16 centre crop, then one random `patch²` window at the same place in every image.
    Images that would be smaller than the patch are padded symmetrically (bottom/right) instead of cropped."""
    h, w = images[0].shape[:2]
    for im in images[1:]:
        if im.shape[:2] != (h, w):
            raise ValueError(f"paired images differ in size: {im.shape[:2]} vs {(h, w)}")
    cropped = [crop_to_multiple(im, CROP_BASE) for im in images]
    if cropped[0].shape[0] >= patch and cropped[0].shape[1] >= patch:
        images = cropped
    else:
        ph, pw = max(0, patch - h), max(0, patch - w)
        images = [np.pad(im, ((0, ph), (0, pw), (0, 0)), mode="symmetric") for im in images]
    h, w = images[0].shape[:2]
    i = int(rng.integers(0, h - patch + 1))
    j = int(rng.integers(0, w - patch + 1))
    return [im[i : i + patch, j : j + patch] for im in images]


class _MakeExample(grain.transforms.RandomMap):
    """entry index → one training example (reads the record, crops, augments, adds noise)."""

    def __init__(self, data_dir: str, mixture: Mixture, patch_size: int, with_entry_index: bool):
        self._data_dir = str(data_dir)
        self._mixture = mixture
        self._patch = int(patch_size)
        self._with_entry = with_entry_index
        self._sources: dict[int, object] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_sources"] = {}  # reopened lazily in each worker process
        return state

    def __setstate__(self, state):
        # Import TFDS and the builders now, in the worker's main thread: TFDS imports its dependencies under a
        # process-wide lazy-import hook, and a read thread importing at the same time would get lazy stubs.
        import baryir_jax.data.builders  # noqa: F401

        self.__dict__.update(state)

    def _source(self, k: int):
        if k not in self._sources:
            spec = self._mixture.sources[k]
            skip = ("degraded",) if spec.sigma is not None else ()
            self._sources[k] = open_split(self._data_dir, spec.dataset, spec.split, skip_decoding=skip)
        return self._sources[k]

    def random_map(self, entry, rng: np.random.Generator):
        entry = int(entry)
        k, r = self._mixture.locate(entry)
        spec = self._mixture.sources[k]
        rec = self._source(k)[r]
        if spec.sigma is not None:
            (clean,) = random_patch([rec["clean"]], self._patch, rng)
            clean = augment(clean, int(rng.integers(1, 8)))
            degraded = degradations.gaussian_noise(clean, spec.sigma, rng)
        else:
            degraded, clean = random_patch([rec["degraded"], rec["clean"]], self._patch, rng)
            mode = int(rng.integers(1, 8))
            degraded, clean = augment(degraded, mode), augment(clean, mode)
        out = {
            "degraded": degraded.astype(np.float32) / np.float32(255.0),
            "clean": clean.astype(np.float32) / np.float32(255.0),
            "degradation_id": np.int32(spec.degradation_id),
        }
        if self._with_entry:
            out["entry"] = np.int64(entry)
        return out


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when not given: the default is this JAX process

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count}).")
    return int(process_index), int(process_count)


def make_train_pipeline(
    data_dir: str | Path,
    tasks,
    *,
    collection: str = "benchmark",
    multipliers=None,
    patch_size: int = 128,
    global_batch_size: int = 8,
    seed: int = 0,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    user_ids: dict[str, int] | None = None,
    read_threads: int = 8,
    prefetch_batches: int = 16,
    with_entry_index: bool = False,
    start_index: int = 0,
) -> grain.IterDataset:
    """The infinite training stream of this process's batches (a grain `IterDataset`; `iter()` it).

    data_dir: where `baryir-prepare` wrote the data sets; tasks: official `--de_type` names and/or
    `paired_folder:NAME` (e.g. ['derain', 'dehaze', 'denoise_15', 'denoise_25', 'denoise_50']);
    collection: 'benchmark' (the published data sets) or 'embedded'; multipliers: None (official), a dict
    task → multiplier overriding some, or one per task; patch_size: crop side; global_batch_size: examples per
    step over all processes (divisible by process_count); seed: shuffling, crops, augmentation and noise;
    worker_count: grain worker processes (0: threads in this process); process_index / process_count: this
    host's shard (default: `jax.process_index()` / `jax.process_count()`); user_ids: ids of user sources
    (default 7, 8, ... in order); with_entry_index: add 'entry' (int64, the position in the oversampled list)
    to the batches, for tests and debugging; start_index: examples of the shared stream already consumed (all
    processes together), e.g. a training checkpoint's data position: the stream starts at that position, so a
    resumed run sees the batches an uninterrupted one would, whatever the worker and process counts (global
    batch j after the start holds stream positions [start_index + j·B, start_index + (j+1)·B)).
    """
    process_index, process_count = _process(process_index, process_count)
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}.")
    if patch_size < 1 or patch_size % 8:
        raise ValueError(
            f"patch_size must be a positive multiple of 8 (the network downsamples by 8), got {patch_size}."
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}.")
    if not (isinstance(start_index, (int, np.integer)) and start_index >= 0):
        raise ValueError(f"start_index must be a non-negative integer, got {start_index!r}.")
    mixture = load_mixture(data_dir, tasks, multipliers=multipliers, collection=collection, user_ids=user_ids)
    local_batch = global_batch_size // process_count
    ds = grain.MapDataset.range(mixture.total).seed(seed).shuffle().repeat()
    ds = ds.random_map(_MakeExample(str(data_dir), mixture, patch_size, with_entry_index))
    if start_index:  # a lazy slice of the infinite stream: O(1), the same positions (and per-example RNG) as before
        ds = ds[int(start_index) :]
    ds = ds[process_index::process_count]
    ds = ds.batch(local_batch, drop_remainder=True)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches))
    if worker_count > 0:
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=worker_buffer_size)
        )
    return it_ds
