"""``train_and_evaluate(config, workdir)``: mesh, data, state, the jitted step, checkpoints, logging, validation.

* Data parallel over every device of every process: a 1-D ``Mesh`` ('data', ``AxisType.Auto``), the batch
  split on it, parameters and optimizer states replicated.
* Checkpoints: one orbax ``CheckpointManager`` step holds the whole :class:`TrainState`, the data position
  (examples of the shared stream consumed: portable across worker and process counts) and the config.
  Asynchronous, ``max_to_keep``; a run resumes from the newest checkpoint of its workdir that restores and is
  finite (:mod:`baryir_jax.train.workdir`: what may change between runs, damaged checkpoints, the export);
  SIGTERM (preemption) saves before exiting; a non-finite loss, parameter or optimizer state stops the run
  before anything non-finite is saved.
* Logging with clu: every loss term as a scalar, steps/s and ETA (``ReportProgress``), images of
  input/restored/target, periodic per-task validation PSNR/SSIM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import AxisType, Mesh

from baryir_jax import config as config_lib
from baryir_jax.config import ConfigError, mixture_multipliers
from baryir_jax.config import validate as validate_config
from baryir_jax.data import pipeline as data_pipeline
from baryir_jax.data import sources as data_sources
from baryir_jax.data.to_mesh import host_batch_to_global
from baryir_jax.errors import RunFailed
from baryir_jax.evaluate import metrics as eval_metrics
from baryir_jax.evaluate.restore import restore_float
from baryir_jax.models.io import as_path, load_model_checkpoint, save_model_checkpoint
from baryir_jax.train import state as state_lib
from baryir_jax.train import step as step_lib
from baryir_jax.train import workdir as workdir_lib
from baryir_jax.transport.congruence import PotentialIndex, lambdas_from_counts

log = logging.getLogger("baryir_jax.train")


class NonFiniteLossError(RunFailed, RuntimeError):
    """Training diverged: a loss, or a player's parameters or optimizer state, became NaN/inf. The run stopped
    without saving it; its newest checkpoint (if any) is finite. ``baryir-train`` exits with code 3."""


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


def make_mesh(devices=None) -> Mesh:
    """The 1-D data-parallel mesh over ``devices`` (default: every device of every process). The preflight
    passes the devices of a TPU topology to compile for a slice it does not have."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))


