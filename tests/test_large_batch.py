"""The large-batch options (config.optim.lr_scaling / reference_batch / warmup_steps / clip_norm /
potentials_clip_norm) and the gradient- and update-norm metrics: each does what it says, bad values are one
clear line, and the defaults leave the official step bit for bit as it was.

Cost: the schedule and optimizer tests are instant; the step tests compile the tiny model (about 1 min in all on
2 cores); the two CLI tests start `baryir_jax.main` (about 1 min, one of them trains 2 tiny steps).
"""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, Mesh

from baryir_jax.config import ConfigError, base_config
from baryir_jax.train import state as st
from baryir_jax.train import step as sp
from baryir_jax.transport import game
from baryir_jax.transport.congruence import PotentialIndex, lambdas_from_counts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sched_config(batch=32, rule="none", warmup=0):
    c = base_config()
    c.optim.lr, c.optim.potentials_lr = 1e-4, 3e-4
    c.optim.decay_every_epochs = 2
    c.optim.reference_batch = 8
    c.optim.lr_scaling = rule
    c.optim.warmup_steps = warmup
    c.data.batch_size = batch
    return c


# ------------------------------------------------------------------------------------------ the LR schedule


@pytest.mark.parametrize(
    "batch,rule,factor",
    [(32, "none", 1.0), (32, "linear", 4.0), (32, "sqrt", 2.0), (8, "linear", 1.0), (128, "sqrt", 4.0)],
)
def test_lr_at_a_given_step_and_batch_for_each_rule(batch, rule, factor):
    c = sched_config(batch, rule)
    # 3 steps an epoch, decay every 2 epochs: steps 0-5 at the base LR, 6-11 at x0.1, 12- at x0.01
    restorer_lr = st.lr_schedule(c, 3)
    potentials_lr = st.lr_schedule(c, 3, updates_per_step=2, base=c.optim.potentials_lr)
    for step, decay in ((0, 1.0), (5, 1.0), (6, 0.1), (12, 0.01)):
        assert float(restorer_lr(step)) == pytest.approx(1e-4 * factor * decay, rel=1e-6), step
        # the potentials take two optimizer updates per training step: counts 2t and 2t+1 are step t
        for count in (2 * step, 2 * step + 1):
            assert float(potentials_lr(count)) == pytest.approx(3e-4 * factor * decay, rel=1e-6), (step, count)


