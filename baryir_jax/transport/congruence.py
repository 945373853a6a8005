"""Congruence of the potentials (Σ_k λ_k f_k ≡ 0), the weights λ, and degradation id → potential index.

Potential values are always an array of shape (N, K): all K potentials evaluated at N points.

Congruence modes (`MODES`):

* ``'penalty'``: BaryIR's own mechanism. The potentials are used as they are (f_k = g_k) and the potential
  player adds the soft penalty κ·(Σ_k λ_k f_k(y))², κ = 10, at the last point of the batch (official) or
  averaged over the batch (`penalty(..., points='batch')`).
* ``'exact'``: NOTB's parametrisation f_k = g_k − Σ_{i≠k} λ_i g_i / ((K−1) λ_k). Congruent for any K ≥ 2 and
  any positive λ (Σλ = 1 not needed).
* ``'centered'``: f_k = g_k − Σ_i λ_i g_i / Σ_i λ_i (the poster / CRWB form; with Σλ = 1 it is
  g_k − Σ_i λ_i g_i). Congruent for any positive λ.
* ``'none'``: f_k = g_k and no penalty. The game is then unbounded; for ablations and tests only.

With K = 1 the only congruent potential is f ≡ 0, which both exact modes return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("penalty", "exact", "centered", "none")
EXACT_MODES = ("exact", "centered")
PENALTY_POINTS = ("last", "batch")

# BaryIR's degradation ids: 0, 1, 2 = Gaussian noise σ 15/25/50 (one "denoise" source), 3 derain, 4 dehaze,
# 5 deblur, 6 lowlight, 7 and above user sources. Only the grouping matters here.
BARYIR_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1, 2),)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown congruence mode {mode!r}; known: {MODES}")
    return mode


def lambdas_from_counts(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    """λ_k = (1/n_k) / Σ_j (1/n_j): weights inversely proportional to the sample counts (BaryIR §3.4).

    Returns a float64 numpy array of shape (K,) that sums to 1.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ValueError(f"counts must be finite and positive, got {c.tolist()}")
    inv = 1.0 / c
    return inv / inv.sum()