def ensure_embedded_prepared(data_dir: str) -> None:
    """The embedded data ships with the install; prepare it on first use (one process at a time)."""
    from baryir_jax.data.prepare import prepare
    from baryir_jax.data.sources import get_builder, is_prepared

    if is_prepared(get_builder(data_dir, "embedded")):
        return
    if jax.process_index() == 0:
        log.info("preparing the embedded data set in %s", data_dir)
        prepare("embedded", data_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("embedded data prepared")


class Experiment:
    """Everything the loop needs, built from a config (also used by the benchmarks and tests)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, with_data: bool = True, mesh=None):
        validate_config(config)  # every field, before anything is built (ConfigError: one line per bad field)
        self.config, self.workdir = config, workdir
        self.mesh = make_mesh() if mesh is None else mesh  # the preflight passes a TPU topology's mesh
        n_dev = self.mesh.devices.size
        gb = int(config.data.batch_size)
        if gb % n_dev:
            raise ConfigError(
                f"config.data.batch_size={gb} must be divisible by the {n_dev} devices of the mesh "
                f"(the batch is split over them); use a multiple of {n_dev}"
            )
        if gb % int(config.train.grad_accum_steps):
            raise ConfigError(
                f"config.data.batch_size={gb} must be divisible by config.train.grad_accum_steps="
                f"{config.train.grad_accum_steps}"
            )
        self.data_dir = config_lib.data_dir(config, workdir) if with_data else config.data.data_dir
        self.multipliers, ignored = mixture_multipliers(config)
        if ignored:
            log.info(
                "config.data.multipliers names tasks that are not in config.data.tasks (%s): ignored",
                ", ".join(ignored),
            )
        if with_data:
            if config.data.collection == "embedded":
                ensure_embedded_prepared(self.data_dir)
            counts = data_pipeline.entry_counts(
                self.data_dir,
                list(config.data.tasks),
                multipliers=self.multipliers,
                collection=config.data.collection,
                by="id",
            )
        else:  # benchmarks: sizes do not matter, only which sources exist
            counts = {i: 1 for i in self.degradation_ids()}
        self.counts_by_id = counts
        self.index = PotentialIndex(counts)
        self.lam = lambdas_from_counts(self.index.source_counts(counts))
        total = sum(counts.values())
        self.entries_per_epoch = total
        self.steps_per_epoch = max(total // gb, 1)
        t = config.train
        self.num_steps = int(t.num_steps) if int(t.num_steps) > 0 else int(t.num_epochs) * self.steps_per_epoch
        self.barynet, self.potentials = state_lib.build_models(
            config, self.index.num_potentials, devices=list(self.mesh.devices.flat)
        )
        two = config.loss.potential_update == "two_step" and config.loss.congruence == "penalty"
        self.restorer_tx, self.potentials_tx = state_lib.make_optimizers(config, self.steps_per_epoch, 2 if two else 1)
        self.train_step = step_lib.make_train_step(
            config, self.barynet, self.potentials, self.index, self.lam, self.restorer_tx, self.potentials_tx
        )

    def degradation_ids(self):
        return [
            s.degradation_id
            for s in data_sources.resolve_sources(list(self.config.data.tasks), self.config.data.collection)
        ]

    def init_state(self) -> state_lib.TrainState:
        restorer = None
        if self.config.train.init_from:
            restorer = load_restorer_params(self.config.train.init_from, self.barynet)
        return state_lib.init_state(
            self.config, self.barynet, self.potentials, self.restorer_tx, self.potentials_tx, restorer
        )

    def pipeline(self, start_index: int = 0):
        """The training stream, starting ``start_index`` examples into it (a checkpoint's data position)."""
        c = self.config
        return data_pipeline.make_train_pipeline(
            self.data_dir,
            list(c.data.tasks),
            collection=c.data.collection,
            multipliers=self.multipliers,
            patch_size=int(c.data.patch_size),
            global_batch_size=int(c.data.batch_size),
            seed=int(c.seed),
            worker_count=int(c.data.num_workers),
            start_index=int(start_index),
        )


def place_replicated(tree, shardings):
    """Every process holds the same (deterministically initialised) state: build the global replicated arrays
    from the local copies, without the cross-process equality check (a collective) of ``jax.device_put``."""

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)


def load_restorer_params(directory: str, barynet) -> Any:
    """Restorer parameters from a model checkpoint, checked against the configured BaryNet."""
    model, params, *_ = load_model_checkpoint(directory)
    expected = jax.eval_shape(lambda: barynet.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))["params"]
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.float32), params)
    if jax.tree.structure(expected) != jax.tree.structure(got) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got))
    ):
        from baryir_jax.config import ARCH_KEYS

        def norm(v):
            return tuple(v) if isinstance(v, (list, tuple)) else v

        differ = [
            f"{k}: checkpoint {norm(getattr(model, k))!r}, config {norm(getattr(barynet, k))!r}"
            for k in ARCH_KEYS
            if hasattr(model, k) and hasattr(barynet, k) and norm(getattr(model, k)) != norm(getattr(barynet, k))
        ]
        raise ConfigError(
            f"config.train.init_from={directory}: its BaryNet does not match config.model "
            f"({', '.join(differ) or 'the parameter shapes differ'}); set config.model to the checkpoint's sizes "
            "(its model_config.json)"
        )
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


# ------------------------------------------------------------------------------------------------ validation


def validate(apply_fn, params, examples, *, collect_images: int = 0):
    """Per-image PSNR/SSIM of restored and degraded inputs (uint8, official protocol) on whole images.

    Returns (rows, images): rows = [{'name', 'psnr', 'ssim', 'psnr_input', 'ssim_input'}], images = a few
    (degraded, restored, clean) uint8 triplets.
    """
    rows, images = [], []
    for ex in examples:
        x = ex.degraded.astype(np.float32) / 255.0
        restored = eval_metrics.quantize_np(restore_float(lambda batch: apply_fn(params, batch), x, tile=0))
        rows.append(
            dict(
                name=ex.name,
                psnr=float(eval_metrics.psnr(restored, ex.clean)),
                ssim=float(eval_metrics.ssim(restored, ex.clean)),
                psnr_input=float(eval_metrics.psnr(ex.degraded, ex.clean)),
                ssim_input=float(eval_metrics.ssim(ex.degraded, ex.clean)),
            )
        )
        if len(images) < collect_images:
            images.append((ex.degraded, restored, ex.clean))
    return rows, images