def test_lr_rule_reaches_the_optimizer_update():
    """The rule acts on what RMSprop does: the first update is −lr·g/(√(0.01 g²)) = −10·lr·sign(g)."""
    g = {"w": jnp.array([2.0, -3.0])}
    for rule, factor in (("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)):
        rtx, ptx = st.make_optimizers(sched_config(32, rule), 3, 2)
        for tx, base in ((rtx, 1e-4), (ptx, 3e-4)):
            u, _ = tx.update(g, tx.init(g), g)
            np.testing.assert_allclose(np.asarray(u["w"]), [-10 * base * factor, 10 * base * factor], rtol=1e-4)


def test_warmup_is_linear_over_training_steps_for_both_players():
    c = sched_config(8, "none", warmup=4)
    r = st.lr_schedule(c, 100)
    p = st.lr_schedule(c, 100, updates_per_step=2, base=c.optim.potentials_lr)
    expected = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [float(r(t)) for t in range(6)] == pytest.approx([1e-4 * f for f in expected], rel=1e-6)
    assert [float(p(n)) for n in range(12)] == pytest.approx([3e-4 * f for f in expected for _ in (0, 1)], rel=1e-6)
    # with scaling and decay: the three factors multiply (decay after 2 epochs of 3 steps = step 6)
    c = sched_config(32, "linear", warmup=8)
    r = st.lr_schedule(c, 3)
    assert [float(r(t)) for t in (0, 3, 5, 6, 7, 8)] == pytest.approx(
        [4e-4 * x for x in (1 / 8, 4 / 8, 6 / 8, 0.1 * 7 / 8, 0.1, 0.1)], rel=1e-6
    )


def test_default_schedule_is_the_official_one_value_for_value():
    """Defaults (no scaling, no warm-up): the old ``base · factor^⌊t / every⌋`` lambda, float32 for float32,
    evaluated the way optax does (a traced int32 count, under jit)."""
    c = base_config()
    c.optim.decay_every_epochs = 2
    for per_step, base in ((1, c.optim.lr), (2, c.optim.potentials_lr)):
        new = st.lr_schedule(c, 3, per_step, base)

        def old(count, base=base, per_step=per_step):
            return float(base) * 0.1 ** ((count // per_step) // 6)

        for fn in (lambda f: f, jax.jit):
            for n in range(40):
                a, b = fn(new)(jnp.int32(n)), fn(old)(jnp.int32(n))
                assert a.dtype == b.dtype and bool(a == b), (n, a, b)


@pytest.mark.parametrize(
    "field,value,says",
    [
        ("lr_scaling", "cubic", "config.optim.lr_scaling='cubic': allowed: one of 'none', 'linear', 'sqrt'"),
        ("reference_batch", 0, "config.optim.reference_batch=0: allowed: an integer >= 1"),
        ("warmup_steps", -5, "config.optim.warmup_steps=-5: allowed: an integer >= 0"),
        ("clip_norm", -1.0, "config.optim.clip_norm=-1.0: allowed: a finite number >= 0"),
        ("potentials_clip_norm", float("nan"), "config.optim.potentials_clip_norm=nan: allowed: a finite number"),
    ],
)
def test_bad_values_are_one_line_config_errors(field, value, says):
    c = sched_config()
    c.optim[field] = value
    with pytest.raises(ConfigError) as e:
        st.make_optimizers(c, 3, 2)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_bad_value_on_the_command_line_exits_2_with_one_line(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "baryir_jax.main",
            f"--config={os.path.join(ROOT, 'configs', 'demo.py')}:tiny",
            f"--workdir={tmp_path / 'w'}",
            "--config.optim.lr_scaling=cubic",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "config.optim.lr_scaling='cubic': allowed: one of 'none', 'linear', 'sqrt'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "w" / "data").exists()  # rejected before the data are prepared


# ----------------------------------------------------------------------------------------------- clipping


def _norm(tree) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(tree)))


def _rms_reference(lr):
    return optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False)


def test_clipping_bounds_the_update():
    """After 5 ordinary gradients (norm 1), a spike of norm 1e6. Without clipping RMSprop's update jumps to
    ≈ 10·lr per component; clipped, it is exactly RMSprop's update of the spike scaled down to the threshold
    (1 for the restorer, 0.5 for the potentials), whatever the spike's size. Each player has its own threshold."""
    rng = np.random.default_rng(0)
    params = {"a": jnp.zeros((50,)), "b": jnp.zeros((3, 4))}
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(6)]
    grads = [jax.tree.map(lambda x, g=g: x / _norm(g), g) for g in grads]  # norm 1
    spike = jax.tree.map(lambda x: 1e6 * x, grads[5])
    c = sched_config(8)
    c.optim.clip_norm, c.optim.potentials_clip_norm = 1.0, 0.5

    def last_update(tx, gs):
        s = tx.init(params)
        for g in gs:
            u, s = tx.update(g, s, params)
        return u

    rtx, ptx = st.make_optimizers(c, 1000, 1)
    plain_r, plain_p = st.make_optimizers(sched_config(8), 1000, 1)
    for tx, plain, lr, clip in ((rtx, plain_r, 1e-4, 1.0), (ptx, plain_p, 3e-4, 0.5)):
        seq = grads[:5] + [spike]
        clipped = last_update(tx, seq)
        unclipped = last_update(plain, seq)
        # what RMSprop (optax, not our code) does with every gradient first scaled to norm <= clip
        by_hand = [jax.tree.map(lambda x, g=g, clip=clip: x * min(1.0, clip / _norm(g)), g) for g in seq]
        expected = last_update(_rms_reference(lr), by_hand)
        for k in params:
            np.testing.assert_allclose(np.asarray(clipped[k]), np.asarray(expected[k]), rtol=1e-5, atol=1e-12)
        assert _norm(clipped) < 0.6 * _norm(unclipped)
        # any spike above the threshold gives that same bounded update
        other = last_update(tx, grads[:5] + [jax.tree.map(lambda x: 1e3 * x, grads[5])])
        for k in params:
            np.testing.assert_allclose(np.asarray(other[k]), np.asarray(clipped[k]), rtol=1e-5, atol=1e-12)
    # clip 0 = RMSprop alone, with the same state layout as before the option existed
    assert jax.tree.structure(plain_r.init(params)) == jax.tree.structure(_rms_reference(lambda n: 1e-4).init(params))


# ------------------------------------------------------------------------------------------ the train step


def tiny_config():
    c = base_config()
    c.model.update(dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1)))
    c.data.patch_size = 16
    c.data.batch_size = 8
    return c


