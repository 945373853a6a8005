"""``train_and_evaluate(config, workdir)``: the training loop, read top to bottom.

check the config → the workdir (may this config resume it?) → the :class:`~baryir_jax.train.experiment.Experiment`
(mesh, data, both players, the step) → the initial state → resume from the newest usable checkpoint → the loop
(step, check finite, log, checkpoint, validate) → export the model → the final evaluation.

What each stage uses lives in its own module: :mod:`~baryir_jax.train.experiment` (mesh, data sources, the
players of one run), :mod:`~baryir_jax.train.state` (the train state, building the models and optimizers, LR
schedules, the initial parameters), :mod:`~baryir_jax.train.step` (the
jitted step), :mod:`~baryir_jax.train.checkpointing` (save, restore, divergence), :mod:`~baryir_jax.train.workdir`
(what may change between runs, the export), :mod:`~baryir_jax.train.validation` (PSNR/SSIM during and after).

* Data parallel over every device of every process, parameters and optimizer states replicated.
* SIGTERM (preemption) saves before exiting; a non-finite loss, parameter or optimizer state stops the run
  (:class:`~baryir_jax.train.checkpointing.NonFiniteLossError`) before anything non-finite is saved.
* Logging with clu: every loss term as a scalar, steps/s and ETA (``ReportProgress``), images of
  input/restored/target, periodic per-task validation PSNR/SSIM.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from baryir_jax import config as config_lib
from baryir_jax.config import validate as validate_config
from baryir_jax.data.to_mesh import host_batch_to_global
from baryir_jax.models.io import as_path, save_model_checkpoint
from baryir_jax.train import checkpointing as ckpt_lib
from baryir_jax.train import step as step_lib
from baryir_jax.train import validation as validation_lib
from baryir_jax.train import workdir as workdir_lib
from baryir_jax.train.experiment import Experiment, place_replicated

log = logging.getLogger("baryir_jax.train")


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step (so the save happens between steps)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (resuming from ``workdir`` when it holds checkpoints), validate, export; returns a summary dict.

    Raises ConfigError (a config value that cannot work; ``WorkdirError`` for settings a resumed run must keep and
    for a workdir whose checkpoints all fail to restore), DataError (data not prepared), NonFiniteLossError.
    """
    from clu import metric_writers, periodic_actions

    # The config, then the workdir: may this config resume it? (before anything is built or restored)
    validate_config(config)  # every field, before anything is built or compiled
    workdir = os.fspath(as_path(workdir))  # absolute if local; gs://… stays as it is
    config_json = workdir_lib.config_dict(config)
    steps = workdir_lib.checkpoint_steps(as_path(workdir) / workdir_lib.CHECKPOINTS)
    saved, saved_where = workdir_lib.read_saved_config(workdir, steps)
    workdir_lib.check_resume_config(workdir, saved, saved_where, config_json)  # before building or restoring

    # The experiment (mesh, data, both players, the step), the initial state, then the newest usable checkpoint.
    exp = Experiment(config, workdir)
    mesh = exp.mesh
    is_main = jax.process_index() == 0
    log.info(
        "devices: %d (%s) in %d process(es); potentials: %s; λ = %s; %d steps (%d per epoch)",
        mesh.devices.size,
        jax.devices()[0].platform,
        jax.process_count(),
        exp.index.ids_of_potential,
        np.round(exp.lam, 4).tolist(),
        exp.num_steps,
        exp.steps_per_epoch,
    )

    state = exp.init_state()
    jstep, state_sharding = step_lib.jit_train_step(exp.train_step, mesh, state)
    state = place_replicated(state, state_sharding)

    ckpt_lib.barrier("baryir_jax: processes ready")  # before the first collective (the checkpoint manager's)
    mngr = ckpt_lib.checkpoint_manager(workdir, config)
    start, state, examples = ckpt_lib.restore(mngr, workdir, state, exp)
    if start:
        log.info("resumed from %s at step %d", mngr.directory, start)
        if start >= exp.num_steps:
            log.info("checkpoint step %d is at or past the %d steps configured: nothing to train", start, exp.num_steps)
    if is_main:  # only once the checkpoint is known to resume (or there is none)
        workdir_lib.write_config(workdir, config, start)
    data_iter = iter(exp.pipeline(start_index=examples))
    gb = int(config.data.batch_size)

    # Logging, validation and checkpoint cadences.
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main, asynchronous=True)
    if start == 0:
        writer.write_hparams(_hparams(config))
    t = config.train
    report = periodic_actions.ReportProgress(
        num_train_steps=exp.num_steps, writer=writer, every_steps=max(int(t.log_every), 1), every_secs=None
    )
    eval_every = exp.steps_per_epoch if int(t.eval_every) < 0 else int(t.eval_every)
    image_every = eval_every if int(t.image_every) < 0 else int(t.image_every)
    ckpt_every = max(int(t.checkpoint_every), 1)
    log_every = max(int(t.log_every), 1)
    apply_fn = jax.jit(lambda p, x: exp.barynet.apply({"params": p}, x).restored)

    def position(at_step: int) -> dict:
        return dict(
            examples=examples + (at_step - start) * gb,
            global_batch_size=gb,
            entries_per_epoch=exp.entries_per_epoch,
            step=at_step,
        )

    # The loop: step, check finite, log, checkpoint, validate.
    acc, n_acc = None, 0
    flags: list = []  # per step since the last check: (step, losses finite, restorer finite, potentials finite, …)
    last_metrics: dict[str, Any] = {}
    step = start
    with _Preemption() as preempt, jax.set_mesh(mesh):
        compiled = None
        while step < exp.num_steps:
            batch = host_batch_to_global(next(data_iter), mesh)
            if compiled is None:  # compile first, then meet the other processes before the first collective
                compiled = jstep.lower(state, batch).compile()
                ckpt_lib.barrier("baryir_jax: step compiled")
            state, metrics = compiled(state, batch)
            step += 1
            flags.append(
                (
                    step,
                    metrics.pop("finite"),
                    metrics.pop("restorer_finite"),
                    metrics.pop("potentials_finite"),
                    metrics["restorer_loss"],
                    metrics["potential_objective"],
                )
            )
            acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
            n_acc += 1
            report(step)
            final = step == exp.num_steps
            # The SIGTERM flag is read once per step: read twice, a signal arriving between the reads (e.g. while
            # the scalars are written) announced a save that was never made.
            stop = preempt.requested
            save_now = step % ckpt_every == 0 or final or stop
            if step % log_every == 0 or save_now or len(flags) >= 256:
                ckpt_lib.check_finite(flags, mngr, config)  # before anything of these steps is saved or logged
                flags = []
            if step % log_every == 0 or final:
                host = {k: float(v) / n_acc for k, v in jax.device_get(acc).items()}
                writer.write_scalars(step, {f"train/{k}": v for k, v in host.items()})
                acc, n_acc = None, 0
                last_metrics = dict({k: float(v) for k, v in jax.device_get(metrics).items()}, finite=1.0)
            if save_now:
                ckpt_lib.save(mngr, step, state, position(step), config_json)
            if stop:
                mngr.wait_until_finished()
                log.warning("SIGTERM: saved step %d in %s; rerun the same command to resume", step, mngr.directory)
                writer.flush()
                return dict(preempted=True, step=step)
            if (eval_every and step % eval_every == 0) or (image_every and step % image_every == 0):
                with report.timed("validation"):
                    validation_lib.write_validation(
                        config,
                        exp.data_dir,
                        state.restorer,
                        apply_fn,
                        writer,
                        step,
                        images=bool(image_every) and step % image_every == 0,
                        scalars=bool(eval_every) and step % eval_every == 0,
                    )
    mngr.wait_until_finished()
    writer.flush()

    # The model export and the final evaluation.
    summary: dict[str, Any] = dict(preempted=False, step=step, metrics=last_metrics)
    params = jax.device_get(state.restorer)
    if t.export_model and is_main:
        summary["model"] = _export_model(workdir, config, exp, state, step, trained=step > start)
    if config.eval.after_training and is_main:
        summary["evaluation"] = validation_lib.evaluate_after_training(
            config, exp.data_dir, apply_fn, params, workdir, step
        )
    return summary