def eval_examples(config, data_dir: str, task: str):
    limit = int(config.eval.max_images)
    return list(data_sources.load_eval_task(data_dir, task, config.data.collection, limit=None if limit < 0 else limit))


def task_table(results: dict[str, list[dict]]) -> str:
    lines = [
        "| task | images | input PSNR | restored PSNR | gain (dB) | input SSIM | restored SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, rows in results.items():
        m = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "psnr_input", "ssim_input")}
        lines.append(
            f"| {task} | {len(rows)} | {m['psnr_input']:.2f} | {m['psnr']:.2f} | "
            f"{m['psnr'] - m['psnr_input']:+.2f} | {m['ssim_input']:.4f} | {m['ssim']:.4f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- the loop


def _checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
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


def _save(mngr, step, state, data_position: dict, config_json: dict):
    """One checkpoint step: the train state, the data position (examples of the shared stream consumed: portable
    across worker and process counts, unlike grain's per-worker iterator state) and the config that ran."""
    # The save finishes in the background while the next steps run, and the step donates its input state:
    # save a copy, so that a donated buffer (aliased by the host copy on CPU) is never what gets written.
    state = jax.tree.map(jnp.copy, state)
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_position=ocp.args.JsonSave(data_position),
            config=ocp.args.JsonSave(config_json),
        ),
    )


def _barrier(name: str, timeout_s: int = 1800) -> None:
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


def _restore(mngr, workdir: str, state, exp: Experiment) -> tuple[int, Any, int]:
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
            workdir_lib.check_state_structure(workdir, s, meta, state)
            break
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
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
        finite = {k: bool(v) for k, v in jax.device_get(finite_fn(restored["state"])).items()}
        bad = [k for k, ok in finite.items() if not ok]
        if bad:
            players = " and ".join(_POSSESSIVE[p] for p in bad)
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
        _barrier("baryir_jax: unusable checkpoints set aside")
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
    return s, restored["state"], examples


_POSSESSIVE = {"restorer": "the restorer's", "potentials": "the potentials'"}


def _divergence_message(flag, newest: int | None, config, ckpt_dir) -> str:
    step, loss_ok, restorer_ok, potentials_ok, restorer_loss, potential_objective = flag
    players = [name for name, ok in (("restorer", restorer_ok), ("potentials", potentials_ok)) if not ok]
    o = config.optim
    if players:
        what = f"{' and '.join(_POSSESSIVE[p] for p in players)} parameters or RMSprop state became non-finite"
        others = [p for p in ("restorer", "potentials") if p not in players]
        if others:
            what += f" ({_POSSESSIVE[others[0]]} stayed finite)"
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


