"""Closed-form barycenters and the metrics that compare a learned game against them (float64 numpy).

Conventions: c(x, y) = ½‖x − y‖²; W2² is the usual squared 2-Wasserstein distance *without* the ½, so the
barycenter cost is B* = Σ_k λ_k OT_c(P_k, Q*) = ½ Σ_k λ_k W2²(P_k, Q*).

* Gaussians (and location-scatter families): Q* = N(m̄, Σ̄), m̄ = Σ λ_k m_k, Σ̄ the SPD fixed point
  Σ̄ = Σ_k λ_k (Σ̄^½ Σ_k Σ̄^½)^½ (Álvarez-Esteban, del Barrio, Cuesta-Albertos, Matrán 2016); the optimal map
  P_k → Q* is T*_k(x) = m̄ + A_k (x − m_k), A_k = Σ_k^{-½}(Σ_k^½ Σ̄ Σ_k^½)^½ Σ_k^{-½}.
* 1-D: the barycenter's quantile function is Σ_k λ_k F_k^{-1}; T*_k = F_{Q*}^{-1} ∘ F_k.
* L2-UVP(T̂_k) = 100·E_{x~P_k}‖T̂_k(x) − T*_k(x)‖² / Var(Q*), Var = tr Σ̄;
  BW2-UVP = 100·W2²(N(μ̂, Σ̂), Q*) / Var(Q*) with μ̂, Σ̂ the sample moments of T̂_k#P_k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + np.swapaxes(a, -1, -2))


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix (eigh; negative rounding → 0)."""
    w, v = np.linalg.eigh(_sym(np.asarray(a, dtype=np.float64)))
    return _sym((v * np.sqrt(np.clip(w, 0.0, None))) @ v.T)


def inv_sqrtm_spd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(_sym(np.asarray(a, dtype=np.float64)))
    if np.min(w) <= 0:
        raise ValueError("matrix is not positive definite")
    return _sym((v / np.sqrt(w)) @ v.T)


def _check_gaussians(means, covs, weights):
    means = np.asarray(means, dtype=np.float64)
    covs = np.asarray(covs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if means.ndim != 2 or covs.shape != means.shape + (means.shape[1],) or w.shape != means.shape[:1]:
        raise ValueError(
            f"expected means (K, D), covs (K, D, D), weights (K,); got {means.shape}, {covs.shape}, {w.shape}"
        )
    if np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-12):
        raise ValueError(f"weights must be non-negative and sum to 1, got {w.tolist()}")
    return means, covs, w


def barycenter_covariance(
    covs: np.ndarray,
    weights: np.ndarray,
    *,
    tol: float = 1e-13,
    max_iter: int = 10_000,
    init: np.ndarray | None = None,
    return_info: bool = False,
):
    """Σ̄ by the fixed point S ← S^{-½}(Σ_k λ_k (S^½ Σ_k S^½)^½)² S^{-½}, from S_0 = I (or ``init``).

    Stops when the relative change ‖S_{n+1} − S_n‖_F / ‖S_n‖_F < tol. With ``return_info`` also returns
    ``{'iterations', 'residual'}``, residual = ‖Σ_k λ_k (S^½Σ_kS^½)^½ − S‖_F / ‖S‖_F (the defining equation).
    """
    covs = np.asarray(covs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    s = np.eye(covs.shape[-1]) if init is None else np.asarray(init, dtype=np.float64)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned in the info)
        r = sqrtm_psd(s)
        r_inv = inv_sqrtm_spd(s)
        m = sum(wk * sqrtm_psd(r @ ck @ r) for wk, ck in zip(w, covs))
        s_new = _sym(r_inv @ m @ m @ r_inv)
        delta = np.linalg.norm(s_new - s) / np.linalg.norm(s)
        s = s_new
        if delta < tol:
            break
    if not return_info:
        return s
    r = sqrtm_psd(s)
    res = np.linalg.norm(sum(wk * sqrtm_psd(r @ ck @ r) for wk, ck in zip(w, covs)) - s) / np.linalg.norm(s)
    return s, {"iterations": it, "residual": float(res)}