def _export_model(workdir: str, config, exp: Experiment, state, step: int, *, trained: bool) -> str:
    """Export the restorer and the potentials of ``state`` to ``WORKDIR/model`` (a model checkpoint) unless that
    holds this step already; returns its path. ``WORKDIR/model`` always holds the final step: written again
    whenever this run trained or the export on disk is of another step or incomplete (e.g. a run killed while
    exporting)."""
    if not trained and workdir_lib.exported_step(workdir) == step:
        return os.fspath(as_path(workdir) / workdir_lib.MODEL)
    params, potentials = jax.device_get((state.restorer, state.potentials))

    def write(directory):
        save_model_checkpoint(
            directory,
            params,
            config_lib.model_kwargs(config),
            potentials,
            dict(
                num_potentials=exp.index.num_potentials,
                channels=8 * int(config.model.dim),
                patch_size=int(config.data.patch_size),
            ),
            extra=dict(step=step, tasks=list(config.data.tasks), ids_of_potential=exp.index.ids_of_potential),
        )

    model = workdir_lib.export_model(workdir, write)
    log.info("exported the model of step %d to %s", step, model)
    return model


def _hparams(config) -> dict[str, Any]:
    """The config as flat ``section.field`` hyperparameters for the metric writer (sequences as strings)."""
    return {k: (str(v) if isinstance(v, (tuple, list)) else v) for k, v in _flatten(config.to_dict()).items()}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