def _check_finite(flags: list, mngr, config) -> None:
    """Raise :class:`NonFiniteLossError` at the first step whose losses or new state are not all finite."""
    for flag in jax.device_get(flags):
        if not (flag[1] and flag[2] and flag[3]):
            mngr.wait_until_finished()
            raise NonFiniteLossError(_divergence_message(flag, mngr.latest_step(), config, mngr.directory))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (resuming from ``workdir`` when it holds checkpoints), validate, export; returns a summary dict.

    Raises ConfigError (a config value that cannot work; ``WorkdirError`` for settings a resumed run must keep and
    for a workdir whose checkpoints all fail to restore), DataError (data not prepared), NonFiniteLossError.
    """
    from clu import metric_writers, periodic_actions

    validate_config(config)  # every field, before anything is built or compiled
    workdir = os.fspath(as_path(workdir))  # absolute if local; gs://… stays as it is
    config_json = workdir_lib.config_dict(config)
    steps = workdir_lib.checkpoint_steps(as_path(workdir) / workdir_lib.CHECKPOINTS)
    saved, saved_where = workdir_lib.read_saved_config(workdir, steps)
    workdir_lib.check_resume_config(workdir, saved, saved_where, config_json)  # before building or restoring

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

    _barrier("baryir_jax: processes ready")  # before the first collective (the checkpoint manager's)
    mngr = _checkpoint_manager(workdir, config)
    start, state, examples = _restore(mngr, workdir, state, exp)
    if start:
        log.info("resumed from %s at step %d", mngr.directory, start)
        if start >= exp.num_steps:
            log.info("checkpoint step %d is at or past the %d steps configured: nothing to train", start, exp.num_steps)
    if is_main:  # only once the checkpoint is known to resume (or there is none)
        workdir_lib.write_config(workdir, config, start)
    data_iter = iter(exp.pipeline(start_index=examples))
    gb = int(config.data.batch_size)

    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main, asynchronous=True)
    if start == 0:
        writer.write_hparams(
            {k: (str(v) if isinstance(v, (tuple, list)) else v) for k, v in _flatten(config.to_dict()).items()}
        )
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
                _barrier("baryir_jax: step compiled")
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
                _check_finite(flags, mngr, config)  # before anything of these steps is saved or logged
                flags = []
            if step % log_every == 0 or final:
                host = {k: float(v) / n_acc for k, v in jax.device_get(acc).items()}
                writer.write_scalars(step, {f"train/{k}": v for k, v in host.items()})
                acc, n_acc = None, 0
                last_metrics = dict({k: float(v) for k, v in jax.device_get(metrics).items()}, finite=1.0)
            if save_now:
                _save(mngr, step, state, position(step), config_json)
            if stop:
                mngr.wait_until_finished()
                log.warning("SIGTERM: saved step %d in %s; rerun the same command to resume", step, mngr.directory)
                writer.flush()
                return dict(preempted=True, step=step)
            if (eval_every and step % eval_every == 0) or (image_every and step % image_every == 0):
                with report.timed("validation"):
                    _validate(
                        exp,
                        state.restorer,
                        apply_fn,
                        writer,
                        step,
                        images=bool(image_every) and step % image_every == 0,
                        scalars=bool(eval_every) and step % eval_every == 0,
                    )
    mngr.wait_until_finished()
    writer.flush()

    summary: dict[str, Any] = dict(preempted=False, step=step, metrics=last_metrics)
    params = jax.device_get(state.restorer)
    if t.export_model and is_main:
        # WORKDIR/model always holds the final step: written again whenever this run trained or the export on
        # disk is of another step or incomplete (e.g. a run killed while exporting).
        if step > start or workdir_lib.exported_step(workdir) != step:
            potentials = jax.device_get(state.potentials)

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

            summary["model"] = workdir_lib.export_model(workdir, write)
            log.info("exported the model of step %d to %s", step, summary["model"])
        else:
            summary["model"] = os.fspath(as_path(workdir) / workdir_lib.MODEL)
    if config.eval.after_training and is_main:
        results = {
            task: validate(apply_fn, params, eval_examples(config, exp.data_dir, task))[0] for task in config.eval.tasks
        }
        table = task_table(results)
        print(f"\nEvaluation on held-out images ({config.data.collection}), step {step}:\n{table}\n", flush=True)
        (as_path(workdir) / "evaluation.md").write_text(table + "\n")
        (as_path(workdir) / "evaluation.json").write_text(json.dumps(results, indent=1))
        summary["evaluation"] = results
    return summary


def _validate(exp: Experiment, params, apply_fn, writer, step, *, images: bool, scalars: bool):
    if jax.process_index() != 0:
        return
    params = jax.device_get(params)
    for task in exp.config.eval.tasks:
        try:
            examples = eval_examples(exp.config, exp.data_dir, task)
        except Exception as e:  # a missing test set must not kill a long training run
            log.warning("validation on %s skipped: %s", task, e)
            continue
        rows, imgs = validate(apply_fn, params, examples, collect_images=2 if images else 0)
        if scalars and rows:
            writer.write_scalars(
                step,
                {
                    f"val/{task}/psnr": float(np.mean([r["psnr"] for r in rows])),
                    f"val/{task}/ssim": float(np.mean([r["ssim"] for r in rows])),
                },
            )
        if images and imgs:
            grid = [np.concatenate(triplet, axis=1) for triplet in imgs]
            w = max(g.shape[1] for g in grid)
            grid = [np.pad(g, ((0, 0), (0, w - g.shape[1]), (0, 0))) for g in grid]
            writer.write_images(
                step, {f"images/{task} (input | restored | target)": np.concatenate(grid, axis=0)[None]}
            )


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
