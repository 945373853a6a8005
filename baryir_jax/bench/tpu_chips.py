"""TPU chips and slices for ``baryir-preflight``: each generation's published per-chip figures (:data:`CHIPS`, with
their sources), Cloud TPU accelerator names ('v5e-16', 'v4-8', ...) parsed to a chip grid, its libtpu topology name
and host layout (:func:`parse_accelerator`), and the slice's devices as libtpu describes them without a TPU
(:func:`topology_devices`)."""

from __future__ import annotations

import dataclasses
import math
import os
import re

from baryir_jax.errors import UsageError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures of one TPU generation (Google Cloud TPU documentation, ``source``)."""

    generation: str  # 'v4', 'v5e', 'v5p', 'v6e'
    topology_prefix: str  # how libtpu names its topologies: 'v4', 'v5e', 'v5', 'v6e'
    peak_bf16_flops: float  # FLOP/s per chip
    hbm_bytes: int  # HBM capacity per chip
    hbm_bandwidth: float  # bytes/s per chip
    source: str
    cores_in_name: bool  # the accelerator-type number counts TensorCores (2 per chip, megacore), not chips
    max_single_host_chips: int  # slices up to this many chips are one host; larger ones have 4 chips per host


# Per-chip figures, each from its Google Cloud TPU documentation page ("System architecture" tables):
CHIPS = {
    # https://cloud.google.com/tpu/docs/v4: "Peak compute per chip 275 teraflops (bf16 or int8)", "HBM2 capacity
    # and bandwidth 32 GiB, 1200 GBps"; one chip = 2 TensorCores (megacore), 4 chips per host.
    "v4": Chip("v4", "v4", 275e12, 32 * GiB, 1200e9, "https://cloud.google.com/tpu/docs/v4", True, 4),
    # https://cloud.google.com/tpu/docs/v5e: "Peak compute per chip (bf16) 197 TFLOPs", "HBM2 capacity and
    # bandwidth 16 GB, 819 GBps"; slices of 1, 4 and 8 chips are one host, larger ones 4 chips per host.
    "v5e": Chip("v5e", "v5e", 197e12, 16 * GiB, 819e9, "https://cloud.google.com/tpu/docs/v5e", False, 8),
    # https://cloud.google.com/tpu/docs/v5p: "Peak compute per chip (bf16) 459 TFLOPs", "HBM2e capacity and
    # bandwidth 95GB, 2765 GBps"; one chip = 2 TensorCores (megacore), 4 chips per host.
    "v5p": Chip("v5p", "v5", 459e12, 95 * GiB, 2765e9, "https://cloud.google.com/tpu/docs/v5p", True, 4),
    # https://cloud.google.com/tpu/docs/v6e: "Peak compute per chip (bf16) 918 TFLOPs", "HBM capacity per chip
    # 32 GB", "HBM bandwidth per chip 1638 GBps"; slices of 1, 4 and 8 chips are one host, larger ones 4 per host.
    "v6e": Chip("v6e", "v6e", 918e12, 32 * GiB, 1638e9, "https://cloud.google.com/tpu/docs/v6e", False, 8),
}

# Accelerator names as MaxText's accelerator_to_spec_map (github.com/AI-Hypercomputer/maxtext) and gcloud use them:
# '<generation>-<count>' → chip grid. The count is chips for v5e/v6e, TensorCores (2 per chip) for v4/v5p.
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_WRAP_2D = {128: (False, True, False), 256: (True, True, False)}
_GRIDS_3D = {
    4: (2, 2, 1),
    8: (2, 2, 2),
    16: (2, 2, 4),
    32: (2, 4, 4),
    64: (4, 4, 4),
    128: (4, 4, 8),
    256: (4, 8, 8),
    512: (8, 8, 8),
    1024: (8, 8, 16),
    2048: (8, 16, 16),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}


class PreflightError(UsageError):
    """A bad argument or config: one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str  # as given
    chip: Chip
    chips: int
    grid: tuple[int, ...]
    wrap: tuple[bool, bool, bool]

    @property
    def topology_name(self) -> str:
        return f"{self.chip.topology_prefix}:" + "x".join(str(g) for g in self.grid)

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        if self.chips <= self.chip.max_single_host_chips:
            return tuple(self.grid) + (1,) * (3 - len(self.grid))
        return (2, 2, 1)

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.chips_per_host_bounds)

    @property
    def chip_config_name(self) -> str:
        return "megacore" if self.chip.cores_in_name else "default"


