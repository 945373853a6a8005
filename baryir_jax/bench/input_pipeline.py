"""Input-pipeline throughput: `python -m baryir_jax.bench.input_pipeline` prints one JSON line.

Measures training images per second of the 3D mixture (derain, dehaze, denoise σ15/25/50, official
multipliers) at patch 128 with 0 and 2 grain worker processes. By default it runs on the `embedded` data
(prepared into a temporary folder, no download); pass `--data_dir` with `--collection benchmark` to measure
the prepared benchmark sets instead. Everything but the JSON line goes to stderr.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import time

from baryir_jax import cli
from baryir_jax.config import TASKS_3D


def measure(
    data_dir: str,
    tasks,
    collection: str,
    patch: int,
    batch: int,
    batches: int,
    warmup: int,
    workers: int,
    seed: int = 0,
) -> dict:
    from baryir_jax.data.pipeline import make_train_pipeline

    ds = make_train_pipeline(
        data_dir,
        tasks,
        collection=collection,
        patch_size=patch,
        global_batch_size=batch,
        seed=seed,
        worker_count=workers,
        process_index=0,
        process_count=1,
    )
    it = iter(ds)
    start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    close = getattr(it, "close", None)
    if close is not None:
        close()
    return {
        "images_per_s": round(batches * batch / seconds, 1),
        "seconds": round(seconds, 3),
        "warmup_seconds": round(first, 3),
    }


def main(argv=None) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=None, help="prepared data (default: embedded set in a temp folder)")
    parser.add_argument("--collection", default="embedded", choices=("embedded", "benchmark"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS_3D))
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args(argv)

    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
        flags.FLAGS.mark_as_parsed()

    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="baryir_bench_"))
        if args.collection == "embedded":
            from baryir_jax.data import sources
            from baryir_jax.data.prepare import prepare

            if not sources.is_prepared(sources.get_builder(data_dir, "embedded", progress=False)):
                with contextlib.redirect_stdout(sys.stderr):
                    prepare("embedded", data_dir, progress=False, out=lambda s: print(s, file=sys.stderr))
        results = {}
        for w in args.workers:
            results[str(w)] = measure(
                data_dir, args.tasks, args.collection, args.patch, args.batch, args.batches, args.warmup, w
            )
            print(f"workers={w}: {results[str(w)]}", file=sys.stderr)

    import grain

    line = {
        "bench": "input_pipeline",
        "mixture": "3D" if sorted(args.tasks) == sorted(TASKS_3D) else "+".join(args.tasks),
        "collection": args.collection,
        "patch": args.patch,
        "batch_size": args.batch,
        "batches": args.batches,
        "images_per_s": {w: r["images_per_s"] for w, r in results.items()},
        "detail": results,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grain": getattr(grain, "__version__", "unknown"),
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
