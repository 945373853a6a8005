"""The max-min barycenter game as pure functions.

    L(f, T) = Σ_k λ_k E_{x~P_k}[ c(x, T(x)) − f_k(T(x)) ],     B = sup_{Σλf ≡ 0} inf_T L(f, T).

The map player (per-source maps T_k or one shared map T, as BaryIR) minimises L; the potential player maximises
it, i.e. minimises Σ_k λ_k E f_k(T(x)). Nothing here knows about images or networks: the map and the potentials
enter as functions of (params, inputs).

Conventions:

* potential values are always (N, K): all K potentials at N points; ``source_index`` (N,) int in [0, K) says
  which potential belongs to each point; an index of −1 (e.g. `congruence.PotentialIndex.lookup` of an
  unknown id) gives that point weight 0;
* per-sample objectives are averaged over the N points: mean_i λ_{k(i)}·(…), which is BaryIR's
  (1/B) Σ_i λ_{k(i)}(…). With equal batches per source this is L / K (NOTB sums per-source means);
* potential parameters are a dict with top-level keys ``potential_0 … potential_{K-1}``
  (`baryir_jax.models.Potentials` has exactly that layout).

`game_step` does ``inner_map_steps`` map updates (``lax.scan``), a fresh forward of the updated map, and the
potential update(s), with two Optax optimizers on two separate pytrees.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from baryir_jax.transport import congruence as cg

PyTree = Any
MapLossFn = Callable[[PyTree, PyTree, PyTree], tuple[jax.Array, Any]]
PushforwardFn = Callable[[PyTree, PyTree], tuple[jax.Array, jax.Array]]
PotentialApply = Callable[[PyTree, jax.Array], jax.Array]

POTENTIAL_UPDATES = ("two_step", "summed")


class GameState(NamedTuple):
    """Both players' parameters and optimizer states (plain pytrees)."""

    map_params: PyTree
    pot_params: PyTree
    map_opt_state: PyTree
    pot_opt_state: PyTree


def init_state(
    map_params: PyTree, pot_params: PyTree, map_tx: optax.GradientTransformation, pot_tx: optax.GradientTransformation
) -> GameState:
    return GameState(map_params, pot_params, map_tx.init(map_params), pot_tx.init(pot_params))


def potential_keys(num_potentials: int) -> list[str]:
    return [f"potential_{k}" for k in range(num_potentials)]


# ----------------------------------------------------------------------------------------------- objectives


def _onehot(source_index: jax.Array, k: int, dtype) -> jax.Array:
    return jax.nn.one_hot(jnp.asarray(source_index), k, dtype=dtype)  # index −1 → zero row


def select(potential_values: jax.Array, source_index: jax.Array) -> jax.Array:
    """f_{k(i)}(y_i): (N,) (0 where the index is −1)."""
    oh = _onehot(source_index, potential_values.shape[-1], potential_values.dtype)
    return jnp.sum(potential_values * oh, axis=-1)


def sample_weights(source_index: jax.Array, lam: jax.Array, dtype=jnp.float32) -> jax.Array:
    """λ_{k(i)}: (N,) (0 where the index is −1)."""
    lam = jnp.asarray(lam, dtype=dtype)
    return _onehot(source_index, lam.shape[0], dtype) @ lam


def map_objective(
    cost: jax.Array,
    potential_values: jax.Array,
    source_index: jax.Array,
    lam: jax.Array,
    extra: jax.Array | None = None,
) -> jax.Array:
    """mean_i λ_{k(i)}·(cost_i + extra_i − f_{k(i)}(y_i)); minimised by the map player.

    ``extra`` (N,) holds additional per-sample cost terms that share the weight λ_{k(i)} (BaryIR's
    γ·(orthogonality + contrastive)).
    """
    _check_values(potential_values, source_index, lam)
    w = sample_weights(source_index, lam, potential_values.dtype)
    term = cost - select(potential_values, source_index)
    if extra is not None:
        term = term + extra
    return jnp.mean(w * term)


def potential_objective(potential_values: jax.Array, source_index: jax.Array, lam: jax.Array) -> jax.Array:
    """mean_i λ_{k(i)} f_{k(i)}(y_i); the potential player MINIMISES this (= maximises `map_objective`)."""
    _check_values(potential_values, source_index, lam)
    w = sample_weights(source_index, lam, potential_values.dtype)
    return jnp.mean(w * select(potential_values, source_index))