IDS = (0, 1, 2, 3, 4)


def _parts(c):
    index = PotentialIndex(IDS)
    lam = lambdas_from_counts(index.source_counts({i: 10 + i for i in IDS}))
    bn, pots = st.build_models(c, index.num_potentials)
    return index, lam, bn, pots


def _batches(n, b=8, p=16, seed=0):
    rng = np.random.default_rng(seed)
    return [
        dict(
            degraded=rng.uniform(0, 1, (b, p, p, 3)).astype(np.float32),
            clean=rng.uniform(0, 1, (b, p, p, 3)).astype(np.float32),
            degradation_id=np.array([0, 1, 2, 0, 1, 2, 3, 0], np.int32),  # id 4 (its own potential) absent
        )
        for _ in range(n)
    ]


def _run(c, rtx, ptx, data, parts, s0=None):
    index, lam, bn, pots = parts
    if s0 is None:
        s0 = st.init_state(c, bn, pots, rtx, ptx)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(AxisType.Auto,))
    jf, sharding = sp.jit_train_step(sp.make_train_step(c, bn, pots, index, lam, rtx, ptx), mesh, s0)
    s = jax.device_put(jax.tree.map(jnp.array, s0), sharding)
    hist = []
    for b in data:
        s, m = jf(s, b)
        hist.append({k: np.asarray(v) for k, v in jax.device_get(m).items()})
    return jax.device_get(s), hist


