"""Training checkpoints keep one layout across versions: a checkpoint written in the layout of earlier versions (the
train state as six flat fields, with the PRNG key they split each step) restores exactly and resumes.

Cost: a tiny BaryNet, its initialisation and one compile of its step on the 8 CPU devices (4.5 min on a shared
2-core machine).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from test_large_batch import tiny_config  # the tiny BaryNet at batch 8, patch 16

from baryir_jax.train import checkpointing as ckpt
from baryir_jax.train import step as step_lib
from baryir_jax.train import workdir as workdir_lib
from baryir_jax.train.experiment import Experiment, place_replicated
from baryir_jax.train.state import TrainState


class EarlierTrainState(NamedTuple):
    """The train state as checkpoints of earlier versions hold it (``checkpoints/STEP/state``)."""

    step: Any
    rng: Any  # uint32[2], split each step and never used
    restorer: Any
    potentials: Any
    restorer_opt: Any
    potentials_opt: Any


def _players(state):
    return (state.step, state.restorer, state.potentials, state.restorer_opt, state.potentials_opt)


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_checkpoint_in_the_earlier_layout_restores_exactly_and_resumes(tmp_path):
    c = tiny_config()
    workdir = str(tmp_path)
    exp = Experiment(c, workdir, with_data=False)
    s0 = exp.init_state()
    jstep, sharding = step_lib.jit_train_step(exp.train_step, exp.mesh, s0)
    s0 = place_replicated(s0, sharding)

    # Written by hand in the earlier layout, values unlike the initial state's (so a restore that kept s0 fails).
    def changed(tree, scale):
        return jax.tree.map(lambda x: x * scale + 0.25 if jnp.issubdtype(x.dtype, jnp.floating) else x + 7, tree)

    host = jax.device_get(s0)
    earlier = EarlierTrainState(
        np.int32(5),
        np.asarray(jax.random.key_data(jax.random.split(jax.random.PRNGKey(3))[0])),
        changed(host.restorer, 1.5),
        changed(host.potentials, -0.5),
        changed(host.restorer_opt, 2.0),
        changed(host.potentials_opt, 3.0),
    )
    position = dict(examples=40, global_batch_size=8, entries_per_epoch=exp.entries_per_epoch, step=5)
    handlers = dict(
        state=ocp.StandardCheckpointHandler(),
        data_position=ocp.JsonCheckpointHandler(),
        config=ocp.JsonCheckpointHandler(),
    )
    with ocp.CheckpointManager(
        tmp_path / workdir_lib.CHECKPOINTS, options=ocp.CheckpointManagerOptions(create=True), item_handlers=handlers
    ) as writer:
        writer.save(
            5,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(earlier),
                data_position=ocp.args.JsonSave(position),
                config=ocp.args.JsonSave(workdir_lib.config_dict(c)),
            ),
        )
        writer.wait_until_finished()

    mngr = ckpt.checkpoint_manager(workdir, c)
    step, state, examples = ckpt.restore(mngr, workdir, s0, exp)
    assert (step, examples) == (5, 40)
    assert isinstance(state, TrainState)
    _assert_equal(_players(state), _players(earlier))

    # Resume: one step from it, saved, and restored again; the new checkpoint keeps the earlier layout.
    rng = np.random.default_rng(0)
    batch = dict(
        degraded=rng.uniform(0, 1, (8, 16, 16, 3)).astype(np.float32),
        clean=rng.uniform(0, 1, (8, 16, 16, 3)).astype(np.float32),
        degradation_id=rng.choice(exp.degradation_ids(), 8).astype(np.int32),
    )
    with jax.set_mesh(exp.mesh):
        state, metrics = jstep(state, batch)
    assert int(state.step) == 6 and bool(metrics["finite"])
    ckpt.save(mngr, 6, state, dict(position, examples=48, step=6), workdir_lib.config_dict(c))
    mngr.wait_until_finished()
    saved_fields = {k.split(".")[0] for k in workdir_lib.abstract_leaves(mngr.item_metadata(6)["state"])}
    assert saved_fields == set(EarlierTrainState._fields)
    step, again, examples = ckpt.restore(mngr, workdir, s0, exp)
    assert (step, examples) == (6, 48)
    _assert_equal(_players(again), _players(jax.device_get(state)))
    mngr.close()
