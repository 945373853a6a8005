"""A deterministic parameter pattern for parity fixtures: every value is a function of the parameter's name.

The parity fixture stores no weights. Both the fixture generator (which fills the official PyTorch model) and the
test (which rebuilds the state dict and converts it) fill every state-dict entry with :func:`fill_pattern`:

* a stable seed: the first 8 bytes of SHA-256 of the state-dict key, as a little-endian integer;
* ``numpy.random.default_rng(seed).uniform(lo, hi, shape)`` in float64, cast to float32, with
  * MDTA temperatures (``…temperature``): [0.5, 1.5];
  * other 1-D ``…weight`` (LayerNorm scales): [0.9, 1.1];
  * 1-D ``…bias``: [-0.1, 0.1];
  * everything else (conv and linear weights): ±1/√fan_in, fan_in = prod(shape[1:]) (PyTorch's own bound).
"""

from __future__ import annotations

import hashlib

import numpy as np


def stable_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def fill_pattern(name: str, shape) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(stable_seed(name))
    if name.endswith("temperature"):
        lo, hi = 0.5, 1.5
    elif len(shape) == 1 and name.endswith("weight"):
        lo, hi = 0.9, 1.1
    elif len(shape) == 1:
        lo, hi = -0.1, 0.1
    else:
        bound = 1.0 / np.sqrt(max(int(np.prod(shape[1:])), 1))
        lo, hi = -bound, bound
    return rng.uniform(lo, hi, shape).astype(np.float32)


def pattern_state_dict(keys_and_shapes) -> dict[str, np.ndarray]:
    return {k: fill_pattern(k, s) for k, s in keys_and_shapes}
