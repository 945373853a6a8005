"""Frozen evaluation inputs: the checksum manifest of the noisy test images, and its verification.

The noisy CBSD68 (and embedded) test images are generated once, at build time, by
`degradations.frozen_noisy(clean, stem, sigma)`. `write_manifest` records, per image, the SHA-256 of the
clean and noisy pixels (uint8 HWC bytes, so independent of the PNG encoder) and one `fingerprint` over all of
them: two users whose fingerprints agree evaluate on identical inputs. `verify_frozen_inputs` re-reads the
stored images, checks them against the manifest and regenerates the noise from the clean images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from baryir_jax.data import degradations
from baryir_jax.data.images import pixel_sha256, stem
from baryir_jax.data.report import DataError
from baryir_jax.data.sources import get_builder, is_prepared, load_eval_split

MANIFEST_NAME = "frozen_inputs.json"
FROZEN_SPLITS = {
    "cbsd68": {"sigma15": 15, "sigma25": 25, "sigma50": 50},
    "embedded": {"test_denoise_15": 15, "test_denoise_25": 25, "test_denoise_50": 50},
}
PROTOCOL = (
    "noisy = clip(clean + N(0,1)*sigma, 0, 255).astype(uint8) (truncating), N = "
    "numpy.random.default_rng(seed).standard_normal(clean.shape) (float64), seed = first 8 bytes "
    '(big-endian) of sha256("<file stem>|sigma=<sigma>"); hashes are sha256 of "HxWx3:" + uint8 HWC bytes'
)


def build_manifest(data_dir: str | Path, dataset: str) -> dict:
    if dataset not in FROZEN_SPLITS:
        raise DataError(f"{dataset} has no frozen inputs (only {', '.join(FROZEN_SPLITS)}).")
    entries = []
    for split, sigma in FROZEN_SPLITS[dataset].items():
        for ex in load_eval_split(data_dir, dataset, split):
            entries.append(
                {
                    "split": split,
                    "name": ex.name,
                    "sigma": sigma,
                    "clean_sha256": pixel_sha256(ex.clean),
                    "noisy_sha256": pixel_sha256(ex.degraded),
                }
            )
    lines = "\n".join(f"{e['split']} {e['name']} {e['clean_sha256']} {e['noisy_sha256']}" for e in entries)
    return {
        "dataset": dataset,
        "protocol": PROTOCOL,
        "numpy": np.__version__,
        "count": len(entries),
        "fingerprint": hashlib.sha256(lines.encode()).hexdigest(),
        "entries": entries,
    }


def manifest_path(data_dir: str | Path, dataset: str) -> Path:
    return Path(get_builder(data_dir, dataset, progress=False).data_dir) / MANIFEST_NAME


def write_manifest(data_dir: str | Path, dataset: str) -> Path:
    manifest = build_manifest(data_dir, dataset)
    path = manifest_path(data_dir, dataset)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(data_dir: str | Path, dataset: str) -> dict:
    path = manifest_path(data_dir, dataset)
    if not path.exists():
        raise DataError(f"no {MANIFEST_NAME} in {path.parent}: prepare {dataset} with baryir-prepare (it writes it).")
    return json.loads(path.read_text())


def verify_frozen_inputs(data_dir: str | Path, dataset: str = "cbsd68") -> list[str]:
    """Problems found (empty list: the stored noisy images match the manifest and the frozen-noise protocol)."""
    builder = get_builder(data_dir, dataset, progress=False)
    if not is_prepared(builder):
        raise DataError(f"{dataset} is not prepared in {data_dir}.")
    manifest = read_manifest(data_dir, dataset)
    expected = {(e["split"], e["name"]): e for e in manifest["entries"]}
    problems, seen = [], set()
    for split, sigma in FROZEN_SPLITS[dataset].items():
        for ex in load_eval_split(data_dir, dataset, split):
            seen.add((split, ex.name))
            e = expected.get((split, ex.name))
            if e is None:
                problems.append(f"{split}/{ex.name}: not in the manifest")
                continue
            if pixel_sha256(ex.clean) != e["clean_sha256"]:
                problems.append(f"{split}/{ex.name}: clean image differs from the manifest")
            if pixel_sha256(ex.degraded) != e["noisy_sha256"]:
                problems.append(f"{split}/{ex.name}: noisy image differs from the manifest")
            if not np.array_equal(degradations.frozen_noisy(ex.clean, stem(ex.name), sigma), ex.degraded):
                problems.append(
                    f"{split}/{ex.name}: regenerating the frozen noise from the clean image gives other "
                    f"pixels (NumPy {np.__version__} vs {manifest.get('numpy')} at prepare time?)"
                )
    for key in sorted(set(expected) - seen):
        problems.append(f"{key[0]}/{key[1]}: in the manifest, missing from the data")
    return problems
