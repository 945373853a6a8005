"""One jitted train step of ours against one iteration of the official ``trainer_bary.py`` ``train()`` loop.

The fixture ``tests/fixtures/step_parity_official.npz`` (made by ``tests/fixtures/make_step_parity_fixture.py``,
which runs the unmodified official ``train()`` for one iteration and records it from outside) holds no weights: both
sides start from the parameter pattern of :mod:`baryir_jax.convert.pattern` on the reduced official model (dim 48,
one block per level, patch 64, 3 potentials), converted here with our converter. For each of its two batches of 3
patches (one sample per potential; all samples on one potential) our step runs once, from that same initial state,
the way the training loop runs it: :func:`make_train_step` with the default (official) loss and optimizer settings,
jitted by :func:`jit_train_step` over a 3-device data mesh (one patch per device, so the cross-sample contrastive
and orthogonality terms run on a sharded batch), the state placed with ``place_replicated``, the batch with
``host_batch_to_global``.

Compared: every loss term of the step's metrics (1e-4 relative, 1e-6 absolute near zero), the updated values
of the fixture's parameter tensors of both players (3·lr, with the RMSprop sign flips described at `NEAR_ZERO`)
and their RMSprop second moments (the gradient magnitudes). Cost: one compile (both batches have the same shapes;
about 80 s of CPU time) and two steps (7-11 s each), about 2 CPU minutes in all (measured 2026-11-29).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh

from baryir_jax.config import base_config
from baryir_jax.convert import official as conv
from baryir_jax.convert.pattern import pattern_state_dict
from baryir_jax.data.to_mesh import host_batch_to_global
from baryir_jax.train import state as state_lib
from baryir_jax.train import step as step_lib
from baryir_jax.train.experiment import place_replicated
from baryir_jax.transport.congruence import PotentialIndex, lambdas_from_counts
from baryir_jax.transport.game import GameState

pytestmark = pytest.mark.slow  # one compile of the reduced model and two steps (about 80 s CPU)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "step_parity_official.npz")
N_DEVICES = 3  # the global batch of 3, one patch per device
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def fixture():
    data = np.load(FIXTURE)
    return data, json.loads(str(data["meta"]))


def step_config(meta):
    """Our defaults (the official constants and RMSprop) at the fixture's reduced size."""
    c = base_config()
    r = meta["reduced_config"]
    c.model.update(
        dict(
            dim=r["dim"],
            num_blocks=tuple(r["num_blocks"]),
            num_refinement_blocks=r["num_refinement_blocks"],
            heads=tuple(r["heads"]),
            ffn_expansion_factor=r["ffn_expansion_factor"],
        )
    )
    c.data.patch_size = meta["potentials_config"]["size"]
    c.data.batch_size = 3
    return c


def host_batch(data, name):
    """The batch as the data pipeline delivers it: float32 in [0, 1] (uint8 / 255), int32 ids."""
    return {
        "degraded": data[f"{name}.degraded"].astype(np.float32) / np.float32(255.0),
        "clean": data[f"{name}.clean"].astype(np.float32) / np.float32(255.0),
        "degradation_id": data[f"{name}.degradation_id"].astype(np.int32),
    }