def _check_values(values, source_index, lam):
    if values.ndim != 2:
        raise ValueError(f"potential values must be (N, K), got shape {values.shape}")
    if jnp.shape(source_index) != values.shape[:1]:
        raise ValueError(f"source_index has shape {jnp.shape(source_index)}, values {values.shape}")
    if jnp.shape(lam) != values.shape[1:]:
        raise ValueError(f"lam has shape {jnp.shape(lam)}, values have K={values.shape[1]}")


def potential_values(
    potential_apply: PotentialApply, pot_params: PyTree, y: jax.Array, lam: jax.Array, congruence: str
) -> jax.Array:
    """f values (N, K) at y: the raw ``potential_apply`` output passed through `congruence.apply_congruence`.

    A ``map_loss_fn`` must use this (with the same congruence mode) so that both players see the same f.
    """
    return cg.apply_congruence(potential_apply(pot_params, y), lam, congruence)


def present_potentials(source_index: jax.Array, num_potentials: int) -> jax.Array:
    """(K,) bool: which potentials have at least one point in the batch."""
    return jnp.sum(_onehot(source_index, num_potentials, jnp.int32), axis=0) > 0


def keep_absent_potentials(new: PyTree, old: PyTree, present: jax.Array, num_potentials: int) -> PyTree:
    """Per-potential select: subtrees of absent potentials are taken from ``old``.

    Works on the parameter dict and on any optimizer state that mirrors it: every Mapping inside the tree whose
    keys are exactly ``potential_0 … potential_{K-1}`` is selected key by key; every other leaf (e.g. Adam's
    step ``count``, which is shared by all parameters) is taken from ``new``. This covers optax's rmsprop, adam,
    sgd with momentum and their chains, whose states hold copies of the params tree.
    """
    keys = potential_keys(num_potentials)
    keyset = set(keys)

    def is_pot_dict(x):
        return isinstance(x, Mapping) and set(x.keys()) == keyset

    def sel(n, o):
        if not is_pot_dict(n):
            return n
        out = {
            name: jax.tree.map(lambda a, b, k=k: jnp.where(present[k], a, b), n[name], o[name])
            for k, name in enumerate(keys)
        }
        return out if type(n) is dict else type(n)(out)

    return jax.tree.map(sel, new, old, is_leaf=is_pot_dict)