def known_accelerators() -> list[str]:
    names = [f"{g}-{n}" for g in ("v5e", "v6e") for n in _GRIDS_2D]
    names += [f"{g}-{2 * n}" for g in ("v4", "v5p") for n in _GRIDS_3D]
    return names


def parse_accelerator(name: str) -> Accelerator:
    """'v5e-16' / 'v5litepod-16' / 'v6e-8' / 'v4-8' / 'v5p-8' → :class:`Accelerator` (MaxText's table)."""
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    gen = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if gen not in CHIPS:
        raise PreflightError(
            f"--accelerator {name!r}: unknown TPU type; use a Cloud TPU accelerator type such as v5e-16 "
            f"(= v5litepod-16), v6e-8, v4-8, v5p-8 (known: {', '.join(known_accelerators())})"
        )
    chip, count = CHIPS[gen], int(m.group(2))
    if chip.cores_in_name:
        if count % 2 or count // 2 not in _GRIDS_3D:
            raise PreflightError(
                f"--accelerator {name!r}: {gen} sizes count TensorCores (2 per chip); known: "
                f"{', '.join(f'{gen}-{2 * n}' for n in _GRIDS_3D)}"
            )
        chips = count // 2
        grid = _GRIDS_3D[chips]
        wrap = (True, True, True) if chips >= 64 else (False, False, False)
    else:
        if count not in _GRIDS_2D:
            raise PreflightError(
                f"--accelerator {name!r}: no {gen} slice of {count} chips; known: "
                f"{', '.join(f'{gen}-{n}' for n in _GRIDS_2D)}"
            )
        chips, grid = count, _GRIDS_2D[count]
        wrap = _WRAP_2D.get(count, (False, False, False))
    return Accelerator(name, chip, chips, grid, wrap)


def _need_libtpu():
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise PreflightError(
            "libtpu is not installed: the preflight compiles with XLA:TPU, which ships in libtpu; install the tpu "
            'extra (pip install -e ".[tpu]") — it runs on any Linux x86-64 host, no TPU needed'
        ) from None


def _cloud_type(acc: Accelerator) -> str:
    n = acc.chips * (2 if acc.chip.cores_in_name else 1)
    return f"{'v5litepod' if acc.chip.generation == 'v5e' else acc.chip.generation}-{n}"


def topology_devices(acc: Accelerator):
    """The devices of ``acc`` as libtpu describes them (``jax.Device`` objects of platform 'tpu' with their
    process indices: one process per host)."""
    _need_libtpu()
    # libtpu looks for the TPU VM it runs on when it loads: name the slice and say there is no other worker, so
    # that it does not print warnings about the metadata server (the compiled program is the same either way),
    # and skip its one-process-per-TPU lockfile (compiling needs no TPU; a training run may hold the lock).
    for key, value in (
        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
        ("TPU_SKIP_MDS_QUERY", "1"),
        ("TPU_WORKER_HOSTNAMES", "localhost"),
        ("TPU_ACCELERATOR_TYPE", _cloud_type(acc)),
    ):
        os.environ.setdefault(key, value)
    from jax.experimental import topologies

    return topologies.get_topology_desc(
        platform="tpu",
        topology_name=acc.topology_name,
        chip_config_name=acc.chip_config_name,
        chips_per_host_bounds=acc.chips_per_host_bounds,
        num_slices=1,
        wrap=acc.wrap,
    ).devices
