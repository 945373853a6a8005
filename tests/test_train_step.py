"""The jitted BaryIR step: its loss terms against a direct computation, and 1 vs 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh

from baryir_jax.config import base_config
from baryir_jax.train import state as st
from baryir_jax.train import step as sp
from baryir_jax.transport.congruence import PotentialIndex, lambdas_from_counts


def tiny_config():
    c = base_config()
    c.model.update(dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1)))
    c.data.patch_size = 16
    return c


def make(c, ids=(0, 1, 2, 3, 4), steps_per_epoch=100):
    index = PotentialIndex(ids)
    lam = lambdas_from_counts(index.source_counts({i: 10 + i for i in ids}))
    bn, pots = st.build_models(c, index.num_potentials)
    rtx, ptx = st.make_optimizers(c, steps_per_epoch, 2)
    s0 = st.init_state(c, bn, pots, rtx, ptx)
    return index, lam, bn, pots, rtx, ptx, s0


def batches(n, b=8, p=16, ids=(0, 1, 2, 3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [
        dict(
            degraded=rng.uniform(0, 1, (b, p, p, 3)).astype(np.float32),
            clean=rng.uniform(0, 1, (b, p, p, 3)).astype(np.float32),
            degradation_id=rng.choice(ids, b).astype(np.int32),
        )
        for _ in range(n)
    ]


def run(c, n_devices, data, parts):
    index, lam, bn, pots, rtx, ptx, s0 = parts
    mesh = Mesh(np.array(jax.devices()[:n_devices]), ("data",), axis_types=(AxisType.Auto,))
    f = sp.make_train_step(c, bn, pots, index, lam, rtx, ptx)
    jf, sharding = sp.jit_train_step(f, mesh, s0)
    s = jax.device_put(jax.tree.map(jnp.array, s0), sharding)
    history = []
    for b in data:
        s, m = jf(s, b)
        history.append({k: float(v) for k, v in jax.device_get(m).items()})
    return jax.device_get(s), history


def test_restorer_loss_terms_match_a_direct_computation():
    """The official per-sample double loops (trainer_bary.py), written out, against the vectorised terms."""
    c = tiny_config()
    index, lam, bn, pots, *_, s0 = make(c)
    b = batches(1)[0]
    out = bn.apply({"params": s0.restorer}, b["degraded"])
    values = np.asarray(pots.apply({"params": s0.potentials}, out.b))
    k = index.indices(b["degradation_id"])
    l1, transport, aux = sp.restorer_terms(
        out,
        jnp.asarray(b["clean"]),
        jnp.asarray(b["degradation_id"]),
        jnp.asarray(k),
        jnp.asarray(values),
        jnp.asarray(lam, jnp.float32),
        tau=0.07,
        gamma=0.05,
    )
    z, bb, r = (np.asarray(t, np.float64).reshape(8, -1) for t in (out.z, out.b, out.r))
    unit = lambda v: v / max(np.linalg.norm(v), 1e-12)  # noqa: E731
    total = 0.0
    for i in range(8):
        dist = np.sqrt(np.mean((z[i] - bb[i]) ** 2))
        ort = sum(np.dot(unit(bb[i]), unit(r[j])) ** 2 for j in range(8))
        pos = sum(
            np.exp(np.dot(unit(r[i]), unit(r[j])) / 0.07)
            for j in range(8)
            if b["degradation_id"][j] == b["degradation_id"][i]
        )
        allj = sum(np.exp(np.dot(unit(r[i]), unit(r[j])) / 0.07) for j in range(8))
        con = -np.log(pos / allj)
        total += lam[k[i]] * (dist + 0.05 * (ort + con) - values[i, k[i]])
    np.testing.assert_allclose(float(transport), total / 8, rtol=1e-5)
    np.testing.assert_allclose(float(l1), np.mean(np.abs(np.asarray(out.restored) - b["clean"])), rtol=1e-6)


# Both players' losses and every term. The near-zero terms (squared cosines of nearly orthogonal vectors,
# potential values of either sign) are sums that cancel, so float32 reduction order alone moves them by ~1e-7
# absolute: they are compared to 1e-5 relative to max(|value|, 1).
LOSSES = ("restorer_loss", "l1", "transport_cost", "contrastive")
NEAR_ZERO = ("orthogonality", "map_objective", "potential_objective", "congruence_penalty")


def _param_diff(t1, t8):
    return np.concatenate(
        [np.abs(np.asarray(x) - np.asarray(y)).ravel() for x, y in zip(jax.tree.leaves(t1), jax.tree.leaves(t8))]
    )


def _close(a, b, keys, rtol):
    for k in keys:
        assert abs(a[k] - b[k]) <= rtol * abs(a[k]), (k, a[k], b[k])


def test_one_device_and_eight_devices_take_the_same_steps():
    """Same 3 batches (global batch 8) on 1 and on 8 devices.

    RMSprop (decay 0.99) moves every parameter by ±lr/sqrt(1 − 0.99) = ±10·lr in its first update, whatever the
    gradient's size. A gradient component that sums to ~0 is float32 reduction noise, whose sign depends on the
    summation order, so a handful of parameters take opposite ±10·lr steps on 1 and 8 devices, and the next
    steps' losses then differ by more than rounding. So: (1) from the same state, one step on 1 and on 8
    devices gives the same losses (1e-5) and parameters within 3·lr but for a ≤1e-2 fraction of such
    components (measured: 5.6e-4 of the restorer, 5.3e-3 of the small test potentials); (2) along the 3-step
    trajectories the restorer loss stays equal to 1e-5 and all but a ≤1e-2
    fraction of the parameters within 3·lr.
    """
    c = tiny_config()
    parts = make(c)
    index, lam, bn, pots, rtx, ptx, s0 = parts
    data = batches(3)
    lr = float(c.optim.lr)
    steps = {}
    for n in (1, 8):
        mesh = Mesh(np.array(jax.devices()[:n]), ("data",), axis_types=(AxisType.Auto,))
        jf, sharding = sp.jit_train_step(sp.make_train_step(c, bn, pots, index, lam, rtx, ptx), mesh, s0)
        steps[n] = (jf, sharding)

    def one(n, state, batch):
        jf, sharding = steps[n]
        s, m = jf(jax.device_put(jax.tree.map(jnp.array, state), sharding), batch)
        return jax.device_get(s), {k: float(v) for k, v in jax.device_get(m).items()}

    # (1) step by step from the same state (the 1-device trajectory)
    state = s0
    for batch in data:
        s1, m1 = one(1, state, batch)
        s8, m8 = one(8, state, batch)
        _close(m1, m8, LOSSES, 1e-5)
        for k in NEAR_ZERO:
            assert abs(m1[k] - m8[k]) <= 1e-5 * max(abs(m1[k]), 1.0), (k, m1[k], m8[k])
        for t1, t8 in ((s1.restorer, s8.restorer), (s1.potentials, s8.potentials)):
            d = _param_diff(t1, t8)  # a step without the gradient all-reduce would move most of them by ~10·lr
            assert np.mean(d > 3 * lr) <= 1e-2 and d.max() <= 20 * lr, (int(np.sum(d > 3 * lr)), d.max())
        state = s1

    # (2) the two trajectories
    (s1, h1), (s8, h8) = run(c, 1, data, parts), run(c, 8, data, parts)
    for a, b in zip(h1, h8):
        _close(a, b, ("restorer_loss", "l1"), 1e-5)
        _close(a, b, LOSSES, 1e-2)  # the rest: same values, up to the amplified noise above
        for k in NEAR_ZERO:
            assert abs(a[k] - b[k]) <= 1e-4 * max(abs(a[k]), 1.0), (k, a[k], b[k])
    for t1, t8 in ((s1.restorer, s8.restorer), (s1.potentials, s8.potentials)):
        d = _param_diff(t1, t8)
        assert np.mean(d > 3 * lr) <= 1e-2 and d.max() <= 3 * 20 * lr, (int(np.sum(d > 3 * lr)), d.max())
    assert s1.step == s8.step == 3


def test_lr_schedules_of_both_players_decay_at_the_same_step():
    c = tiny_config()
    c.optim.decay_every_epochs = 2
    r = st.lr_schedule(c, steps_per_epoch=3)
    p = st.lr_schedule(c, steps_per_epoch=3, updates_per_step=2)
    assert [r(i) for i in (0, 5, 6, 11, 12)] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5, 1e-6])
    # the potentials update twice per step: their counts 0..11 are steps 0..5
    assert [p(i) for i in (0, 11, 12, 23, 24)] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-5, 1e-6])


def test_both_players_move():
    c = tiny_config()
    parts = make(c)
    s, h = run(c, 1, batches(2), parts)
    s0 = parts[-1]
    for new, old in ((s.restorer, s0.restorer), (s.potentials, s0.potentials)):
        assert max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(new), jax.tree.leaves(old))) > 0
    assert all(m["finite"] for m in h) and h[0]["potentials_present"] >= 1


def test_grad_accumulation_matches_the_full_batch_loss():
    # with a huge τ the contrastive term no longer depends on how the batch is split into micro-batches
    data = batches(1)
    hist = []
    for accum in (1, 2):
        c = tiny_config()
        c.loss.tau = 1e6
        c.train.grad_accum_steps = accum
        hist.append(run(c, 1, data, make(c))[1][0])
    for k in ("l1", "transport_cost", "potential_objective", "restorer_loss"):
        assert abs(hist[0][k] - hist[1][k]) <= 1e-5 * abs(hist[0][k]), (k, hist[0][k], hist[1][k])


@pytest.mark.parametrize("mode", ["summed", "exact"])
def test_game_options_run(mode):
    c = tiny_config()
    if mode == "summed":
        c.loss.potential_update = "summed"
    else:
        c.loss.congruence = "exact"
    parts = make(c)
    _, h = run(c, 1, batches(2), parts)
    assert all(m["finite"] for m in h)
    if mode == "exact":
        assert h[-1]["congruence_residual"] < 1e-5


def test_the_initial_state_is_the_fully_optimised_init_bit_for_bit(xla_defaults):
    """``init_state`` compiles the parameter initialisation cheaply on the CPU (its program is hundreds of random
    initialisers; LLVM's optimisation of it took most of the compile time and none of it matters for a one-off
    run): the parameters must still be exactly those of ``jax.jit(init)`` compiled with XLA's defaults, so that
    every run, figure and checkpoint is unchanged."""
    c = tiny_config()
    bn, pots = st.build_models(c, 3)
    rtx, ptx = st.make_optimizers(c, 100, 2)
    s = st.init_state(c, bn, pots, rtx, ptx)
    _, k_model, k_pot = jax.random.split(jax.random.PRNGKey(int(c.seed)), 3)
    side = int(c.data.patch_size) // 8
    ref_restorer = jax.jit(lambda k: bn.init(k, jnp.zeros((1, 16, 16, 3), jnp.float32))["params"])(k_model)
    ref_pots = jax.jit(lambda k: pots.init(k, jnp.zeros((1, side, side, pots.channels), jnp.float32))["params"])(k_pot)
    for got, ref in ((s.restorer, ref_restorer), (s.potentials, ref_pots)):
        assert jax.tree.structure(got) == jax.tree.structure(ref)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
