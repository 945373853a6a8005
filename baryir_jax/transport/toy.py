"""The ground-truth check as a command: train the barycenter game on random Gaussians, score it exactly.

    python -m baryir_jax.transport.toy --dim 2 --k 3 --weights .25,.25,.5 --epochs 500 --seed 0

Sources P_k = N(m_k, Σ_k) with eigen-warped covariances (NOTB's EigenWarp benchmark: Σ_k = R_k diag(s²) R_kᵀ,
eigenvalues in [¼, 4], R_k random rotations) and zero means unless ``--mean-scale`` > 0. With ``--base
uniform`` the sources are the location-scatter family m_k + Σ_k^½ Z, Z uniform on a cube with identity
covariance, which has the same closed-form barycenter and maps.

Setup of NOTB's ``Gauss2D`` notebook: per-source maps T_k and potentials g_k are MLPs D → H → H → H → (D | 1),
ReLU, PyTorch-default init, H = max(100, 2D); Adam 5e-4 for both players; batch 1000 per source; cost ½‖x − y‖²;
``--inner-steps`` (default 10) map updates on fresh batches per potential update, which uses the last batch;
congruence by NOTB's exact parametrisation unless ``--congruence`` says otherwise. The step is
`baryir_jax.transport.game.game_step`, the same function that trains BaryIR.

Prints ONE JSON line. Scores are on the final iterate, on ``--eval-samples`` fresh samples per source:

* ``l2_uvp`` / ``bw2_uvp``: λ-weighted sums of the per-source L2-UVP and BW2-UVP (in %), also per source;
* ``loss``: L = Σ_k λ_k E[½‖x − T_k x‖² − f_k(T_k x)] (NOTB's scale), to compare with ``closed_form_cost``
  B* = ½ Σ_k λ_k W2²(P_k, Q*);
* ``congruence_residual``: max |Σ_k λ_k f_k(y)| / max |f_k(y)| over all pushforward points y;
* ``seconds``: training wall time including compilation; ``seconds_per_epoch`` excludes the first epoch.

Non-finite numbers are printed as null (and ``finite`` is false). ``--weights`` must have ``--k`` positive
entries summing to 1 (±1e-6); other input is refused with a message, not normalised silently.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from baryir_jax.transport import congruence as cg
from baryir_jax.transport import costs, game, gaussian

# ------------------------------------------------------------------------------------------------ networks


def mlp_init(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
    """PyTorch-default Linear init: weight and bias U(±1/√fan_in)."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / math.sqrt(fan_in)
        params.append(
            {
                "w": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound),
                "b": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
            }
        )
    return params


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def init_maps(key: jax.Array, k: int, dim: int, hidden: int, layers: int) -> list:
    """Per-source maps T_k, stacked along a leading K axis."""
    sizes = [dim] + [hidden] * layers + [dim]
    return jax.vmap(lambda kk: mlp_init(kk, sizes))(jax.random.split(key, k))


def apply_maps(map_params, x: jax.Array) -> jax.Array:
    """x (K, B, D) → (T_k(x_k))_k (K, B, D)."""
    return jax.vmap(mlp_apply)(map_params, x)


def init_potentials(key: jax.Array, k: int, dim: int, hidden: int, layers: int) -> dict:
    sizes = [dim] + [hidden] * layers + [1]
    keys = jax.random.split(key, k)
    return {name: mlp_init(keys[i], sizes) for i, name in enumerate(game.potential_keys(k))}


def apply_potentials(pot_params: dict, y: jax.Array) -> jax.Array:
    """All K raw potentials at every point: y (N, D) → (N, K)."""
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[pot_params[n] for n in game.potential_keys(len(pot_params))])
    return jax.vmap(mlp_apply, in_axes=(0, None))(stacked, y)[..., 0].T


# ------------------------------------------------------------------------------------------------ problem


