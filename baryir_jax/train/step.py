"""BaryIR's jitted max-min training step, built on :mod:`baryir_jax.transport`.

One step (official ``trainer_bary.py``):

1. restorer update with the potentials frozen, on
   ``l1_weight·L1 + mean_i λ_k(i)[rms(z_i − b_i) + γ(ort_i + con_i) − f_k(i)(b_i)]``;
2. a fresh forward of the updated restorer → b′ (stop-gradient);
3. potential update on ``mean_i λ_k(i) f_k(i)(b′_i)`` and the congruence penalty (two optimizer steps by default).

The game itself (inner map steps, the two optimizers, congruence, absent potentials) is
:func:`baryir_jax.transport.game.game_step`; this module supplies BaryIR's restorer loss and forward.

``ort_i = Σ_j cos²(b_i, r_j)`` over the whole batch; ``con_i`` is the supervised-contrastive term on the
residuals with temperature τ, labels = raw degradation ids, the sample itself counted as a positive.

The metrics also hold each player's gradient and update norms (``map_grad_norm``, ``map_update_norm`` for the
restorer; ``potential_grad_norm``, ``potential_penalty_grad_norm``, ``potential_update_norm`` for the potentials;
see :func:`baryir_jax.transport.game.game_step`).

Gradient accumulation (``grad_accum_steps = A``) splits the batch into A micro-batches whose restorer loss is
averaged under ``jax.checkpoint`` (activation memory of one micro-batch); the contrastive and orthogonality
terms are then computed within each micro-batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from baryir_jax.config import ConfigError
from baryir_jax.models import BaryNet, Potentials
from baryir_jax.train.state import TrainState
from baryir_jax.transport import costs, game
from baryir_jax.transport.congruence import PotentialIndex


def _unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def restorer_terms(out, clean, ids, k, values, lam, *, tau: float, gamma: float):
    """Per-batch terms of the restorer loss from a BaryNet output and the potential values f(b) (B, K)."""
    B = clean.shape[0]
    l1 = jnp.mean(jnp.abs(out.restored - clean))
    z = out.z.astype(jnp.float32).reshape(B, -1)
    b = out.b.astype(jnp.float32).reshape(B, -1)
    r = out.r.astype(jnp.float32).reshape(B, -1)
    dist = costs.rms_cost(z, b)
    bh, rh = _unit(b), _unit(r)
    ort = jnp.sum(jnp.square(bh @ rh.T), axis=-1)
    sim = (rh @ rh.T) / tau
    same = ids[:, None] == ids[None, :]
    con = jax.nn.logsumexp(sim, axis=-1) - jax.nn.logsumexp(jnp.where(same, sim, -jnp.inf), axis=-1)
    transport = game.map_objective(dist, values, k, lam, extra=gamma * (ort + con))
    aux = dict(
        l1=l1,
        transport_cost=jnp.mean(dist),
        potential_mean=jnp.mean(game.select(values, k)),
        contrastive=jnp.mean(con),
        orthogonality=jnp.mean(ort),
        map_objective=transport,
    )
    return l1, transport, aux


def make_train_step(
    config, barynet: BaryNet, potentials: Potentials, index: PotentialIndex, lam: np.ndarray, restorer_tx, potentials_tx
):
    """``train_step(state, batch) -> (state, metrics)``, not yet jitted (see :func:`jit_train_step`)."""
    lc = config.loss
    accum = int(config.train.grad_accum_steps)
    if accum < 1:
        raise ConfigError(f"config.train.grad_accum_steps must be >= 1, got {accum}")
    lam = jnp.asarray(lam, jnp.float32)
    l1_weight, tau, gamma = float(lc.l1_weight), float(lc.tau), float(lc.gamma)
    congruence = str(lc.congruence)

    def potential_apply(pot_params, b):
        return potentials.apply({"params": pot_params}, b)

    def micro_loss(params, pot_params, batch):
        x, clean, ids = batch["degraded"], batch["clean"], batch["degradation_id"]
        k = index.lookup(ids)
        out = barynet.apply({"params": params}, x)
        values = game.potential_values(potential_apply, pot_params, out.b.astype(jnp.float32), lam, congruence)
        l1, transport, aux = restorer_terms(out, clean, ids, k, values, lam, tau=tau, gamma=gamma)
        return l1_weight * l1 + transport, aux

    def split(batch):
        return jax.tree.map(lambda a: a.reshape((accum, a.shape[0] // accum) + a.shape[1:]), batch)

    def restorer_loss(params, pot_params, batch):
        if accum == 1:
            loss, aux = micro_loss(params, pot_params, batch)
        else:
            body = jax.checkpoint(lambda mb: micro_loss(params, pot_params, mb))
            losses, auxes = jax.lax.map(body, split(batch))
            loss, aux = jnp.mean(losses), jax.tree.map(jnp.mean, auxes)
        return loss, dict(aux, restorer_loss=loss)

    def pushforward(params, batch):
        if accum == 1:
            b = barynet.apply({"params": params}, batch["degraded"]).b
        else:
            bs = jax.lax.map(lambda mb: barynet.apply({"params": params}, mb["degraded"]).b, split(batch))
            b = bs.reshape((-1,) + bs.shape[2:])
        return b.astype(jnp.float32), index.lookup(batch["degradation_id"])

    inner = int(lc.inner_map_steps)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, Any]]:
        if batch["degraded"].shape[0] % accum:
            raise ValueError(
                f"the global batch {batch['degraded'].shape[0]} does not divide into "
                f"grad_accum_steps={accum} micro-batches"
            )
        game_batch = (
            batch if inner == 1 else jax.tree.map(lambda a: jnp.broadcast_to(a, (inner,) + a.shape), batch)
        )  # reuse the batch for every inner step
        new_game, metrics = game.game_step(
            state.game,
            game_batch,
            lam,
            map_loss_fn=restorer_loss,
            pushforward_fn=pushforward,
            potential_apply=potential_apply,
            map_tx=restorer_tx,
            pot_tx=potentials_tx,
            congruence=congruence,
            kappa=float(lc.kappa),
            penalty_points=str(lc.penalty_points),
            inner_map_steps=inner,
            potential_update=str(lc.potential_update),
            skip_absent_potentials=bool(lc.skip_absent_potentials) and congruence in ("penalty", "none"),
            norm_metrics=True,  # each player's gradient and update norms, logged with the other scalars
        )
        metrics["finite"] = jnp.isfinite(metrics["restorer_loss"]) & jnp.isfinite(metrics["potential_objective"])
        new_state = TrainState(state.step + 1, new_game)
        # What a checkpoint of this step would hold, player by player (the loop never saves a False one).
        finite = players_finite(new_state)
        metrics["restorer_finite"], metrics["potentials_finite"] = finite["restorer"], finite["potentials"]
        return new_state, metrics

    return train_step


def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def players_finite(state: TrainState) -> dict[str, jax.Array]:
    """``{'restorer': bool, 'potentials': bool}``: whether each player's parameters and optimizer state are all
    finite (no NaN/inf). Traceable (used inside the step) and callable on a restored state."""
    return {
        "restorer": _all_finite((state.restorer, state.restorer_opt)),
        "potentials": _all_finite((state.potentials, state.potentials_opt)),
    }


def jit_train_step(train_step, mesh, state_example: TrainState):
    """jit over the mesh: parameters and optimizer states replicated, the batch split on the 'data' axis,
    the state donated."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    replicated = NamedSharding(mesh, P())
    state_sharding = jax.tree.map(lambda _: replicated, state_example)
    batch_sharding = NamedSharding(mesh, P("data"))
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    ), state_sharding