@pytest.fixture(scope="module")
def setup(fixture):
    data, meta = fixture
    c = step_config(meta)
    counts = {int(k): v for k, v in meta["counts_by_id"].items()}
    index = PotentialIndex(counts)
    lam = lambdas_from_counts(index.source_counts(counts))
    barynet, potentials = state_lib.build_models(c, index.num_potentials)
    restorer_tx, potentials_tx = state_lib.make_optimizers(c, sum(counts.values()) // 3, 2)
    restorer, _, _ = conv.convert_barynet(pattern_state_dict(meta["keys"]["barynet"]))
    pots, _ = conv.convert_potentials(pattern_state_dict(meta["keys"]["potentials"]))
    s0 = state_lib.TrainState(
        jnp.zeros((), jnp.int32),
        GameState(restorer, pots, restorer_tx.init(restorer), potentials_tx.init(pots)),
    )
    return c, index, lam, barynet, potentials, restorer_tx, potentials_tx, s0


@pytest.fixture(scope="module")
def stepped(fixture, setup):
    """{batch name: (metrics, state after one step)}: our step run once per batch from the same initial state."""
    data, meta = fixture
    c, index, lam, barynet, potentials, restorer_tx, potentials_tx, s0 = setup
    mesh = Mesh(np.array(jax.devices()[:N_DEVICES]), ("data",), axis_types=(AxisType.Auto,))
    train_step = step_lib.make_train_step(c, barynet, potentials, index, lam, restorer_tx, potentials_tx)
    jstep, state_sharding = step_lib.jit_train_step(train_step, mesh, s0)
    out, compiled = {}, None
    with jax.set_mesh(mesh):
        for name in meta["batches"]:
            state = place_replicated(jax.device_get(s0), state_sharding)  # a fresh copy: the step donates it
            batch = host_batch_to_global(host_batch(data, name), mesh)
            if compiled is None:
                compiled = jstep.lower(state, batch).compile()
            new, metrics = compiled(state, batch)
            out[name] = ({k: float(v) for k, v in jax.device_get(metrics).items()}, jax.device_get(new))
    return out


def test_fixture_is_small_and_weightless(fixture):
    data, meta = fixture
    assert os.path.getsize(FIXTURE) < 1024 * 1024
    n_params = sum(int(np.prod(s)) for part in ("barynet", "potentials") for _, s in meta["keys"][part])
    stored = sum(data[k].size for k in data.files if k != "meta")
    assert stored < n_params / 20


def test_same_lambda_index_and_constants(fixture, setup):
    _, meta = fixture
    c, index, lam, *_ = setup
    np.testing.assert_allclose(lam, meta["official_lambda"], rtol=1e-12)
    ids = np.array([0, 1, 2, 3, 4])
    np.testing.assert_array_equal(index.indices(ids), np.where(ids < 3, 0, ids - 2))  # trainer_bary.py:324-327
    k = meta["constants"]
    assert (c.loss.l1_weight, c.optim.lr, c.optim.potentials_lr) == (k["Sigma"], meta["lr"], meta["lr"])


def _official_terms(data, meta, name):
    """The official losses and the means the step reports, from the fixture's per-sample terms."""
    lam = np.asarray(meta["official_lambda"])
    values = data[f"{name}.potential_values"].astype(np.float64)  # (B, K): f_k(b'_i) before the potentials' update
    weighted = values @ lam
    ids = data[f"{name}.degradation_id"]
    return {
        "l1": data[f"{name}.l1"],
        "transport_cost": np.mean(data[f"{name}.dist"]),
        "orthogonality": np.mean(data[f"{name}.ort"]),
        "contrastive": np.mean(data[f"{name}.con"]),
        "potential_mean": np.mean(data[f"{name}.pot"]),
        "map_objective": data[f"{name}.map_objective"],
        "restorer_loss": data[f"{name}.restorer_loss"],
        "map_loss": data[f"{name}.restorer_loss"],
        "potential_objective": data[f"{name}.potential_objective"],
        "congruence_penalty": data[f"{name}.congruence_penalty"],
        "congruence_abs": np.max(np.abs(weighted)),
        "congruence_residual": np.max(np.abs(weighted)) / np.max(np.abs(values)),
        "potentials_present": len({0 if i < 3 else i - 2 for i in ids}),
    }


@pytest.mark.parametrize("name", ["per_potential", "one_potential"])
def test_every_loss_term_matches_official(fixture, stepped, name):
    data, meta = fixture
    ours, _ = stepped[name]
    expected = _official_terms(data, meta, name)
    bad = {
        k: (ours[k], float(v))
        for k, v in expected.items()
        if not abs(ours[k] - float(v)) <= max(RTOL * abs(float(v)), ATOL)
    }
    per_sample = {t: data[f"{name}.{t}"].tolist() for t in ("dist", "ort", "con", "pot")}
    assert not bad, f"{name}: (ours, official) {bad}; official per-sample terms {per_sample}"
    assert ours["finite"]


def _ours(torch_key, value):
    """The converter's name map for one official tensor: (path in our parameter tree, value in our layout)."""
    if torch_key.startswith("potentials."):
        _, k, layer, leaf = torch_key.split(".")
        path = (f"potential_{k}", conv._POTENTIAL_LAYERS[layer], leaf)
    else:
        path = conv._flax_path(torch_key)
    leaf, value = conv._to_flax_value(path[-1], np.asarray(value))
    return path[:-1] + (leaf,), value


def _leaf(tree, path):
    for p in path:
        tree = tree[p]
    return np.asarray(tree)


def _nu(opt_state):
    """The RMSprop second moments (optax ``ScaleByRmsState.nu``, PyTorch's ``square_avg``) of an optax state."""
    found = [s.nu for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "nu")) if hasattr(s, "nu")]
    assert len(found) == 1, "expected one RMSprop state"
    return found[0]


