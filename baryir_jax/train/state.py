"""The train state: the step and the game's state (both players' parameters and optimizer states) as one pytree,
and its layout in a training checkpoint; building the two players (models) and their optimizers (RMSprop, LR
schedules, the large-batch options); the initial parameters."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from baryir_jax import config as config_lib
from baryir_jax.config import ConfigError, large_batch_problems
from baryir_jax.models import BaryNet, Potentials
from baryir_jax.transport.game import GameState

PyTree = Any


class TrainState(NamedTuple):
    """``step`` (int32 scalar: completed outer iterations) and ``game``
    (:class:`~baryir_jax.transport.game.GameState`: the map player is the restorer, BaryNet; the potential player
    the potentials). The properties name the game's fields in the restorer's terms."""

    step: jax.Array
    game: GameState

    @property
    def restorer(self) -> PyTree:  # BaryNet params
        return self.game.map_params

    @property
    def potentials(self) -> PyTree:  # Potentials params: {'potential_0': …}
        return self.game.pot_params

    @property
    def restorer_opt(self) -> PyTree:  # optax state of the restorer's RMSprop
        return self.game.map_opt_state

    @property
    def potentials_opt(self) -> PyTree:  # optax state of the potentials' RMSprop
        return self.game.pot_opt_state


class CheckpointState(NamedTuple):
    """The layout of the train state in a training checkpoint (``checkpoints/STEP/state``), the same since the
    first checkpoints, so that every checkpoint restores with every version: the flat fields below. ``rng`` (a
    uint32[2] PRNG key) is a slot that older versions filled with a key split each step and never used; it is
    written as zeros and ignored on restore."""

    step: jax.Array
    rng: jax.Array
    restorer: PyTree
    potentials: PyTree
    restorer_opt: PyTree
    potentials_opt: PyTree


def to_checkpoint(state: TrainState) -> CheckpointState:
    """``state`` in the checkpoint layout; the ``rng`` slot zeros, placed as ``state.step`` is."""
    zeros = np.zeros((2,), np.uint32)
    if isinstance(state.step, jax.Array):
        rng = jax.make_array_from_callback(zeros.shape, state.step.sharding, lambda index: zeros[index])
    else:  # abstract or host values (orbax metadata, numpy)
        rng = zeros
    g = state.game
    return CheckpointState(state.step, rng, g.map_params, g.pot_params, g.map_opt_state, g.pot_opt_state)


def from_checkpoint(saved: CheckpointState) -> TrainState:
    """The train state of a checkpoint's ``state`` item (its ``rng`` slot dropped)."""
    return TrainState(saved.step, GameState(saved.restorer, saved.potentials, saved.restorer_opt, saved.potentials_opt))


def build_models(config, num_potentials: int, devices=None) -> tuple[BaryNet, Potentials]:
    """BaryNet and the potentials of ``config``, their depthwise convolutions chosen for ``devices`` (the devices
    of the mesh the step is compiled for; default ``jax.devices()``)."""
    barynet = BaryNet(
        **config_lib.model_kwargs(config),
        dtype=config_lib.compute_dtype(config.dtype),
        conv_impl=config_lib.conv_impl(config, devices),
    )
    potentials = Potentials(
        num_potentials=num_potentials, channels=8 * int(config.model.dim), patch_size=int(config.data.patch_size)
    )
    return barynet, potentials


def check_large_batch_options(config) -> None:
    """One-line :class:`ConfigError` for a bad LR-scaling, warm-up or clipping field of ``config.optim``
    (:func:`baryir_jax.config.large_batch_problems`; ``baryir-train`` checks them with every other field first)."""
    problems = large_batch_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))


def batch_lr_factor(config) -> float:
    """The LR multiplier for the global batch B = ``config.data.batch_size`` and the reference batch B₀ =
    ``config.optim.reference_batch``: 1 ('none'), B / B₀ ('linear', Goyal et al. 2017) or √(B / B₀) ('sqrt',
    Krizhevsky 2014; Hoffer et al. 2017). Raises :class:`ConfigError` for a bad field."""
    check_large_batch_options(config)
    scaling = config.optim.get("lr_scaling", "none")
    if scaling == "none":
        return 1.0
    ratio = int(config.data.batch_size) / int(config.optim.get("reference_batch", 3))
    return ratio if scaling == "linear" else math.sqrt(ratio)


