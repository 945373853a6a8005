"""Unit tests of baryir_jax.transport: costs, congruence, objectives, game_step, closed forms (seconds, CPU).

Expected values come from the reference worked example, from hand calculation, or from formulas written out
here independently of the code under test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from baryir_jax.transport import congruence as cg
from baryir_jax.transport import costs, game, gaussian

# ------------------------------------------------------------------------------------------------ costs


def test_costs_per_sample_over_all_non_batch_axes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 4, 5)).astype(np.float32)
    y = rng.standard_normal((3, 4, 4, 5)).astype(np.float32)
    d = (x - y).reshape(3, -1).astype(np.float64)
    rms = jax.jit(costs.rms_cost)(x, y)
    half = jax.jit(costs.half_sq_cost)(x, y)
    assert rms.shape == half.shape == (3,)
    np.testing.assert_allclose(rms, np.sqrt((d**2).mean(-1)), rtol=1e-6)
    np.testing.assert_allclose(half, 0.5 * (d**2).sum(-1), rtol=1e-6)
    # a hand-computed case: x − y = (3, 4) → rms = sqrt(12.5), ½‖·‖² = 12.5
    np.testing.assert_allclose(costs.rms_cost(jnp.array([[3.0, 4.0]]), jnp.zeros((1, 2))), [np.sqrt(12.5)])
    np.testing.assert_allclose(costs.half_sq_cost(jnp.array([[3.0, 4.0]]), jnp.zeros((1, 2))), [12.5])
    assert costs.get_cost("rms") is costs.rms_cost
    with pytest.raises(ValueError, match="same shape"):
        costs.rms_cost(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown cost"):
        costs.get_cost("l1")


def test_rms_cost_gradient_is_finite_at_zero_distance():
    x = jnp.ones((2, 3))
    g = jax.grad(lambda a: jnp.sum(costs.rms_cost(a, x)))(x)
    assert np.all(np.isfinite(g)) and np.all(g == 0)
    # away from zero: d/dx sqrt(mean(d²)) = d / (D·rms)
    a = jnp.array([[3.0, 4.0]])
    np.testing.assert_allclose(
        jax.grad(lambda a: costs.rms_cost(a, jnp.zeros((1, 2)))[0])(a),
        [[3.0 / (2 * np.sqrt(12.5)), 4.0 / (2 * np.sqrt(12.5))]],
        rtol=1e-6,
    )


# -------------------------------------------------------------------------------------- closed forms

LAM = np.array([0.25, 0.25, 0.5])
MEANS = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
COVS = np.array([np.diag([1.0, 4.0]), np.diag([4.0, 1.0]), [[2.0, 1.0], [1.0, 2.0]]])
COV_BAR = np.array([[2.08908652, 0.55659016], [0.55659016, 2.08908652]])


def test_worked_example_of_the_reference():
    m, c = gaussian.gaussian_barycenter(MEANS, COVS, LAM)
    np.testing.assert_allclose(m, [0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(c, COV_BAR, atol=1e-6)
    _, info = gaussian.barycenter_covariance(COVS, LAM, return_info=True)
    assert info["residual"] < 1e-12
    total = sum(lk * gaussian.w2_sq_gaussian(mk, ck, m, c) for lk, mk, ck in zip(LAM, MEANS, COVS))
    assert abs(total - 2.07182696) < 1e-6
    assert abs(gaussian.barycenter_cost(MEANS, COVS, LAM) - 1.03591348) < 1e-6
    assert abs(gaussian.w2_sq_gaussian(MEANS[0], COVS[0], MEANS[1], COVS[1]) - 6.0) < 1e-12


def test_commuting_case_is_exact():
    _, c = gaussian.gaussian_barycenter(np.zeros((2, 2)), [np.diag([1.0, 4.0]), np.diag([4.0, 1.0])], [0.5, 0.5])
    np.testing.assert_allclose(c, 2.25 * np.eye(2), atol=1e-12)


def test_agrees_with_ott_bures_barycenter():
    costs_ott = pytest.importorskip("ott.geometry.costs")
    with jax.enable_x64(True):
        xs = jnp.stack([costs_ott.mean_and_cov_to_x(jnp.asarray(m), jnp.asarray(c), 2) for m, c in zip(MEANS, COVS)])
        x_bar, _ = costs_ott.Bures(dimension=2).barycenter(jnp.asarray(LAM), xs, tolerance=1e-10)
        m_ott, c_ott = costs_ott.x_to_means_and_covs(x_bar, 2)
        w2_ott = float(costs_ott.Bures(dimension=2)(xs[0], xs[1]))
    m, c = gaussian.gaussian_barycenter(MEANS, COVS, LAM)
    np.testing.assert_allclose(np.asarray(m_ott), m, atol=1e-5)
    np.testing.assert_allclose(np.asarray(c_ott), c, atol=1e-5)
    assert abs(w2_ott - gaussian.w2_sq_gaussian(MEANS[0], COVS[0], MEANS[1], COVS[1])) < 1e-5


def test_optimal_maps_push_each_source_onto_the_barycenter():
    m_bar, c_bar = gaussian.gaussian_barycenter(MEANS, COVS, LAM)
    for mk, ck, t in zip(MEANS, COVS, gaussian.barycenter_maps(MEANS, COVS, m_bar, c_bar)):
        b0 = t(mk[None])[0]
        a = np.stack([t((mk + e)[None])[0] - b0 for e in np.eye(2)], axis=1)  # the linear part
        np.testing.assert_allclose(b0, m_bar, atol=1e-12)
        np.testing.assert_allclose(a, a.T, atol=1e-12)  # a gradient of a convex map
        assert np.all(np.linalg.eigvalsh(a) > 0)
        np.testing.assert_allclose(a @ ck @ a.T, c_bar, atol=1e-10)  # pushforward covariance


def test_one_dimensional_quantile_barycenter():
    # U[0,1] and U[2,4], λ = (½, ½): Q* = U[1, 2.5]
    q = gaussian.quantile_barycenter([lambda t: t, lambda t: 2 + 2 * t], [0.5, 0.5])
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(q(t), 1 + 1.5 * t, atol=1e-12)
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, 4000), rng.uniform(2, 4, 4000)
    bar = gaussian.barycenter_1d([a, b], [0.5, 0.5])
    assert abs(bar.min() - 1.0) < 0.01 and abs(bar.max() - 2.5) < 0.01
    t_a, t_b = gaussian.barycenter_maps_1d([a, b], [0.5, 0.5])
    # T*_1(x) = 1 + 1.5x, T*_2(x) = 1 + 0.75(x − 2) up to sampling error
    assert np.max(np.abs(t_a - (1 + 1.5 * a))) < 0.06
    assert np.max(np.abs(t_b - (1 + 0.75 * (b - 2)))) < 0.06
    # Gaussians N(μ_k, σ_k²) → N(Σλμ, (Σλσ)²), on exact order statistics
    s = np.sort(rng.standard_normal(2000))
    bar = gaussian.barycenter_1d([1 + 2 * s, -3 + 0.5 * s], [0.3, 0.7])
    np.testing.assert_allclose(bar, (0.3 * 1 - 0.7 * 3) + (0.3 * 2 + 0.7 * 0.5) * s, atol=1e-12)


def test_uvp_metrics_on_hand_computed_cases():
    c_bar = np.diag([1.0, 3.0])  # Var(Q*) = 4
    rng = np.random.default_rng(1)
    opt = rng.standard_normal((100, 2))
    assert abs(gaussian.l2_uvp(opt + np.array([1.0, 0.0]), opt, 4.0) - 25.0) < 1e-12
    assert gaussian.l2_uvp(opt, opt, 4.0) == 0.0
    # BW2-UVP of samples whose moments are exactly (δ, C̄): 100‖δ‖²/4
    z = rng.standard_normal((5000, 2))
    z = (z - z.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # exact identity cov
    samples = z @ np.sqrt(c_bar) + np.array([0.0, 2.0])
    assert abs(gaussian.bw2_uvp(samples, np.zeros(2), c_bar) - 100.0) < 1e-9
    # moments (0, 4·C̄): W2² = tr(C̄ + 4C̄ − 2·2C̄) = tr C̄ → 100 %
    assert abs(gaussian.bw2_uvp(2 * (samples - [0, 2]), np.zeros(2), c_bar) - 100.0) < 1e-9


def test_eigen_warped_covariance_spectrum():
    rng = np.random.default_rng(3)
    for d in (1, 2, 5):
        c = gaussian.eigen_warped_covariance(rng, d)
        np.testing.assert_allclose(
            np.sort(np.linalg.eigvalsh(c)), np.exp(np.linspace(np.log(0.5), np.log(2.0), d)) ** 2, rtol=1e-10
        )
    a, b = gaussian.eigen_warped_covariance(rng, 4), gaussian.eigen_warped_covariance(rng, 4)
    assert not np.allclose(a, b)  # random rotations


# -------------------------------------------------------------------------------------------- congruence


def _random_g(key, k, n=64, dim=3):
    """Raw potentials: K small random MLPs at n random points, (n, K)."""
    kx, kw1, kw2 = jax.random.split(key, 3)
    y = jax.random.normal(kx, (n, dim))
    w1 = jax.random.normal(kw1, (k, dim, 16))
    w2 = jax.random.normal(kw2, (k, 16))
    return jnp.einsum("knh,kh->nk", jnp.tanh(jnp.einsum("nd,kdh->knh", y, w1)), w2) * 5.0


@pytest.mark.parametrize("lam", [(0.3, 0.7), (0.1, 0.3, 0.6), (0.05, 0.1, 0.15, 0.3, 0.4)])
@pytest.mark.parametrize("mode", ["exact", "centered"])
def test_exact_congruence_residual(lam, mode):
    lam = jnp.asarray(lam, jnp.float32)
    g = _random_g(jax.random.key(len(lam)), len(lam))
    f = jax.jit(cg.apply_congruence, static_argnums=2)(g, lam, mode)
    f64 = np.asarray(f, np.float64)
    rel = np.max(np.abs(f64 @ np.asarray(lam, np.float64))) / np.max(np.abs(f64))
    assert rel <= 1e-5
    assert float(cg.residual(f, lam)) <= 1e-5
    assert float(cg.residual(g, lam)) > 1e-2  # the raw g are not congruent
    # the congruent f still depends on the potentials (not identically zero)
    assert np.max(np.abs(f64)) > 0.1


def test_congruence_formulas_by_hand():
    lam = jnp.array([0.2, 0.3, 0.5])
    g = jnp.array([[1.0, 2.0, 4.0]])
    # exact: f_k = g_k − Σ_{i≠k} λ_i g_i / ((K−1) λ_k)
    f = cg.apply_congruence(g, lam, "exact")
    expect = [1 - (0.6 + 2.0) / (2 * 0.2), 2 - (0.2 + 2.0) / (2 * 0.3), 4 - (0.2 + 0.6) / (2 * 0.5)]
    np.testing.assert_allclose(f[0], expect, rtol=1e-6)
    # centered: f_k = g_k − Σ λ_i g_i = g_k − 2.8
    np.testing.assert_allclose(cg.apply_congruence(g, lam, "centered")[0], [-1.8, -0.8, 1.2], rtol=1e-6)
    for mode in ("penalty", "none"):
        assert cg.apply_congruence(g, lam, mode) is g
    with pytest.raises(ValueError, match="unknown congruence"):
        cg.apply_congruence(g, lam, "soft")
    # K = 2 with unequal weights: f_1 = −(λ_0/λ_1) f_0 (NOTB make_f_pot's K=2 branch)
    f2 = cg.apply_congruence(jnp.array([[3.0, -1.0]]), jnp.array([0.25, 0.75]), "exact")
    np.testing.assert_allclose(f2[0, 1], -(0.25 / 0.75) * f2[0, 0], rtol=1e-6)


def test_penalty_last_point_and_batch():
    lam = jnp.array([0.5, 0.5])
    v = jnp.array([[1.0, 1.0], [0.0, 2.0], [2.0, 4.0]])  # Σλf = 1, 1, 3
    assert float(cg.penalty(v, lam)) == pytest.approx(10.0 * 9.0)
    assert float(cg.penalty(v, lam, kappa=2.0, points="batch")) == pytest.approx(2.0 * (1 + 1 + 9) / 3)
    with pytest.raises(ValueError):
        cg.penalty(v, lam, points="first")


def test_lambdas_from_counts():
    # BaryIR §3.4 table: 3D [77160, 72000, 72135] → [0.3183, 0.3412, 0.3405]
    np.testing.assert_allclose(cg.lambdas_from_counts([77160, 72000, 72135]), [0.3183, 0.3412, 0.3405], atol=1e-4)
    np.testing.assert_allclose(cg.lambdas_from_counts([1, 1, 2]), [0.4, 0.4, 0.2])
    with pytest.raises(ValueError):
        cg.lambdas_from_counts([3, 0])


def test_potential_index_any_subset():
    full = cg.PotentialIndex(range(8))
    assert full.num_potentials == 6
    np.testing.assert_array_equal(full.indices([0, 1, 2, 3, 4, 5, 6, 7]), [0, 0, 0, 1, 2, 3, 4, 5])
    three = cg.PotentialIndex([3, 4, 0, 1, 2])  # 3D: derain, dehaze, σ15/25/50
    np.testing.assert_array_equal(three.indices([2, 3, 4, 0]), [0, 1, 2, 0])
    no_noise = cg.PotentialIndex([4, 3])  # the official mapping breaks here
    assert no_noise.num_potentials == 2
    np.testing.assert_array_equal(no_noise.indices([3, 4]), [0, 1])
    odd = cg.PotentialIndex([9, 6, 1])
    np.testing.assert_array_equal(odd.indices([1, 6, 9]), [0, 1, 2])
    assert odd.ids_of_potential == [[1], [6], [9]]
    with pytest.raises(ValueError, match=r"unknown degradation id\(s\) \[5\].*known ids: \[1, 6, 9\]"):
        odd.indices([1, 5])
    # jit lookup: unknown ids (incl. negative and beyond the table) → −1
    got = jax.jit(odd.lookup)(jnp.array([9, 1, 6, 5, 42, -1]))
    np.testing.assert_array_equal(got, [2, 0, 1, -1, -1, -1])
    # per-potential counts and λ
    np.testing.assert_allclose(
        three.source_counts({0: 25720, 1: 25720, 2: 25720, 3: 72000, 4: 72135}), [77160, 72000, 72135]
    )
    with pytest.raises(ValueError, match="no count"):
        three.source_counts({0: 1, 3: 1, 4: 1})


# ----------------------------------------------------------------------------------------- objectives


def test_objectives_by_hand():
    lam = jnp.array([0.25, 0.75])
    values = jnp.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    idx = jnp.array([0, 1, -1])  # the last point is masked
    cost = jnp.array([5.0, 7.0, 100.0])
    extra = jnp.array([1.0, 1.0, 1.0])
    # mean over N=3 of λ_k(i)(c + e − f): (0.25·(5+1−1) + 0.75·(7+1−20) + 0) / 3
    assert float(game.map_objective(cost, values, idx, lam, extra)) == pytest.approx((1.25 - 9.0) / 3)
    assert float(game.map_objective(cost, values, idx, lam)) == pytest.approx((0.25 * 4 + 0.75 * -13) / 3)
    assert float(game.potential_objective(values, idx, lam)) == pytest.approx((0.25 * 1 + 0.75 * 20) / 3)
    np.testing.assert_array_equal(game.present_potentials(jnp.array([1, 1, -1]), 3), [False, True, False])


def test_objective_wiring_with_the_closed_form_maps():
    """y ~ Q*, x_k = T*_k⁻¹(y), random congruent f: the potential term vanishes and L → B* (reference §8.3)."""
    m_bar, c_bar = gaussian.gaussian_barycenter(MEANS, COVS, LAM)
    n, k = 100_000, 3
    rng = np.random.default_rng(0)
    y = rng.standard_normal((n, 2)) @ gaussian.sqrtm_psd(c_bar) + m_bar
    xs = [mk + (y - m_bar) @ np.linalg.inv(gaussian.gaussian_map_matrix(ck, c_bar)).T for mk, ck in zip(MEANS, COVS)]
    lam = jnp.asarray(LAM, jnp.float32)
    x_all = jnp.asarray(np.concatenate(xs), jnp.float32)
    y_all = jnp.asarray(np.tile(y, (k, 1)), jnp.float32)
    idx = jnp.repeat(jnp.arange(k), n)
    w1 = jax.random.normal(jax.random.key(1), (k, 2, 16))
    w2 = jax.random.normal(jax.random.key(2), (k, 16))

    def g_apply(p, yy):
        return jnp.einsum("knh,kh->nk", jnp.tanh(jnp.einsum("nd,kdh->knh", yy, p[0])), p[1])

    @jax.jit
    def terms(x_all, y_all):
        f = game.potential_values(g_apply, (w1, w2), y_all, lam, "exact")
        cost = costs.half_sq_cost(x_all, y_all)
        return (game.map_objective(cost, f, idx, lam), game.potential_objective(f, idx, lam), jnp.max(jnp.abs(f)))

    loss, pot, fmax = terms(x_all, y_all)
    assert float(fmax) > 0.1
    assert abs(float(pot)) < 1e-6 * float(fmax)
    # map_objective averages over the K·n points; NOTB's L sums per-source means: L = K · map_objective
    assert abs(k * float(loss) - 1.03591348) / 1.03591348 < 0.01


# ------------------------------------------------------------------------------------------- game_step

K, D, B = 3, 2, 64
LAM_J = jnp.array([0.2, 0.3, 0.5])


def _mlp_init(key, sizes):
    ps = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, kw = jax.random.split(key)
        ps.append({"w": jax.random.normal(kw, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)})
    return ps


def _mlp(ps, x):
    for p in ps[:-1]:
        x = jnp.tanh(x @ p["w"] + p["b"])
    return x @ ps[-1]["w"] + ps[-1]["b"]


def _pots_init(key):
    return {f"potential_{k}": _mlp_init(kk, [D, 16, 1]) for k, kk in enumerate(jax.random.split(key, K))}


def _pots_apply(pp, y):
    return jnp.concatenate([_mlp(pp[f"potential_{k}"], y) for k in range(K)], axis=-1)


def _shared_map(mp, x):  # one map T for all sources (BaryIR's case)
    return x + _mlp(mp, x)


IDX = jnp.repeat(jnp.arange(K), B // K + 1)[:B]


def _problem(congruence):
    """A shared map and K potentials; a batch is (x (B, D), source_index (B,))."""

    def pushforward_fn(mp, batch):
        x, idx = batch
        return _shared_map(mp, x), idx

    def map_loss_fn(mp, pp, batch):
        x, idx = batch
        y = _shared_map(mp, x)
        f = game.potential_values(_pots_apply, pp, y, LAM_J, congruence)
        return game.map_objective(costs.rms_cost(x, y), f, idx, LAM_J), {"mean_shift": jnp.mean(y - x)}

    def game_value(mp, pp, batch):
        return map_loss_fn(mp, pp, batch)[0]

    return map_loss_fn, pushforward_fn, jax.jit(game_value)


def _batch(key, *lead):
    x = jax.random.normal(key, lead + (B, D))
    return x, jnp.broadcast_to(IDX, lead + (B,))


@pytest.mark.parametrize("congruence", ["exact", "none"])
def test_gradient_signs_of_the_two_players(congruence):
    """A map step does not increase L for fixed potentials; a potential step does not decrease it."""
    mp = _mlp_init(jax.random.key(1), [D, 16, D])
    pp = _pots_init(jax.random.key(2))
    batch = _batch(jax.random.key(0))
    map_loss_fn, pushforward_fn, value = _problem(congruence)
    before = float(value(mp, pp, batch))
    common = dict(
        map_loss_fn=map_loss_fn, pushforward_fn=pushforward_fn, potential_apply=_pots_apply, congruence=congruence
    )
    # maps move, potentials frozen (learning rate 0)
    step = game.make_game_step(map_tx=optax.sgd(1e-2), pot_tx=optax.sgd(0.0), **common)
    s, _ = step(game.init_state(mp, pp, optax.sgd(1e-2), optax.sgd(0.0)), batch, LAM_J)
    after_map = float(value(s.map_params, s.pot_params, batch))
    assert after_map < before
    jax.tree.map(np.testing.assert_array_equal, s.pot_params, pp)
    # potentials move, maps frozen
    step = game.make_game_step(map_tx=optax.sgd(0.0), pot_tx=optax.sgd(1e-2), **common)
    s, m = step(game.init_state(mp, pp, optax.sgd(0.0), optax.sgd(1e-2)), batch, LAM_J)
    after_pot = float(value(s.map_params, s.pot_params, batch))
    assert after_pot > before
    jax.tree.map(np.testing.assert_array_equal, s.map_params, mp)
    assert float(m["map_loss"]) == pytest.approx(before, rel=1e-6)


def test_inner_map_steps_scan_uses_one_batch_per_step():
    mp = _mlp_init(jax.random.key(1), [D, 16, D])
    pp = _pots_init(jax.random.key(2))
    batches = _batch(jax.random.key(3), 4)
    map_loss_fn, pushforward_fn, _ = _problem("exact")
    tx = optax.sgd(1e-2)
    kw = dict(
        map_loss_fn=map_loss_fn,
        pushforward_fn=pushforward_fn,
        potential_apply=_pots_apply,
        map_tx=tx,
        pot_tx=optax.sgd(0.0),
        congruence="exact",
    )
    s4, m4 = game.make_game_step(inner_map_steps=4, **kw)(game.init_state(mp, pp, tx, optax.sgd(0.0)), batches, LAM_J)
    # the same four updates done one step at a time
    one = game.make_game_step(inner_map_steps=1, **kw)
    s = game.init_state(mp, pp, tx, optax.sgd(0.0))
    for i in range(4):
        s, m = one(s, jax.tree.map(lambda a, i=i: a[i], batches), LAM_J)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s4.map_params, s.map_params)
    assert float(m4["map_loss"]) == pytest.approx(float(m["map_loss"]), rel=1e-5)
    assert float(m4["map_loss_mean"]) != pytest.approx(float(m4["map_loss"]), rel=1e-6)
    assert "mean_shift" in m4 and "congruence_residual" in m4
    with pytest.raises(ValueError, match="leading axis"):
        game.make_game_step(inner_map_steps=3, **kw)(game.init_state(mp, pp, tx, optax.sgd(0.0)), batches, LAM_J)


def _manual_potential_losses(idx, y, lam):
    """The official potential losses written out independently of game.py."""

    def l_f(pp):
        v = _pots_apply(pp, y)
        return jnp.mean(lam[idx] * v[jnp.arange(v.shape[0]), idx])

    def l_cong(pp):
        v = _pots_apply(pp, y)
        return 10.0 * jnp.sum(lam * v[-1]) ** 2

    return l_f, l_cong


@pytest.mark.parametrize("update", ["two_step", "summed"])
def test_potential_update_two_step_and_summed(update):
    mp = _mlp_init(jax.random.key(1), [D, 16, D])
    pp = _pots_init(jax.random.key(2))
    batch = _batch(jax.random.key(3))
    map_loss_fn, pushforward_fn, _ = _problem("penalty")
    lr = 0.05
    step = game.make_game_step(
        map_loss_fn=map_loss_fn,
        pushforward_fn=pushforward_fn,
        potential_apply=_pots_apply,
        map_tx=optax.sgd(1e-2),
        pot_tx=optax.sgd(lr),
        congruence="penalty",
        potential_update=update,
    )
    s, m = step(game.init_state(mp, pp, optax.sgd(1e-2), optax.sgd(lr)), batch, LAM_J)
    y = _shared_map(s.map_params, batch[0])  # the fresh forward with the updated map
    l_f, l_cong = _manual_potential_losses(IDX, y, LAM_J)
    l_f, l_cong = jax.jit(l_f), jax.jit(l_cong)
    sgd = lambda p, g: jax.tree.map(lambda a, b: a - lr * b, p, g)  # noqa: E731
    if update == "two_step":
        p1 = sgd(pp, jax.jit(jax.grad(l_f))(pp))
        expect = sgd(p1, jax.jit(jax.grad(l_cong))(p1))
        assert float(m["congruence_penalty"]) == pytest.approx(float(l_cong(p1)), rel=1e-5)
    else:
        expect = sgd(pp, jax.jit(jax.grad(lambda p: l_f(p) + l_cong(p)))(pp))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s.pot_params, expect)
    assert float(m["potential_objective"]) == pytest.approx(float(l_f(pp)), rel=1e-5)


def test_skip_absent_potentials_keeps_params_and_optimizer_state():
    mp = _mlp_init(jax.random.key(1), [D, 16, D])
    pp = _pots_init(jax.random.key(2))
    x, all_idx = _batch(jax.random.key(3))
    no_1 = jnp.where(all_idx == 1, 0, all_idx)  # source 1 absent
    tx = optax.rmsprop(1e-3, decay=0.99, eps=1e-8, eps_in_sqrt=False)  # torch RMSprop defaults
    map_loss_fn, pushforward_fn, _ = _problem("none")
    results = {}
    for skip in (False, True):
        step = game.make_game_step(
            map_loss_fn=map_loss_fn,
            pushforward_fn=pushforward_fn,
            potential_apply=_pots_apply,
            map_tx=optax.sgd(1e-2),
            pot_tx=tx,
            congruence="none",
            skip_absent_potentials=skip,
        )
        s = game.init_state(mp, pp, optax.sgd(1e-2), tx)
        s, _ = step(s, (x, all_idx), LAM_J)  # first every potential present, so the state is ≠ 0
        prev = s
        s, m = step(s, (x, no_1), LAM_J)
        results[skip] = (prev, s, m)
    prev, s, m = results[True]
    assert int(m["potentials_present"]) == 2
    jax.tree.map(np.testing.assert_array_equal, s.pot_params["potential_1"], prev.pot_params["potential_1"])
    nu = lambda st: st[0].nu  # noqa: E731  (ScaleByRmsState mirrors the params tree)
    jax.tree.map(
        np.testing.assert_array_equal, nu(s.pot_opt_state)["potential_1"], nu(prev.pot_opt_state)["potential_1"]
    )
    for name in ("potential_0", "potential_2"):  # present potentials do move
        assert not np.allclose(s.pot_params[name][0]["w"], prev.pot_params[name][0]["w"])
        assert not np.allclose(nu(s.pot_opt_state)[name][0]["w"], nu(prev.pot_opt_state)[name][0]["w"])
    # without the option, optax decays the absent potential's second moment (what the option prevents)
    prev_f, s_f, _ = results[False]
    assert not np.allclose(
        nu(s_f.pot_opt_state)["potential_1"][0]["w"], nu(prev_f.pot_opt_state)["potential_1"][0]["w"]
    )
    with pytest.raises(ValueError, match="skip_absent_potentials"):
        game.game_step(
            s,
            (x, all_idx),
            LAM_J,
            map_loss_fn=None,
            pushforward_fn=None,
            potential_apply=None,
            map_tx=tx,
            pot_tx=tx,
            congruence="exact",
            skip_absent_potentials=True,
        )


def test_game_step_metrics_are_flat_finite_scalars():
    mp = _mlp_init(jax.random.key(1), [D, 16, D])
    pp = _pots_init(jax.random.key(2))
    map_loss_fn, pushforward_fn, _ = _problem("penalty")
    tx = optax.adam(1e-3)
    step = jax.jit(
        functools.partial(
            game.game_step,
            map_loss_fn=map_loss_fn,
            pushforward_fn=pushforward_fn,
            potential_apply=_pots_apply,
            map_tx=tx,
            pot_tx=tx,
            penalty_points="batch",
        )
    )
    s, m = step(game.init_state(mp, pp, tx, tx), _batch(jax.random.key(3)), LAM_J)
    for key in (
        "map_loss",
        "map_loss_mean",
        "potential_objective",
        "congruence_penalty",
        "congruence_residual",
        "congruence_abs",
        "potentials_present",
        "mean_shift",
    ):
        assert np.shape(m[key]) == () and np.isfinite(m[key]), key
    assert isinstance(s, game.GameState)