def gaussian_barycenter(means, covs, weights, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """W2 barycenter N(m̄, Σ̄) of N(m_k, Σ_k) with weights λ (sum 1): returns (m̄ (D,), Σ̄ (D, D))."""
    means, covs, w = _check_gaussians(means, covs, weights)
    return w @ means, barycenter_covariance(covs, w, **kwargs)


def w2_sq_gaussian(m1, c1, m2, c2) -> float:
    """W2²(N(m1, C1), N(m2, C2)) = ‖m1 − m2‖² + tr(C1 + C2 − 2 (C1^½ C2 C1^½)^½) (no ½)."""
    m1, m2 = np.asarray(m1, np.float64), np.asarray(m2, np.float64)
    c1, c2 = np.asarray(c1, np.float64), np.asarray(c2, np.float64)
    r = sqrtm_psd(c1)
    cross = sqrtm_psd(r @ c2 @ r)
    return float(np.sum((m1 - m2) ** 2) + max(np.trace(c1 + c2 - 2.0 * cross), 0.0))


def gaussian_map_matrix(c_src, c_dst) -> np.ndarray:
    """A with T(x) = m_dst + A (x − m_src) the optimal map N(m_src, C_src) → N(m_dst, C_dst) (A symmetric)."""
    r = sqrtm_psd(c_src)
    r_inv = inv_sqrtm_spd(c_src)
    return _sym(r_inv @ sqrtm_psd(r @ np.asarray(c_dst, np.float64) @ r) @ r_inv)


def barycenter_maps(means, covs, mean_bar, cov_bar) -> list[Callable[[np.ndarray], np.ndarray]]:
    """The optimal maps T*_k: P_k → Q*, as functions of a batch x (n, D) → (n, D)."""
    maps = []
    for m, c in zip(np.asarray(means, np.float64), np.asarray(covs, np.float64)):
        a = gaussian_map_matrix(c, cov_bar)
        maps.append(lambda x, a=a, m=m: np.asarray(mean_bar) + (np.asarray(x, np.float64) - m) @ a.T)
    return maps


def barycenter_cost(means, covs, weights, mean_bar=None, cov_bar=None) -> float:
    """B* = Σ_k λ_k OT_c(P_k, Q*) = ½ Σ_k λ_k W2²(P_k, Q*) for the ½‖·‖² cost."""
    means, covs, w = _check_gaussians(means, covs, weights)
    if mean_bar is None or cov_bar is None:
        mean_bar, cov_bar = gaussian_barycenter(means, covs, w)
    return 0.5 * float(sum(wk * w2_sq_gaussian(m, c, mean_bar, cov_bar) for wk, m, c in zip(w, means, covs)))


# ---------------------------------------------------------------------------------------------------- 1-D


def quantile_barycenter(quantile_fns: Sequence[Callable], weights) -> Callable:
    """Quantile function of the 1-D barycenter: t ↦ Σ_k λ_k F_k^{-1}(t)."""
    w = np.asarray(weights, np.float64)

    def q(t):
        return sum(wk * np.asarray(fk(t), np.float64) for wk, fk in zip(w, quantile_fns))

    return q


def barycenter_1d(samples: Sequence[np.ndarray], weights) -> np.ndarray:
    """Empirical 1-D barycenter of equal-size samples: sort each, average index by index (sorted, (n,))."""
    xs = np.stack([np.sort(np.asarray(s, np.float64).reshape(-1)) for s in samples])
    w = np.asarray(weights, np.float64)
    if w.shape != xs.shape[:1]:
        raise ValueError(f"{xs.shape[0]} samples but {w.shape} weights")
    return w @ xs


def barycenter_maps_1d(samples: Sequence[np.ndarray], weights) -> list[np.ndarray]:
    """Empirical T*_k = F_{Q*}^{-1} ∘ F_k: for each k, the barycenter point matched to each x_k (input order)."""
    bar = barycenter_1d(samples, weights)
    out = []
    for s in samples:
        s = np.asarray(s, np.float64).reshape(-1)
        ranks = np.empty(s.size, dtype=np.int64)
        ranks[np.argsort(s, kind="stable")] = np.arange(s.size)
        out.append(bar[ranks])
    return out


# ------------------------------------------------------------------------------------------------ metrics


def l2_uvp(mapped, optimal, var_bar: float) -> float:
    """100·mean‖T̂(x) − T*(x)‖² / Var(Q*) for matched batches (n, D) of the learned and the optimal map."""
    d = np.asarray(mapped, np.float64) - np.asarray(optimal, np.float64)
    return float(100.0 * np.mean(np.sum(d.reshape(d.shape[0], -1) ** 2, axis=-1)) / var_bar)


def bw2_uvp(samples, mean_bar, cov_bar) -> float:
    """100·W2²(N(μ̂, Σ̂), N(m̄, Σ̄)) / tr Σ̄, μ̂ and Σ̂ the moments of ``samples`` (n, D)."""
    x = np.asarray(samples, np.float64)
    mu = x.mean(axis=0)
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    cov_bar = np.atleast_2d(np.asarray(cov_bar, np.float64))
    return float(100.0 * w2_sq_gaussian(mu, cov, mean_bar, cov_bar) / np.trace(cov_bar))


# ----------------------------------------------------------------------------------- random covariances


def random_rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    """Haar-distributed orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def eigen_warped_covariance(rng: np.random.Generator, dim: int, low: float = 0.5, high: float = 2.0) -> np.ndarray:
    """Σ = W Wᵀ, W = R·diag(exp(linspace(log low, log high, D))), R a random rotation (NOTB EigenWarp).

    The eigenvalues of Σ lie in [low², high²] = [0.25, 4] by default.
    """
    scales = np.exp(np.linspace(np.log(low), np.log(high), dim))
    w = random_rotation(rng, dim) * scales
    return _sym(w @ w.T)