def global_norm(tree: PyTree) -> jax.Array:
    """‖tree‖₂ over all leaves, in float32 (a scalar)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------------------------- the step


def game_step(
    state: GameState,
    batch: PyTree,
    lam: jax.Array,
    *,
    map_loss_fn: MapLossFn,
    pushforward_fn: PushforwardFn,
    potential_apply: PotentialApply,
    map_tx: optax.GradientTransformation,
    pot_tx: optax.GradientTransformation,
    congruence: str = "penalty",
    kappa: float = 10.0,
    penalty_points: str = "last",
    inner_map_steps: int = 1,
    potential_update: str = "two_step",
    skip_absent_potentials: bool = False,
    norm_metrics: bool = False,
) -> tuple[GameState, dict[str, jax.Array]]:
    """One outer iteration of the game: map update(s), fresh forward, potential update(s). Pure and jit-able.

    Args:
      state: `GameState`.
      batch: any pytree. With ``inner_map_steps == 1`` it is passed as is; with ``inner_map_steps = S > 1``
        every leaf must have a leading axis of length S, and inner step s uses ``batch[s]`` (fresh samples per
        step, as NOTB; tile one batch S times to reuse it). The potential step uses the last one.
      lam: (K,) weights λ.
      map_loss_fn: ``(map_params, pot_params, batch) -> (loss, aux)``, minimised over ``map_params``
        (``pot_params`` are frozen). It must evaluate the potentials through `potential_values` with the same
        ``congruence``. ``aux`` is None or a dict of scalars; those of the last inner step are returned in the
        metrics. For the plain game the loss is `map_objective`; BaryIR adds its reconstruction term etc.
      pushforward_fn: ``(map_params, batch) -> (y (N, ...), source_index (N,))``: the fresh forward after the
        map update(s); y is put under stop-gradient.
      potential_apply: ``(pot_params, y) -> (N, K)`` raw potential values g.
      map_tx, pot_tx: the two Optax transformations (their states live in ``state``).
      congruence: 'penalty' (BaryIR), 'exact', 'centered' or 'none' (see `congruence`).
      kappa, penalty_points: the soft penalty κ·(Σλf(y))² at the 'last' point (official) or over the 'batch';
        used only with congruence='penalty'.
      inner_map_steps: map updates per potential update (``lax.scan`` when > 1).
      potential_update: 'two_step' (official single-device trainer: one optimizer step on
        `potential_objective`, then, with congruence='penalty', a second step on the penalty evaluated with the
        already updated potentials) or 'summed' (official multi-GPU trainer: one step on the sum). Without the
        penalty both are one step on the potential objective.
      skip_absent_potentials: official detail: in the step on the potential objective alone (the first step of
        'two_step', or 'summed' without penalty), the parameters and optimizer-state subtrees of potentials with
        no point in the batch are left exactly as they were (see `keep_absent_potentials` for the assumption on
        the optimizer state). Only meaningful with 'penalty' or 'none': under the exact parametrisations every
        f_k depends on every g_i, so it is rejected there.

    Returns:
      (new state, metrics): metrics is a flat dict of scalars: ``map_loss`` (last inner step, before its
      update), ``map_loss_mean`` (over inner steps), ``potential_objective`` (before the potential update),
      ``congruence_penalty`` (κ·(Σλf)² at the chosen points; for 'two_step' the value used in the second step,
      otherwise before the update), ``congruence_residual`` (relative, `congruence.residual`) and
      ``congruence_abs`` (max |Σλf|) at all points y before the potential update, ``potentials_present``, and
      the entries of ``aux``. With ``norm_metrics``, also global L2 norms (float32 scalars):
      ``map_grad_norm`` (the map's gradient in the last inner step, before any clipping inside ``map_tx``),
      ``map_update_norm`` (‖map params after − before‖ over the whole outer iteration), ``potential_grad_norm``
      (the gradient of the first, or only, potential step, before clipping), with 'two_step' and the penalty
      ``potential_penalty_grad_norm`` (the second step's), and ``potential_update_norm`` (‖potential params
      after − before‖ over the outer iteration).
    """
    cg.check_mode(congruence)
    if potential_update not in POTENTIAL_UPDATES:
        raise ValueError(f"unknown potential_update {potential_update!r}; known: {POTENTIAL_UPDATES}")
    if penalty_points not in cg.PENALTY_POINTS:
        raise ValueError(f"unknown penalty_points {penalty_points!r}; known: {cg.PENALTY_POINTS}")
    if int(inner_map_steps) < 1:
        raise ValueError(f"inner_map_steps must be >= 1, got {inner_map_steps}")
    if skip_absent_potentials and congruence in cg.EXACT_MODES:
        raise ValueError(
            "skip_absent_potentials needs congruence 'penalty' or 'none': with the exact "
            "parametrisations every f_k depends on all potentials' parameters"
        )
    lam = jnp.asarray(lam, dtype=jnp.float32)
    num_k = lam.shape[0]

    # ---- 1. map update: inner_map_steps updates of the map with the potentials frozen
    pot_frozen = jax.lax.stop_gradient(state.pot_params)

    def map_step(carry, b):
        mp, ms = carry
        (loss, aux), grads = jax.value_and_grad(map_loss_fn, has_aux=True)(mp, pot_frozen, b)
        updates, ms = map_tx.update(grads, ms, mp)
        aux = {} if aux is None else aux
        if norm_metrics and isinstance(aux, Mapping):
            aux = dict(aux, map_grad_norm=global_norm(grads))
        return (optax.apply_updates(mp, updates), ms), (loss, aux)

    carry = (state.map_params, state.map_opt_state)
    if inner_map_steps == 1:
        (map_params, map_opt_state), (loss, aux) = map_step(carry, batch)
        map_losses = loss[None]
        last_batch = batch
    else:
        for leaf in jax.tree.leaves(batch):
            if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != inner_map_steps:
                raise ValueError(
                    f"with inner_map_steps={inner_map_steps} every batch leaf needs a leading axis "
                    f"of that length, got a leaf of shape {jnp.shape(leaf)}"
                )
        (map_params, map_opt_state), (map_losses, aux) = jax.lax.scan(map_step, carry, batch)
        aux = jax.tree.map(lambda a: a[-1], aux)
        last_batch = jax.tree.map(lambda a: a[-1], batch)

    # ---- 2. fresh forward: the pushforward of the updated map, the points y the potentials are updated on
    y, source_index = pushforward_fn(map_params, last_batch)
    y = jax.lax.stop_gradient(y)

    # ---- 3. potential update on y: 'two_step' (objective, then penalty at the updated potentials) or 'summed'
    use_penalty = congruence == "penalty"
    pp, ps = state.pot_params, state.pot_opt_state
    present = present_potentials(source_index, num_k)

    def values(p):
        return potential_values(potential_apply, p, y, lam, congruence)

    if potential_update == "two_step" or not use_penalty:
        # 3a. one step on the potential objective; potentials absent from the batch kept as they were (optional)
        def objective(p):
            v = values(p)
            return potential_objective(v, source_index, lam), v

        def keep_absent(new_p, new_s):
            if not skip_absent_potentials:
                return new_p, new_s
            return (
                keep_absent_potentials(new_p, pp, present, num_k),
                keep_absent_potentials(new_s, ps, present, num_k),
            )

        (pot_obj, v0), grads = jax.value_and_grad(objective, has_aux=True)(pp)
        updates, new_ps = pot_tx.update(grads, ps, pp)
        new_pp, new_ps = keep_absent(optax.apply_updates(pp, updates), new_ps)
        if use_penalty:
            # 3b. one step on the congruence penalty, evaluated with the already updated potentials

            def penalty(p):
                return cg.penalty(values(p), lam, kappa, penalty_points)

            pen, grads2 = jax.value_and_grad(penalty)(new_pp)
            updates, new_ps = pot_tx.update(grads2, new_ps, new_pp)
            new_pp = optax.apply_updates(new_pp, updates)
        else:
            pen = cg.penalty(v0, lam, kappa, penalty_points)  # diagnostic only
    else:  # summed with penalty: one step on objective + penalty, every potential gets a gradient (multi-GPU trainer)

        def summed(p):
            v = values(p)
            obj = potential_objective(v, source_index, lam)
            pen = cg.penalty(v, lam, kappa, penalty_points)
            return obj + pen, (obj, pen, v)

        (_, (pot_obj, pen, v0)), grads = jax.value_and_grad(summed, has_aux=True)(pp)
        updates, new_ps = pot_tx.update(grads, ps, pp)
        new_pp = optax.apply_updates(pp, updates)

    # ---- the step's metrics
    metrics = {
        "map_loss": map_losses[-1],
        "map_loss_mean": jnp.mean(map_losses),
        "potential_objective": pot_obj,
        "congruence_penalty": pen,
        "congruence_residual": cg.residual(v0, lam),
        "congruence_abs": jnp.max(jnp.abs(cg.weighted_sum(v0, lam))),
        "potentials_present": jnp.sum(present.astype(jnp.int32)),
    }
    if not isinstance(aux, Mapping):
        raise ValueError(f"map_loss_fn's aux must be None or a dict of scalars, got {type(aux).__name__}")
    for key, val in aux.items():
        if key in metrics:
            raise ValueError(f"map_loss_fn's aux key {key!r} collides with a game metric")
        metrics[key] = val
    if norm_metrics:

        def diff_norm(new, old):
            return global_norm(jax.tree.map(lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32), new, old))

        metrics["map_update_norm"] = diff_norm(map_params, state.map_params)
        metrics["potential_grad_norm"] = global_norm(grads)
        if potential_update == "two_step" and use_penalty:
            metrics["potential_penalty_grad_norm"] = global_norm(grads2)
        metrics["potential_update_norm"] = diff_norm(new_pp, pp)
    return GameState(map_params, new_pp, map_opt_state, new_ps), metrics


def make_game_step(**config) -> Callable[[GameState, PyTree, jax.Array], tuple[GameState, dict]]:
    """``jax.jit(functools.partial(game_step, **config))``: a step ``(state, batch, lam) -> (state, metrics)``."""
    return jax.jit(functools.partial(game_step, **config))
