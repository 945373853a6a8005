"""The unseen-degradation suite: degradations no training set contains, built from the clean test images.

Source images: the clean CBSD68 images (68; the embedded collection's two test photographs for a quick run),
read from the prepared `cbsd68` data set. Seven tasks, every parameter fixed, the only randomness (noise, the
haze depth field) drawn from ``numpy.random.default_rng(seed_for('unseen', task, stem))``:

| task | degradation |
|---|---|
| jpeg_q10, jpeg_q20, jpeg_q30, jpeg_q40 | JPEG at quality 10/20/30/40 (Pillow's libjpeg, 4:2:0) |
| noise_jpeg | Gaussian noise σ = 15 (official arithmetic), then JPEG quality 30 |
| haze_noise | haze (β = 1.2, airlight 0.85, depth = vertical gradient + smooth random field), then noise σ = 15 |
| lowlight_noise | under-exposure (γ = 1.6, scale 0.25, no sensor noise), then noise σ = 10 |

The degradation functions are those of `baryir_jax.data.degradations`. Every input is checksummed
(`manifest`: SHA-256 of the uint8 pixels of the clean and degraded image, and one `fingerprint` over all of
them, with the NumPy, Pillow and libjpeg versions that made them); `compare_manifests` lists differences to a
reference manifest, so two users can prove they scored identical inputs. JPEG output depends on the libjpeg
build: a different one changes the fingerprint (the manifest says which one made it).

    python -m baryir_jax.evaluate.unseen --data_dir DATA --output unseen_inputs/   # PNGs + manifest
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from baryir_jax import cli
from baryir_jax.data import degradations
from baryir_jax.data.images import pixel_sha256, stem

NOISE_SIGMA = 15.0
TASKS = {
    "jpeg_q10": "JPEG quality 10",
    "jpeg_q20": "JPEG quality 20",
    "jpeg_q30": "JPEG quality 30",
    "jpeg_q40": "JPEG quality 40",
    "noise_jpeg": "noise σ15 + JPEG q30",
    "haze_noise": "haze β1.2 + noise σ15",
    "lowlight_noise": "low light γ1.6×0.25 + noise σ10",
}
SOURCE_TASK = "denoise_15"  # the eval split whose clean images are the sources (cbsd68 / embedded test photos)
PROTOCOL = (
    "sources: clean images of the CBSD68 test split (sigma15 record); rng = numpy.random.default_rng("
    'seed_for("unseen", task, stem)); jpeg_qQ = degradations.jpeg(clean, Q); noise_jpeg = jpeg('
    "gaussian_noise(clean, 15, rng), 30); haze_noise = gaussian_noise(haze(clean, rng, beta=1.2, "
    "airlight=0.85), 15, rng); lowlight_noise = gaussian_noise(low_light(clean, rng, gamma=1.6, scale=0.25, "
    'noise=0), 10, rng); hashes: sha256 of "HxWx3:" + uint8 HWC bytes'
)


class UnseenExample(NamedTuple):
    task: str
    name: str
    degraded: np.ndarray
    clean: np.ndarray


def degrade(task: str, clean: np.ndarray, name: str) -> np.ndarray:
    """The unseen degradation `task` of one clean uint8 RGB image named `name` (its stem keys the seed)."""
    if task not in TASKS:
        raise ValueError(f"unknown unseen task {task!r}; the suite has {', '.join(TASKS)}.")
    rng = np.random.default_rng(degradations.seed_for("unseen", task, stem(name)))
    if task.startswith("jpeg_q"):
        return degradations.jpeg(clean, int(task[len("jpeg_q") :]))
    if task == "noise_jpeg":
        return degradations.jpeg(degradations.gaussian_noise(clean, NOISE_SIGMA, rng), 30)
    if task == "haze_noise":
        hazy = degradations.haze(clean, rng, beta=1.2, airlight=0.85)
        return degradations.gaussian_noise(hazy, NOISE_SIGMA, rng)
    dark = degradations.low_light(clean, rng, gamma=1.6, scale=0.25, noise=0.0)
    return degradations.gaussian_noise(dark, 10.0, rng)


def build(cleans: Iterable[tuple[str, np.ndarray]], tasks: Iterable[str] = tuple(TASKS)) -> Iterator[UnseenExample]:
    """Every (task, clean image) pair, task-major; `cleans` yields (name, uint8 RGB) and is read once per task
    when it is a list (pass a list or a re-iterable)."""
    cleans = list(cleans) if not isinstance(cleans, (list, tuple)) else cleans
    for task in tasks:
        for name, clean in cleans:
            yield UnseenExample(task, name, degrade(task, clean, name), clean)


def entry(ex: UnseenExample) -> dict:
    return {
        "task": ex.task,
        "name": ex.name,
        "clean_sha256": pixel_sha256(ex.clean),
        "degraded_sha256": pixel_sha256(ex.degraded),
    }


def manifest(entries: list[dict]) -> dict:
    from PIL import Image, features

    entries = sorted(entries, key=lambda e: (e["task"], e["name"]))
    lines = "\n".join(f"{e['task']} {e['name']} {e['clean_sha256']} {e['degraded_sha256']}" for e in entries)
    return {
        "suite": "baryir_jax unseen degradations",
        "protocol": PROTOCOL,
        "tasks": TASKS,
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "libjpeg": features.version("jpg"),
        "count": len(entries),
        "fingerprint": hashlib.sha256(lines.encode()).hexdigest(),
        "entries": entries,
    }


def compare_manifests(reference: dict, current: dict) -> list[str]:
    """Differences between two manifests (empty: identical inputs)."""
    ref = {(e["task"], e["name"]): e for e in reference.get("entries", [])}
    cur = {(e["task"], e["name"]): e for e in current.get("entries", [])}
    problems = []
    for key in sorted(set(ref) | set(cur)):
        a, b = ref.get(key), cur.get(key)
        if a is None:
            problems.append(f"{key[0]}/{key[1]}: not in the reference manifest")
        elif b is None:
            problems.append(f"{key[0]}/{key[1]}: in the reference, not evaluated here")
        else:
            for field in ("clean_sha256", "degraded_sha256"):
                if a[field] != b[field]:
                    problems.append(f"{key[0]}/{key[1]}: {field.split('_')[0]} pixels differ from the reference")
    if problems and reference.get("libjpeg") != current.get("libjpeg"):
        problems.append(
            f"(the reference was made with libjpeg {reference.get('libjpeg')}, this run uses "
            f"{current.get('libjpeg')}: JPEG tasks differ between libjpeg builds)"
        )
    return problems


def main(argv=None) -> int:
    p = cli.ArgumentParser(
        prog="python -m baryir_jax.evaluate.unseen",
        description="Write the unseen-degradation suite as PNG files plus its checksum "
        "manifest, to score other methods on identical inputs.",
    )
    p.add_argument("--data_dir", required=True, help="prepared data sets (needs cbsd68, or embedded)")
    p.add_argument("--output", required=True, help="folder for <task>/input/*.png, <task>/target/*.png, manifest")
    p.add_argument("--collection", default="benchmark", choices=("benchmark", "embedded"))
    args = p.parse_args(argv)
    from PIL import Image

    from baryir_jax.data import sources
    from baryir_jax.data.report import DataError

    try:
        cleans = [(ex.name, ex.clean) for ex in sources.load_eval_task(args.data_dir, SOURCE_TASK, args.collection)]
    except DataError as e:
        print(f"unseen: {e}", file=sys.stderr)
        return 1
    entries = []
    for ex in build(cleans):
        for sub, img in (("input", ex.degraded), ("target", ex.clean)):
            path = os.path.join(args.output, ex.task, sub, stem(ex.name) + ".png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(img).save(path)
        entries.append(entry(ex))
    m = manifest(entries)
    with open(os.path.join(args.output, "unseen_manifest.json"), "w") as f:
        json.dump(m, f, indent=1)
    print(
        f"{m['count']} inputs ({len(cleans)} clean images x {len(TASKS)} tasks) in {args.output}; "
        f"fingerprint {m['fingerprint']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