def test_defaults_leave_the_official_step_bit_identical(monkeypatch):
    """Default options: 3 steps give the same state, bit for bit, as the code path before the options existed —
    RMSprop built directly with optax and the old step-decay lambda, and the game without the norm metrics."""
    c = tiny_config()
    parts = _parts(c)
    data = _batches(3)
    # decay after 50 epochs of 100 steps: not reached. The same program as the two tests below compile (one
    # compilation, shared through the suite's persistent compilation cache).
    rtx, ptx = st.make_optimizers(c, 100, 2)
    new_state, new_hist = _run(c, rtx, ptx, data, parts)

    every = 50 * 100

    def old_tx(base, per_step):
        return optax.rmsprop(
            lambda count: base * 0.1 ** ((count // per_step) // every), decay=0.99, eps=1e-8, eps_in_sqrt=False
        )

    real = game.game_step
    monkeypatch.setattr(sp.game, "game_step", lambda *a, **k: real(*a, **{**k, "norm_metrics": False}))
    old_state, old_hist = _run(c, old_tx(1e-4, 1), old_tx(1e-4, 2), data, parts)
    monkeypatch.undo()
    assert jax.tree.structure(new_state) == jax.tree.structure(old_state)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(old_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for h_new, h_old in zip(new_hist, old_hist):
        assert set(h_old) < set(h_new)
        for k in h_old:
            np.testing.assert_array_equal(h_new[k], h_old[k], err_msg=k)


def test_norm_metrics_are_the_gradient_and_update_norms():
    """map_grad_norm against the gradient of the restorer loss written from the public pieces, the update norms
    against the parameter change read off the states, and the potentials' gradient norms present."""
    c = tiny_config()
    parts = _parts(c)
    index, lam, bn, pots = parts
    rtx, ptx = st.make_optimizers(c, 100, 2)
    s0 = st.init_state(c, bn, pots, rtx, ptx)
    b = _batches(1)[0]
    s1, (m,) = _run(c, rtx, ptx, [b], parts, s0)
    for key in (
        "map_grad_norm",
        "map_update_norm",
        "potential_grad_norm",
        "potential_penalty_grad_norm",
        "potential_update_norm",
    ):
        assert key in m and np.isfinite(m[key]) and m[key] > 0, key

    def loss(params):
        out = bn.apply({"params": params}, b["degraded"])
        k = jnp.asarray(index.indices(b["degradation_id"]))
        lam_j = jnp.asarray(lam, jnp.float32)
        values = game.potential_values(
            lambda p, y: pots.apply({"params": p}, y), s0.potentials, out.b.astype(jnp.float32), lam_j, "penalty"
        )
        l1, transport, _ = sp.restorer_terms(
            out, jnp.asarray(b["clean"]), jnp.asarray(b["degradation_id"]), k, values, lam_j, tau=0.07, gamma=0.05
        )
        return 1e4 * l1 + transport

    g = jax.jit(jax.grad(loss))(s0.restorer)
    g_norm = math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(g)))
    assert float(m["map_grad_norm"]) == pytest.approx(g_norm, rel=1e-4)

    def diff(a, b):
        return math.sqrt(
            sum(
                float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
            )
        )

    assert float(m["map_update_norm"]) == pytest.approx(diff(s1.restorer, s0.restorer), rel=1e-4)
    assert float(m["potential_update_norm"]) == pytest.approx(diff(s1.potentials, s0.potentials), rel=1e-4)


def test_clipping_in_the_train_step_changes_the_trajectory_and_stays_finite():
    """Both thresholds reach the step (the chained optimizer states go through the game, with a potential absent
    from the batches)."""
    parts = _parts(tiny_config())
    data = _batches(3)
    states = []
    for clip in (0.0, 1e-3):
        c = tiny_config()
        c.optim.clip_norm = c.optim.potentials_clip_norm = clip
        rtx, ptx = st.make_optimizers(c, 100, 2)
        s, hist = _run(c, rtx, ptx, data, parts)
        assert all(bool(h["finite"]) for h in hist)
        states.append(s)
    for player in ("restorer", "potentials"):
        d = max(
            float(np.abs(np.asarray(x) - np.asarray(y)).max())
            for x, y in zip(jax.tree.leaves(getattr(states[0], player)), jax.tree.leaves(getattr(states[1], player)))
        )
        assert d > 0, player


# ------------------------------------------------------------------------------- the logs of a training run


@pytest.mark.slow
def test_norms_are_in_the_workdirs_scalar_logs(tmp_path, embedded_data_dir):
    """Two steps of demo.py:tiny through baryir_jax.main, logged every step: the norms are TensorBoard scalars."""
    from tensorboard.backend.event_processing import event_accumulator

    wd = tmp_path / "w"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "baryir_jax.main",
            f"--config={os.path.join(ROOT, 'configs', 'demo.py')}:tiny",
            f"--workdir={wd}",
            f"--config.data.data_dir={embedded_data_dir}",  # prepared once per session (tests/conftest.py)
            "--config.train.num_steps=2",
            "--config.train.log_every=1",
            "--config.train.export_model=false",
            "--config.optim.clip_norm=100.0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    acc = event_accumulator.EventAccumulator(str(wd), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    for name in ("map_grad_norm", "map_update_norm", "potential_grad_norm", "potential_update_norm"):
        events = acc.Tensors(f"train/{name}")
        assert [e.step for e in events] == [1, 2], name
        values = [float(_tensor(e)) for e in events]
        assert all(np.isfinite(v) and v > 0 for v in values), (name, values)
    assert "train/restorer_loss" in tags


def _tensor(event):
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(event.tensor_proto)