def _tensors(data, meta, setup, stepped, name, player):
    """[(key, initial, ours after, official after, our ν, official square_avg)] in our layout."""
    s0, new = setup[-1], stepped[name][1]
    if player == "restorer":
        keys, init, after, nu = meta["restorer_keys"], s0.restorer, new.restorer, _nu(new.restorer_opt)
    else:
        keys, init, after, nu = meta["potential_keys"], s0.potentials, new.potentials, _nu(new.potentials_opt)
    rows = []
    for key in keys:
        path, official = _ours(key, data[f"{name}.after.{key}"])
        _, official_sq = _ours(key, data[f"{name}.square_avg.{key}"])
        rows.append((key, _leaf(init, path), _leaf(after, path), official, _leaf(nu, path), official_sq))
    return rows


# RMSprop's first update is lr·g/(√(0.01·g²) + ε) = ±10·lr whatever |g| (for |g| ≫ 1e-7). Where the exact gradient
# is ~0, float32 rounding (different summation orders: XLA on a 3-device mesh against ATen) picks the sign, and
# that entry moves 20·lr apart (per step: the potentials take two). The gradient magnitudes themselves (from the
# RMSprop moments) agree to ≤ 3e-4 of each tensor's largest |g| (measured), so a sign can only flip where the
# official |g| ≤ that error: flips are allowed only at entries with |g| ≤ NEAR_ZERO·max|g| of their tensor, in
# one of the steps that moved them, and at most MAX_FLIPS of all compared entries (measured: none).
NEAR_ZERO = 1e-3
MAX_FLIPS = 1e-3


def _step_gradients(data, name, key, sq):
    """|g| of each RMSprop step that moved this official tensor, from its square_avg (zero initial state)."""
    if not key.startswith("potentials."):
        return [10 * np.sqrt(sq)]  # one step: square_avg = 0.01·g²
    k = int(key.split(".")[1])
    present = k in {0 if i < 3 else i - 2 for i in data[f"{name}.degradation_id"]}
    if not present:  # no gradient in the first step (trainer_bary.py:350-371): only the congruence step
        return [10 * np.sqrt(sq)]
    _, first = _ours(key, data[f"{name}.square_avg_first.{key}"])  # 0.01·g1², then 0.99·0.01·g1² + 0.01·g2²
    return [10 * np.sqrt(first), 10 * np.sqrt(np.maximum(sq - 0.99 * first, 0))]


@pytest.mark.parametrize("player", ["restorer", "potentials"])
@pytest.mark.parametrize("name", ["per_potential", "one_potential"])
def test_updated_parameters_match_official(fixture, setup, stepped, name, player):
    data, meta = fixture
    lr = meta["lr"]
    total, flips, worst = 0, 0, 0.0
    for key, init, ours, official, _, sq in _tensors(data, meta, setup, stepped, name, player):
        assert np.mean(official != init) > 0.5, f"{key}: the official step did not move it"
        d = np.abs(ours - official)
        grads = _step_gradients(data, name, key, sq)
        near_zero = np.any([g <= NEAR_ZERO * np.max(g) for g in grads], axis=0)
        apart = d > 3 * lr
        assert not np.any(apart & ~near_zero), (
            f"{name} {key}: {int(np.sum(apart & ~near_zero))} entries more than 3·lr from the official update at "
            f"non-zero gradients (max |Δ| {d.max() / lr:.2f}·lr)"
        )
        assert np.all(d <= 20 * lr * len(grads) + 3 * lr), f"{name} {key}: max |Δ| {d.max() / lr:.2f}·lr"
        total, flips, worst = (
            total + d.size,
            flips + int(np.sum(apart)),
            max(worst, float(np.max(d[~apart], initial=0))),
        )
    assert flips <= MAX_FLIPS * total, f"{name} {player}: {flips} sign flips of {total} entries"
    assert worst <= 3 * lr


@pytest.mark.parametrize("player", ["restorer", "potentials"])
@pytest.mark.parametrize("name", ["per_potential", "one_potential"])
def test_gradient_magnitudes_match_official(fixture, setup, stepped, name, player):
    """RMSprop's second moments after the step (0.01·g² for the restorer; 0.99·0.01·g1² + 0.01·g2² for the
    potentials' two steps) against the official square_avg: the gradient magnitudes, which the first update's
    ±10·lr does not show, to 1e-3 of each tensor's largest (measured ≤ 3e-4)."""
    data, meta = fixture
    for key, *_, nu, sq in _tensors(data, meta, setup, stepped, name, player):
        ours, official = np.sqrt(nu), np.sqrt(sq)
        assert np.max(official) > 0, f"{key}: no gradient"
        err = np.max(np.abs(ours - official)) / np.max(official)
        assert err <= 1e-3, f"{name} {key}: max |√ν − √square_avg| = {err:.2e} of the largest"
