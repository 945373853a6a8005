"""The benchmarks `baryir-evaluate` scores: their columns (paper Tables 1 and 2 layout, the unseen set), the image
count each task must reach for an average, and `--expected` overrides.

Counts come from `data.sources.EXPECTED_EVAL_COUNTS` (the unseen tasks are built on the CBSD68 test images, so they
take its count); on the `embedded` collection every task has the embedded test photographs.
"""

from __future__ import annotations

import dataclasses

from baryir_jax.evaluate import unseen as unseen_lib


@dataclasses.dataclass(frozen=True)
class Column:
    task: str
    title: str
    in_average: bool = True


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    columns: tuple[Column, ...]
    extra_note: str = ""  # printed under the table when it has columns outside the average (†)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(c.task for c in self.columns)


BENCHMARKS = {
    "3d": Benchmark(
        "3d",
        "three degradations (paper Table 1 layout)",
        (
            Column("dehaze", "SOTS"),
            Column("derain", "Rain100L"),
            Column("denoise_15", "BSD68 σ15"),
            Column("denoise_25", "BSD68 σ25"),
            Column("denoise_50", "BSD68 σ50"),
        ),
    ),
    "5d": Benchmark(
        "5d",
        "five degradations (paper Table 2 layout)",
        (
            Column("dehaze", "SOTS"),
            Column("derain", "Rain100L"),
            Column("denoise_25", "BSD68 σ25"),
            Column("deblur", "GoPro"),
            Column("lowlight", "LOL-v1"),
            Column("denoise_15", "BSD68 σ15†", in_average=False),
            Column("denoise_50", "BSD68 σ50†", in_average=False),
        ),
        extra_note="† CBSD68 σ15/σ50: scored for the 1,930-image 5D count, not part of Table 2 or of its average.",
    ),
    "unseen": Benchmark(
        "unseen",
        "unseen degradations (JPEG and mixed)",
        tuple(
            Column(t, title)
            for t, title in (
                ("jpeg_q10", "JPEG q10"),
                ("jpeg_q20", "JPEG q20"),
                ("jpeg_q30", "JPEG q30"),
                ("jpeg_q40", "JPEG q40"),
                ("noise_jpeg", "Noise+JPEG"),
                ("haze_noise", "Haze+noise"),
                ("lowlight_noise", "Low light+noise"),
            )
        ),
    ),
}
# Column titles when the embedded photographs stand in for the benchmark sets: the degradation, not a data set.
EMBEDDED_TITLES = {
    "dehaze": "haze",
    "derain": "rain",
    "denoise_15": "noise σ15",
    "denoise_25": "noise σ25",
    "denoise_50": "noise σ50",
    "deblur": "motion blur",
    "lowlight": "low light",
}


def for_collection(benchmark: Benchmark, collection: str) -> Benchmark:
    """`benchmark` as scored on `collection`: on 'embedded' the columns are named by degradation (the embedded
    test photographs, not SOTS, Rain100L, ...), and the title says so."""
    if collection != "embedded":
        return benchmark
    from baryir_jax.data.builders.embedded import TEST_PHOTOS

    cols = tuple(
        dataclasses.replace(c, title=EMBEDDED_TITLES.get(c.task, c.title) + ("" if c.in_average else "†"))
        for c in benchmark.columns
    )
    note = "† scored as in the full 5D run, not part of its average." if benchmark.extra_note else ""
    return dataclasses.replace(
        benchmark,
        title=f"{benchmark.title}, on the embedded test photographs ({', '.join(TEST_PHOTOS)}), not the benchmark sets",
        columns=cols,
        extra_note=note,
    )


def expected_counts(benchmark: Benchmark, collection: str) -> dict[str, int]:
    """The number of images each task must have for an average to be printed."""
    from baryir_jax.data import sources

    if collection == "embedded":
        from baryir_jax.data.builders.embedded import TEST_PHOTOS

        return {t: len(TEST_PHOTOS) for t in benchmark.tasks}
    per_source = sources.EXPECTED_EVAL_COUNTS
    return {t: per_source[unseen_lib.SOURCE_TASK] if t in unseen_lib.TASKS else per_source[t] for t in benchmark.tasks}


def parse_expected(spec: str, tasks: tuple[str, ...]) -> dict[str, int]:
    """'dehaze=3,derain=2' or '*=2' (every task) → counts for `tasks`; names of other benchmarks' tasks are
    accepted and ignored (one spec can serve 3d and 5d)."""
    known = {t for b in BENCHMARKS.values() for t in b.tasks}
    out = {}
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if "=" not in part:
            raise ValueError(f"--expected {spec!r}: each entry is TASK=N (or *=N), got {part!r}.")
        k, v = part.split("=", 1)
        k = k.strip()
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"--expected {spec!r}: {v!r} is not a whole number.") from None
        if n < 0:
            raise ValueError(f"--expected {spec!r}: counts cannot be negative.")
        if k == "*":
            out.update({t: n for t in tasks})
        elif k in tasks:
            out[k] = n
        elif k not in known:
            raise ValueError(f"--expected {spec!r}: {k!r} is not a task (known: {', '.join(sorted(known))}).")
    return out
