"""Training checkpoints: writing them, resuming from the newest one that restores and is finite, and stopping a
run that diverged before anything non-finite is saved.

* One orbax ``CheckpointManager`` step (``WORKDIR/checkpoints/STEP``) holds the whole
  :class:`~baryir_jax.train.state.TrainState` (``state``, in the layout of
  :class:`~baryir_jax.train.state.CheckpointState`), the data position (``data_position``: examples of the
  shared stream consumed, portable across worker and process counts) and the config that ran (``config``).
  Asynchronous, ``config.train.max_to_keep`` kept (:func:`checkpoint_manager`, :func:`save`).
* :func:`restore`: the newest checkpoint of the workdir that restores and is finite; newer ones that do not are
  named and set aside (:mod:`baryir_jax.train.workdir`: what may change between runs, damaged checkpoints).
* :func:`check_finite`: a non-finite loss, parameter or optimizer state stops the run
  (:class:`NonFiniteLossError`) with one message saying which player diverged, the last finite step and what
  to lower.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from baryir_jax.errors import RunFailed
from baryir_jax.models.io import as_path
from baryir_jax.train import state as state_lib
from baryir_jax.train import step as step_lib
from baryir_jax.train import workdir as workdir_lib

if TYPE_CHECKING:
    from baryir_jax.train.experiment import Experiment

log = logging.getLogger("baryir_jax.train")


class NonFiniteLossError(RunFailed, RuntimeError):
    """Training diverged: a loss, or a player's parameters or optimizer state, became NaN/inf. The run stopped
    without saving it; its newest checkpoint (if any) is finite. ``baryir-train`` exits with code 3."""


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(config.train.max_to_keep), create=True, enable_async_checkpointing=True
    )
    return ocp.CheckpointManager(
        as_path(workdir) / workdir_lib.CHECKPOINTS,
        options=options,
        item_handlers=dict(
            state=ocp.StandardCheckpointHandler(),
            data_position=ocp.JsonCheckpointHandler(),
            config=ocp.JsonCheckpointHandler(),
        ),
    )


def save(mngr, step, state, data_position: dict, config_json: dict):
    """One checkpoint step: the train state, the data position (examples of the shared stream consumed: portable
    across worker and process counts, unlike grain's per-worker iterator state) and the config that ran."""
    # The save finishes in the background while the next steps run, and the step donates its input state:
    # save a copy, so that a donated buffer (aliased by the host copy on CPU) is never what gets written.
    state = jax.tree.map(jnp.copy, state_lib.to_checkpoint(state))  # the layout of every version's checkpoints
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_position=ocp.args.JsonSave(data_position),
            config=ocp.args.JsonSave(config_json),
        ),
    )


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Wait for every process at the coordination service. The first cross-process collective on CPU (gloo)
    gives up after 30 s, and processes can be minutes apart after data preparation and initialisation."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is not None:
        client.wait_at_barrier(name, timeout_s * 1000)


