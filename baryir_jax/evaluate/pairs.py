"""Sources of evaluation pairs (degraded uint8, clean uint8) for `baryir-evaluate`: in memory, one prepared split
of `baryir_jax.data`, or an unseen task built on the fly from a clean split.

Every source has `sizes()` (the (height, width) of each image, in the order `examples()` yields them; for prepared
splits read from the encoded headers without decoding pixels) and `examples()` (an iterator of `Pair`).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

from baryir_jax.evaluate import unseen as unseen_lib
from baryir_jax.evaluate.registry import Benchmark


@dataclasses.dataclass
class Pair:
    name: str
    degraded: np.ndarray
    clean: np.ndarray


class ListSource:
    """Pairs held in memory: `[(name, degraded uint8, clean uint8), ...]`."""

    def __init__(self, pairs):
        self.pairs = [Pair(*p) for p in pairs]

    def sizes(self) -> list[tuple[int, int]]:
        return [p.degraded.shape[:2] for p in self.pairs]

    def examples(self) -> Iterator[Pair]:
        return iter(self.pairs)


class SplitSource:
    """One prepared evaluation split of `baryir_jax.data` (name order, as `load_eval_split`)."""

    def __init__(self, data_dir: str, dataset: str, split: str, limit: int | None = None):
        self.data_dir, self.dataset, self.split, self.limit = data_dir, dataset, split, limit

    def sizes(self) -> list[tuple[int, int]]:
        """Image sizes from the encoded headers (no pixel decoding)."""
        from baryir_jax.data import sources

        src = sources.open_split(self.data_dir, self.dataset, self.split, skip_decoding=("degraded", "clean"))
        recs = []
        for i in range(len(src)):
            rec = src[i]
            name = rec["name"].decode() if isinstance(rec["name"], bytes) else str(rec["name"])
            with Image.open(io.BytesIO(rec["degraded"])) as im:
                w, h = im.size
            recs.append((name, (h, w)))
        recs.sort()
        if self.limit is not None:
            recs = recs[: self.limit]
        return [s for _, s in recs]

    def examples(self) -> Iterator[Pair]:
        from baryir_jax.data import sources

        for ex in sources.load_eval_split(self.data_dir, self.dataset, self.split, limit=self.limit):
            yield Pair(ex.name, ex.degraded, ex.clean)


class UnseenSource:
    """One unseen task built on the fly from a source of clean images (checksummed as it goes)."""

    def __init__(self, task: str, clean_source, entries: list):
        self.task, self.clean_source, self.entries = task, clean_source, entries

    def sizes(self):
        return self.clean_source.sizes()

    def examples(self) -> Iterator[Pair]:
        for p in self.clean_source.examples():
            ex = unseen_lib.UnseenExample(self.task, p.name, unseen_lib.degrade(self.task, p.clean, p.name), p.clean)
            self.entries.append(unseen_lib.entry(ex))
            yield Pair(p.name, ex.degraded, ex.clean)


def data_sources(
    benchmark: Benchmark,
    data_dir: str,
    collection: str = "benchmark",
    limit: int | None = None,
    unseen_entries: list | None = None,
) -> dict:
    """`{task: source}` for every task of `benchmark` on `collection` ('benchmark' or 'embedded'): prepared splits
    under `data_dir` (`data.sources.EVAL_TASKS`), unseen tasks built from the CBSD68 split; each unseen image's
    checksum entry is appended to `unseen_entries` as it is made. `limit`: the first N images of each split."""
    from baryir_jax.data import sources

    out = {}
    for task in benchmark.tasks:
        if task in unseen_lib.TASKS:
            dataset, split = sources.EVAL_TASKS[collection][unseen_lib.SOURCE_TASK]
            out[task] = UnseenSource(
                task, SplitSource(data_dir, dataset, split, limit), unseen_entries if unseen_entries is not None else []
            )
        else:
            dataset, split = sources.EVAL_TASKS[collection][task]
            out[task] = SplitSource(data_dir, dataset, split, limit)
    return out