def normalize_weights(weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Checks λ (positive, finite, 1-D) and rescales it to sum to 1 (float64)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be finite and positive, got {w.tolist()}")
    return w / w.sum()


class PotentialIndex:
    """Maps raw degradation ids to potential indices 0..K-1, for any subset of degradations.

    ``groups`` lists ids that share one potential (BaryIR: the three noise levels, `BARYIR_GROUPS`); every other
    id gets its own potential. Potentials are ordered by the smallest id of their group, which for BaryIR's
    numbering is the canonical order denoise, derain, dehaze, deblur, lowlight, then other sources by id; only
    sources with at least one id in ``degradation_ids_present`` get a potential. (The official mapping
    ``k = 0 if id < 3 else id − 2`` is wrong whenever no noise source is present.)

    * ``index.indices(ids)``: host-side lookup with validation (ValueError naming unknown ids).
    * ``index(ids)`` / ``index.lookup(ids)``: jit-friendly ``jnp`` lookup through the table ``index.table``;
      ids outside the present set give −1 there (such samples get weight 0 in `game`'s objectives). Validate
      host batches with ``index.check(ids)`` before they enter jit.
    """

    def __init__(self, degradation_ids_present: Iterable[int], groups: Sequence[Sequence[int]] = BARYIR_GROUPS):
        present = sorted({int(i) for i in degradation_ids_present})
        if not present:
            raise ValueError("PotentialIndex needs at least one degradation id")
        if present[0] < 0:
            raise ValueError(f"degradation ids must be non-negative, got {present[0]}")
        group_of: dict[int, int] = {}
        for g in groups:
            members = sorted({int(i) for i in g})
            for i in members:
                if i in group_of:
                    raise ValueError(f"degradation id {i} appears in more than one group")
                group_of[i] = members[0]
        # key of a source = smallest id of its group (or the id itself)
        keys = sorted({group_of.get(i, i) for i in present})
        self.num_potentials: int = len(keys)
        self.potential_of_id: dict[int, int] = {i: keys.index(group_of.get(i, i)) for i in present}
        self.ids_of_potential: list[list[int]] = [
            [i for i in present if self.potential_of_id[i] == k] for k in range(self.num_potentials)
        ]
        table = np.full(present[-1] + 1, -1, dtype=np.int32)
        for i, k in self.potential_of_id.items():
            table[i] = k
        self.table: np.ndarray = table

    @property
    def known_ids(self) -> list[int]:
        return sorted(self.potential_of_id)

    def check(self, ids) -> None:
        """Raises ValueError if any of the (host) ids is not one of the present degradation ids."""
        arr = np.asarray(ids).reshape(-1)
        unknown = sorted({int(i) for i in arr} - set(self.potential_of_id))
        if unknown:
            raise ValueError(f"unknown degradation id(s) {unknown}; known ids: {self.known_ids}")

    def indices(self, ids) -> np.ndarray:
        """Host-side lookup (numpy int32, same shape as ``ids``); ValueError for unknown ids."""
        self.check(ids)
        return self.table[np.asarray(ids, dtype=np.int64)]

    def lookup(self, ids: jax.Array) -> jax.Array:
        """jit-friendly lookup; unknown or out-of-range ids give −1."""
        table = jnp.asarray(self.table)
        ids = jnp.asarray(ids).astype(jnp.int32)
        found = table.at[ids].get(mode="fill", fill_value=-1)
        return jnp.where(ids < 0, -1, found)  # negative ids would otherwise wrap around

    __call__ = lookup

    def source_counts(self, counts_by_id: Mapping[int, float]) -> np.ndarray:
        """Sums per-id sample counts into per-potential counts (K,), e.g. for `lambdas_from_counts`."""
        self.check(list(counts_by_id))
        missing = [i for i in self.known_ids if i not in counts_by_id]
        if missing:
            raise ValueError(f"no count given for degradation id(s) {missing}")
        out = np.zeros(self.num_potentials, dtype=np.float64)
        for i, n in counts_by_id.items():
            out[self.potential_of_id[int(i)]] += float(n)
        return out

    def __repr__(self) -> str:
        return f"PotentialIndex(ids_of_potential={self.ids_of_potential})"


def apply_congruence(g_values: jax.Array, lam: jax.Array, mode: str) -> jax.Array:
    """Turns raw potential values g (N, K) into f (N, K) according to ``mode`` (see the module docstring).

    'exact' and 'centered' return congruent values (Σ_k λ_k f_k = 0 at every point); 'penalty' and 'none'
    return g unchanged.
    """
    check_mode(mode)
    if mode in ("penalty", "none"):
        return g_values
    g = jnp.asarray(g_values)
    lam = jnp.asarray(lam, dtype=g.dtype)
    k = g.shape[-1]
    if lam.shape != (k,):
        raise ValueError(f"lam has shape {lam.shape}, potentials have K={k}")
    if k == 1:
        return jnp.zeros_like(g)
    weighted = jnp.sum(g * lam, axis=-1, keepdims=True)  # Σ_i λ_i g_i, (N, 1)
    if mode == "centered":
        return g - weighted / jnp.sum(lam)
    # exact (NOTB make_f_pot): Σ_{i≠k} λ_i g_i = weighted − λ_k g_k
    return g - (weighted - lam * g) / ((k - 1) * lam)


def weighted_sum(values: jax.Array, lam: jax.Array) -> jax.Array:
    """Σ_k λ_k f_k at every point: (N,)."""
    return jnp.sum(values * jnp.asarray(lam, dtype=values.dtype), axis=-1)


def penalty(values_at_points: jax.Array, lam: jax.Array, kappa: float = 10.0, points: str = "last") -> jax.Array:
    """Soft congruence penalty κ·(Σ_k λ_k f_k(y))².

    ``points='last'``: at the last point only (official BaryIR, the last sample of the batch);
    ``points='batch'``: averaged over all N points.
    """
    s = weighted_sum(values_at_points, lam)
    if points == "last":
        return kappa * s[-1] ** 2
    if points == "batch":
        return kappa * jnp.mean(s**2)
    raise ValueError(f"unknown penalty points {points!r}; known: {PENALTY_POINTS}")


def residual(values: jax.Array, lam: jax.Array) -> jax.Array:
    """Relative congruence residual max_n |Σ_k λ_k f_k(y_n)| / max_{n,k} |f_k(y_n)| (0 if f ≡ 0)."""
    num = jnp.max(jnp.abs(weighted_sum(values, lam)))
    den = jnp.max(jnp.abs(values))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