def _first_line(e: BaseException, limit: int = 240) -> str:
    text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def restore(mngr, workdir: str, state, exp: Experiment) -> tuple[int, Any, int]:
    """Resume from the newest checkpoint that restores completely and is finite: (step, state, data position in
    examples); (0, state, 0) without checkpoints. Newer steps that fail are named, and moved aside once an older
    one restored; if none restores, :class:`~baryir_jax.train.workdir.WorkdirError` says what to delete."""
    steps = workdir_lib.checkpoint_steps(mngr.directory)
    if not steps:
        return 0, state, 0
    for s in steps:  # the saved tree against the configured one, before orbax sees a mismatch
        try:
            meta = mngr.item_metadata(s)["state"]
        except Exception:  # noqa: BLE001  (a damaged step: the restore below names it)
            continue
        if meta is not None:
            workdir_lib.check_state_structure(workdir, s, meta, state_lib.to_checkpoint(state))
            break
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_lib.to_checkpoint(state))
    finite_fn = jax.jit(step_lib.players_finite)
    skipped: list[tuple[int, str]] = []
    for s in steps:
        has_position = (mngr.directory / str(s) / "data_position").exists()
        args = dict(state=ocp.args.StandardRestore(abstract))
        if has_position:
            args["data_position"] = ocp.args.JsonRestore()
        try:
            restored = mngr.restore(s, args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001  (truncated or missing files: tensorstore, orbax, OS errors)
            skipped.append((s, f"it cannot be read ({_first_line(e)})"))
            continue
        restored_state = state_lib.from_checkpoint(restored["state"])
        finite = {k: bool(v) for k, v in jax.device_get(finite_fn(restored_state)).items()}
        bad = [k for k, ok in finite.items() if not ok]
        if bad:
            players = " and ".join(POSSESSIVE[p] for p in bad)
            skipped.append((s, f"it holds non-finite values ({players} parameters or RMSprop state)"))
            continue
        break
    else:
        what = "; ".join(f"step {s}: {why}" for s, why in skipped)
        raise workdir_lib.WorkdirError(
            f"no checkpoint in {mngr.directory} can be resumed ({what}). To train from the start, delete "
            f"{mngr.directory} (or move it away); or use another --workdir"
        )
    for bad_step, why in skipped:
        log.warning("checkpoint step %d skipped: %s; resuming from step %d", bad_step, why, s)
    if skipped:
        if jax.process_index() == 0:
            workdir_lib.set_aside(workdir, skipped)
        barrier("baryir_jax: unusable checkpoints set aside")
        mngr.reload()
    gb = int(exp.config.data.batch_size)
    position = restored.get("data_position") if has_position else None
    if position is not None:
        examples = int(position["examples"])
        if int(position.get("entries_per_epoch", exp.entries_per_epoch)) != exp.entries_per_epoch:
            log.warning(
                "the data sets changed size since checkpoint step %d (%s entries an epoch, now %d): the data stream "
                "continues at example %d of the new one",
                s,
                position.get("entries_per_epoch"),
                exp.entries_per_epoch,
                examples,
            )
    else:  # written before checkpoints kept a data position: one global batch per step from the stream's start
        examples = s * gb
        log.info(
            "checkpoint step %d has no data position: continuing the data stream at step × batch = %d", s, examples
        )
    return s, restored_state, examples


POSSESSIVE = {"restorer": "the restorer's", "potentials": "the potentials'"}


def divergence_message(flag, newest: int | None, config, ckpt_dir) -> str:
    step, loss_ok, restorer_ok, potentials_ok, restorer_loss, potential_objective = flag
    players = [name for name, ok in (("restorer", restorer_ok), ("potentials", potentials_ok)) if not ok]
    o = config.optim
    if players:
        what = f"{' and '.join(POSSESSIVE[p] for p in players)} parameters or RMSprop state became non-finite"
        others = [p for p in ("restorer", "potentials") if p not in players]
        if others:
            what += f" ({POSSESSIVE[others[0]]} stayed finite)"
        lrs = {
            "restorer": f"--config.optim.lr (now {o.lr:g})",
            "potentials": f"--config.optim.potentials_lr (now {o.potentials_lr:g})",
        }
        fix = "lower " + " and ".join(lrs[p] for p in players)
    else:
        what = (
            f"the loss became non-finite (restorer loss {float(restorer_loss)}, potential objective "
            f"{float(potential_objective)})"
        )
        fix = (
            f"lower --config.optim.lr (now {o.lr:g}) or --config.optim.potentials_lr (now {o.potentials_lr:g}), "
            "or check the data"
        )
    last = f"step {step - 1}" if step > 1 else "step 0 (the initial state)"
    if newest is None:
        saved = f"No checkpoint was written yet (checkpoint_every={int(config.train.checkpoint_every)})"
    else:
        saved = f"The newest checkpoint is step {newest} in {ckpt_dir} (finite; a rerun resumes from it)"
    return (
        f"training diverged at step {step}: {what}; the last finite state is {last}. {saved}; nothing non-finite "
        f"was saved. To continue, {fix}."
    )


def check_finite(flags: list, mngr, config) -> None:
    """Raise :class:`NonFiniteLossError` at the first step whose losses or new state are not all finite."""
    for flag in jax.device_get(flags):
        if not (flag[1] and flag[2] and flag[3]):
            mngr.wait_until_finished()
            raise NonFiniteLossError(divergence_message(flag, mngr.latest_step(), config, mngr.directory))