def lr_schedule(config, steps_per_epoch: int, updates_per_step: int = 1, base: float | None = None):
    """LR as a function of an optimizer's update count:
    ``base · s_B · min(1, (t + 1) / W) · decay_factor^⌊t / (decay_every_epochs · steps_per_epoch)⌋``.

    ``t = count // updates_per_step`` is the training step (0-based); ``updates_per_step``: optimizer updates
    per training step (2 for the potentials' official two-step update), so that both players warm up and
    change LR at the same training step. ``s_B`` is :func:`batch_lr_factor` (1 unless
    ``config.optim.lr_scaling`` is set) and W = ``config.optim.warmup_steps`` (0 = no warm-up: the factor is
    left out). Defaults give the official schedule (``trainer_bary.py``: StepLR by epochs), value for value.

    Not ``optax.exponential_decay(staircase=True)`` × ``optax.linear_schedule``: measured against this formula,
    optax's step decay agrees bit for bit under jit but not when evaluated eagerly (at t = 24 of base 1e-4, decay
    0.1 every 6 steps: 1e-08 against 1.0000001e-08, which fails the value-for-value test of the defaults), and its
    linear warm-up is computed as ``(1/W − 1)·(1 − t/(W−1)) + 1``, up to 1.3e-5 off relative (W = 1000, t = 0:
    7.9998966e-07 against 8.0000001e-07 for base 8e-4).
    """
    o = config.optim
    base = float(o.lr if base is None else base)
    scale = batch_lr_factor(config)
    if scale != 1.0:
        base = base * scale
    every = max(int(o.decay_every_epochs), 1) * max(int(steps_per_epoch), 1)
    factor = float(o.decay_factor)
    warmup = int(o.get("warmup_steps", 0))

    def lr(count):
        step = count // updates_per_step
        value = base * factor ** (step // every)
        if warmup > 0:
            value = value * jnp.minimum(1.0, (step + 1) / warmup)
        return value

    return lr


def make_optimizers(config, steps_per_epoch: int, potential_updates_per_step: int):
    """Two RMSprops equal to PyTorch's (decay 0.99, eps 1e-8 outside the square root), with step-decayed LRs
    (:func:`lr_schedule`). With ``config.optim.clip_norm`` / ``potentials_clip_norm`` > 0 the player's gradient
    is first clipped to that global L2 norm (``optax.clip_by_global_norm``, before RMSprop; each of the
    potentials' two updates is clipped on its own); at 0 the optimizer is RMSprop alone (same state layout)."""
    o = config.optim
    check_large_batch_options(config)

    def tx(base, per_step, clip):
        rms = optax.rmsprop(
            lr_schedule(config, steps_per_epoch, per_step, base),
            decay=float(o.rmsprop_decay),
            eps=float(o.eps),
            eps_in_sqrt=False,
        )
        return optax.chain(optax.clip_by_global_norm(clip), rms) if clip > 0 else rms

    return (
        tx(o.lr, 1, float(o.get("clip_norm", 0.0))),
        tx(o.potentials_lr, potential_updates_per_step, float(o.get("potentials_clip_norm", 0.0))),
    )


# XLA options for compiling BaryNet's parameter initialisation where it runs on the CPU. Its program is the random
# initialisers of every parameter tensor (hundreds of threefry evaluations; the forward pass is dead code), run
# once: LLVM's optimisation of it was most of the compile time (tiny test model 64 s → 17 s, full model 105 s →
# 78 s on the 2-core development VM) and changes none of BaryNet's values, checked bit for bit by
# tests/test_train_step.py. Not for the potentials: at this level their uniform (PyTorch-default) kernels differ
# in the last bit, so they compile with XLA's defaults (a few seconds). Other backends: their defaults.
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _init_params(init, key, *, cheap_on_cpu: bool = False):
    """``init(key)`` compiled once; with ``cheap_on_cpu``, with :data:`CPU_INIT_COMPILER_OPTIONS` where it runs on
    the CPU."""
    if not cheap_on_cpu or jax.default_backend() != "cpu" or isinstance(key, jax.core.Tracer):
        # elsewhere, or traced (jax.eval_shape of the state, the preflight's abstract init): as before
        return jax.jit(init)(key)
    return jax.jit(init).lower(key).compile(compiler_options=CPU_INIT_COMPILER_OPTIONS)(key)


def init_state(
    config, barynet: BaryNet, potentials: Potentials, restorer_tx, potentials_tx, restorer_params=None
) -> TrainState:
    """The step-0 state: both players initialised from ``config.seed`` (or the restorer from
    ``restorer_params``), their optimizer states fresh."""
    # Three keys, the first unused: it was the train state's RNG (dropped, never used by the step). Splitting in
    # two instead would change every initial parameter, every run and figure.
    _, k_model, k_pot = jax.random.split(jax.random.PRNGKey(int(config.seed)), 3)
    p = int(config.data.patch_size)
    # Initialised under jit (one compilation, not one per op: eager init of the full model took 93 s on a GPU)
    # and, for the restorer, on a 16x16 input: its parameter shapes do not depend on the image size.
    if restorer_params is None:
        restorer_params = _init_params(
            lambda k: barynet.init(k, jnp.zeros((1, 16, 16, 3), jnp.float32))["params"], k_model, cheap_on_cpu=True
        )
    side = p // 8
    pot_params = _init_params(
        lambda k: potentials.init(k, jnp.zeros((1, side, side, potentials.channels), jnp.float32))["params"], k_pot
    )
    return TrainState(
        jnp.zeros((), jnp.int32),
        GameState(restorer_params, pot_params, restorer_tx.init(restorer_params), potentials_tx.init(pot_params)),
    )