class Problem:
    """K sources m_k + Σ_k^½ Z and their exact barycenter N(m̄, Σ̄)."""

    def __init__(self, dim: int, weights: np.ndarray, seed: int, base: str = "gaussian", mean_scale: float = 0.0):
        rng = np.random.default_rng(seed)
        k = len(weights)
        self.dim, self.k, self.base = dim, k, base
        self.weights = np.asarray(weights, np.float64)
        self.covs = np.stack([gaussian.eigen_warped_covariance(rng, dim) for _ in range(k)])
        self.means = mean_scale * rng.standard_normal((k, dim))
        self.roots = np.stack([gaussian.sqrtm_psd(c) for c in self.covs])
        self.mean_bar, self.cov_bar = gaussian.gaussian_barycenter(self.means, self.covs, self.weights)
        self.var_bar = float(np.trace(self.cov_bar))
        self.maps = gaussian.barycenter_maps(self.means, self.covs, self.mean_bar, self.cov_bar)
        self.cost = gaussian.barycenter_cost(self.means, self.covs, self.weights, self.mean_bar, self.cov_bar)

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Samples of shape shape + (K, n, D) (jit-able)."""
        *lead, n = shape
        full = tuple(lead) + (self.k, n, self.dim)
        if self.base == "gaussian":
            z = jax.random.normal(key, full, jnp.float32)
        else:  # uniform on [−√3, √3]^D: mean 0, covariance I
            z = jax.random.uniform(key, full, jnp.float32, -math.sqrt(3.0), math.sqrt(3.0))
        roots = jnp.asarray(self.roots, jnp.float32)
        means = jnp.asarray(self.means, jnp.float32)
        return jnp.einsum("...kni,kji->...knj", z, roots) + means[:, None, :]


# ------------------------------------------------------------------------------------------------ training


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    """Trains and scores one configuration; returns the JSON record (see the module docstring)."""
    weights = parse_weights(cfg.weights, cfg.k)
    hidden = cfg.hidden if cfg.hidden else max(100, 2 * cfg.dim)
    problem = Problem(cfg.dim, weights, cfg.seed, cfg.base, cfg.mean_scale)
    lam = jnp.asarray(weights, jnp.float32)
    k, b, steps = cfg.k, cfg.batch, cfg.inner_steps

    key = jax.random.key(cfg.seed)
    key, k_map, k_pot, k_eval = jax.random.split(key, 4)
    map_params = init_maps(k_map, k, cfg.dim, hidden, cfg.layers)
    pot_params = init_potentials(k_pot, k, cfg.dim, hidden, cfg.layers)
    map_tx = optax.adam(cfg.lr)
    pot_tx = optax.adam(cfg.potential_lr if cfg.potential_lr else cfg.lr)
    state = game.init_state(map_params, pot_params, map_tx, pot_tx)
    source_index = jnp.repeat(jnp.arange(k), b)

    def pushforward_fn(mp, x):
        return apply_maps(mp, x).reshape(k * b, cfg.dim), source_index

    def map_loss_fn(mp, pp, x):
        y = apply_maps(mp, x)
        cost = costs.half_sq_cost(x.reshape(k * b, -1), y.reshape(k * b, -1))
        f = game.potential_values(apply_potentials, pp, y.reshape(k * b, -1), lam, cfg.congruence)
        return game.map_objective(cost, f, source_index, lam), None

    step = game.make_game_step(
        map_loss_fn=map_loss_fn,
        pushforward_fn=pushforward_fn,
        potential_apply=apply_potentials,
        map_tx=map_tx,
        pot_tx=pot_tx,
        congruence=cfg.congruence,
        kappa=cfg.kappa,
        penalty_points=cfg.penalty_points,
        inner_map_steps=steps,
        potential_update=cfg.potential_update,
    )

    @jax.jit
    def epoch(state, key):
        shape = (steps, b) if steps > 1 else (b,)
        return step(state, problem.sample(key, shape), lam)

    apply_maps_jit = jax.jit(apply_maps)
    values_jit = jax.jit(lambda pp, yy: game.potential_values(apply_potentials, pp, yy, lam, cfg.congruence))

    def score(state, x):
        """Scores of the current iterate on samples x (K, n, D)."""
        n = x.shape[1]
        y = apply_maps_jit(state.map_params, x)
        f = values_jit(state.pot_params, y.reshape(k * n, cfg.dim))
        x64, y64, f64 = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(f, np.float64)
        l2 = [gaussian.l2_uvp(y64[i], problem.maps[i](x64[i]), problem.var_bar) for i in range(k)]
        finite_y = bool(np.all(np.isfinite(y64)))
        bw2 = [gaussian.bw2_uvp(y64[i], problem.mean_bar, problem.cov_bar) if finite_y else math.nan for i in range(k)]
        f_own = f64.reshape(k, n, k)[np.arange(k), :, np.arange(k)]  # f_k(T_k x_k): (K, n)
        cost = 0.5 * np.sum((x64 - y64) ** 2, axis=-1)  # (K, n)
        with np.errstate(all="ignore"):
            loss = float(np.sum(weights * np.mean(cost - f_own, axis=-1)))
            res = float(np.max(np.abs(f64 @ weights)) / np.max(np.abs(f64))) if np.all(np.isfinite(f64)) else math.nan
        return {"l2": l2, "bw2": bw2, "loss": loss, "residual": res}

    x_hist = problem.sample(jax.random.fold_in(k_eval, 1), (4096,)) if cfg.eval_every else None
    history = []
    eval_seconds = 0.0
    start = time.perf_counter()
    first_done = None
    epochs_done = 0
    metrics = {}
    for e in range(cfg.epochs):
        key, sub = jax.random.split(key)
        state, metrics = epoch(state, sub)
        epochs_done += 1
        if e == 0:
            jax.block_until_ready(metrics)
            first_done = time.perf_counter()
        if cfg.eval_every and epochs_done % cfg.eval_every == 0:
            t0 = time.perf_counter()
            sc = score(state, x_hist)
            history.append([epochs_done, _finite(np.dot(weights, sc["l2"])), _finite(sc["loss"])])
            eval_seconds += time.perf_counter() - t0
        if cfg.time_budget and time.perf_counter() - start - eval_seconds > cfg.time_budget:
            break
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start - eval_seconds
    first = first_done - start
    per_epoch = (seconds - first) / (epochs_done - 1) if epochs_done > 1 else seconds

    # ---- scores on fresh samples, final iterate
    n = cfg.eval_samples
    sc = score(state, problem.sample(k_eval, (n,)))
    l2, bw2, loss, res = sc["l2"], sc["bw2"], sc["loss"], sc["residual"]
    record = {
        "l2_uvp": _finite(np.dot(weights, l2)),
        "bw2_uvp": _finite(np.dot(weights, bw2)),
        "loss": _finite(loss),
        "closed_form_cost": problem.cost,
        "congruence_residual": _finite(res),
        "seconds": round(seconds, 3),
        "seconds_per_epoch": round(per_epoch, 5),
        "epochs": epochs_done,
        "l2_uvp_per_source": [_finite(v) for v in l2],
        "bw2_uvp_per_source": [_finite(v) for v in bw2],
        "train_map_loss": _finite(metrics["map_loss"]),
        "train_potential_objective": _finite(metrics["potential_objective"]),
        "dim": cfg.dim,
        "k": k,
        "weights": weights.tolist(),
        "seed": cfg.seed,
        "congruence": cfg.congruence,
        "inner_steps": steps,
        "batch": b,
        "lr": cfg.lr,
        "potential_lr": cfg.potential_lr if cfg.potential_lr else cfg.lr,
        "hidden": hidden,
        "layers": cfg.layers,
        "base": cfg.base,
        "eval_samples": n,
        "device": jax.devices()[0].platform,
    }
    if cfg.eval_every:
        record["history"] = history  # [epoch, weighted L2-UVP, loss] on 4096 samples per source
    record["finite"] = all(record[key] is not None for key in ("l2_uvp", "bw2_uvp", "loss"))
    return record


# ------------------------------------------------------------------------------------------------ CLI


def parse_weights(text: str | Sequence[float] | None, k: int) -> np.ndarray:
    """--weights → (K,) float64; uniform when absent. Refuses (ValueError) anything but K positive numbers
    summing to 1 within 1e-6."""
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    if text is None or text == "":
        return np.full(k, 1.0 / k)
    if isinstance(text, str):
        try:
            w = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"--weights must be comma-separated numbers, got {text!r}") from None
    else:
        w = [float(t) for t in text]
    if len(w) != k:
        raise ValueError(f"--weights has {len(w)} entries but --k is {k}")
    w = np.asarray(w, np.float64)
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"--weights must be positive, got {w.tolist()}")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"--weights must sum to 1, got sum {w.sum():.6g}; e.g. {','.join(f'{v:.6g}' for v in w / w.sum())}"
        )
    return w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m baryir_jax.transport.toy",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train the barycenter max-min game on random Gaussians and score it against the closed "
        "form. Prints one JSON line.",
    )
    p.add_argument("--dim", type=int, required=True, help="dimension D")
    p.add_argument("--k", type=int, required=True, help="number of sources K")
    p.add_argument("--weights", default=None, help="λ as w1,w2,... (K positive numbers summing to 1; default uniform)")
    p.add_argument("--epochs", type=int, required=True, help="outer iterations (potential updates)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--congruence", choices=cg.MODES, default="exact")
    p.add_argument("--inner-steps", type=int, default=10, help="map updates per potential update")
    p.add_argument("--batch", type=int, default=1000, help="samples per source per step")
    p.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate of the maps (and potentials)")
    p.add_argument(
        "--potential-lr", type=float, default=None, help="Adam learning rate of the potentials (default: --lr)"
    )
    p.add_argument("--hidden", type=int, default=None, help="MLP width (default max(100, 2D))")
    p.add_argument("--layers", type=int, default=3, help="hidden layers per MLP")
    p.add_argument("--base", choices=("gaussian", "uniform"), default="gaussian")
    p.add_argument("--mean-scale", type=float, default=0.0, help="source means ~ mean_scale·N(0, I)")
    p.add_argument("--kappa", type=float, default=10.0, help="penalty weight (congruence=penalty)")
    p.add_argument("--penalty-points", choices=cg.PENALTY_POINTS, default="last")
    p.add_argument("--potential-update", choices=game.POTENTIAL_UPDATES, default="two_step")
    p.add_argument("--eval-samples", type=int, default=20000, help="fresh samples per source for the scores")
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="also score every N epochs on 4096 samples per source (JSON 'history'; not timed)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="stop training after this many seconds (the record says how many epochs ran)",
    )
    return p


def validate(cfg: argparse.Namespace) -> None:
    if cfg.eval_every < 0:
        raise ValueError("--eval-every must be >= 0")
    for name in ("dim", "k", "epochs", "inner_steps", "batch", "layers", "eval_samples"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.eval_samples < 2:
        raise ValueError("--eval-samples must be at least 2")
    if cfg.lr <= 0 or (cfg.potential_lr is not None and cfg.potential_lr <= 0):
        raise ValueError("learning rates must be positive")
    parse_weights(cfg.weights, cfg.k)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    cfg = parser.parse_args(argv)
    try:
        validate(cfg)
    except ValueError as e:
        parser.error(str(e))
    print(json.dumps(run(cfg)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
