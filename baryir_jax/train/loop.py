"""``train_and_evaluate(config, workdir)``: mesh, data, state, the jitted step, checkpoints, logging, validation.

* Data parallel over every device of every process: a 1-D ``Mesh`` ('data', ``AxisType.Auto``), the batch
  split on it, parameters and optimizer states replicated.
* Checkpoints: one orbax ``CheckpointManager`` step holds the whole :class:`TrainState` and the grain iterator.
  Asynchronous, ``max_to_keep``; a run resumes from the newest checkpoint of its workdir; SIGTERM (preemption)
  saves before exiting; a non-finite loss stops the run before anything non-finite is saved.
* Logging with clu: every loss term as a scalar, steps/s and ETA (``ReportProgress``), images of
  input/restored/target, periodic per-task validation PSNR/SSIM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import AxisType, Mesh

from baryir_jax.config import ConfigError
from baryir_jax.data import pipeline as data_pipeline
from baryir_jax.data import sources as data_sources
from baryir_jax.data.to_mesh import host_batch_to_global
from baryir_jax.evaluate import metrics as eval_metrics
from baryir_jax.evaluate.restore import restore_float
from baryir_jax.models.io import as_path, load_model_checkpoint, save_model_checkpoint
from baryir_jax.train import state as state_lib
from baryir_jax.train import step as step_lib
from baryir_jax.transport.congruence import PotentialIndex, lambdas_from_counts

log = logging.getLogger("baryir_jax.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped and kept its last good checkpoint."""


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


def make_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",), axis_types=(AxisType.Auto,))


def resolve_data_dir(config, workdir: str) -> str:
    d = config.data
    if d.data_dir:
        return d.data_dir
    if d.collection == "embedded":
        return os.fspath(as_path(workdir) / "data")
    raise ConfigError(
        "config.data.data_dir is empty: point it at the directory where baryir-prepare wrote the "
        "data sets (--config.data.data_dir=DIR), or use --config.data.collection=embedded"
    )


def _parse_multipliers(spec) -> dict[str, int] | None:
    if not spec:
        return None
    out = {}
    for part in str(spec).split(","):
        if "=" not in part:
            raise ConfigError(f"config.data.multipliers: expected 'task=N,task=N', got {spec!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = int(v)
    return out


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

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, with_data: bool = True):
        self.config, self.workdir = config, workdir
        state_lib.check_large_batch_options(config)  # before any data preparation
        self.mesh = make_mesh()
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
        self.data_dir = resolve_data_dir(config, workdir) if with_data else config.data.data_dir
        self.multipliers = _parse_multipliers(config.data.multipliers)
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
        self.steps_per_epoch = max(total // gb, 1)
        t = config.train
        self.num_steps = int(t.num_steps) if int(t.num_steps) > 0 else int(t.num_epochs) * self.steps_per_epoch
        self.barynet, self.potentials = state_lib.build_models(config, self.index.num_potentials)
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

    def pipeline(self):
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
        raise ConfigError(
            f"config.train.init_from={directory}: its BaryNet ({model}) does not match config.model; "
            "set config.model to the checkpoint's sizes (see its model_config.json)"
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
    return ocp.CheckpointManager(as_path(workdir) / "checkpoints", options=options, item_names=("state", "data_iter"))


def _save(mngr, step, state, data_iter, metrics_host=None):
    if metrics_host is not None and not bool(metrics_host.get("finite", True)):
        return False
    # The save finishes in the background while the next steps run, and the step donates its input state:
    # save a copy, so that a donated buffer (aliased by the host copy on CPU) is never what gets written.
    state = jax.tree.map(jnp.copy, state)
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data_iter=grain.checkpoint.CheckpointSave(data_iter)
        ),
    )
    return True


def _barrier(name: str, timeout_s: int = 1800) -> None:
    """Wait for every process at the coordination service. The first cross-process collective on CPU (gloo)
    gives up after 30 s, and processes can be minutes apart after data preparation and initialisation."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is not None:
        client.wait_at_barrier(name, timeout_s * 1000)


def _write_config(config, workdir):
    if jax.process_index() == 0:
        path = as_path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (resuming from ``workdir`` when it holds checkpoints), validate, export; returns a summary dict."""
    from clu import metric_writers, periodic_actions

    workdir = os.fspath(as_path(workdir))  # absolute if local; gs://… stays as it is
    _write_config(config, workdir)
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
    data_iter = iter(exp.pipeline())

    _barrier("baryir_jax: processes ready")  # before the first collective (the checkpoint manager's)
    mngr = _checkpoint_manager(workdir, config)
    start = 0
    if mngr.latest_step() is not None:
        start = int(mngr.latest_step())
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = mngr.restore(
            start,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data_iter=grain.checkpoint.CheckpointRestore(data_iter)
            ),
        )
        state = restored["state"]
        log.info("resumed from %s at step %d", mngr.directory, start)

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

    acc, n_acc = None, 0
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
            acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
            n_acc += 1
            report(step)
            final = step == exp.num_steps
            if step % log_every == 0 or final or preempt.requested or step % ckpt_every == 0:
                host = {k: float(v) / n_acc for k, v in jax.device_get(acc).items()}
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not last["finite"] or not np.isfinite(host["restorer_loss"]):
                    mngr.wait_until_finished()
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step} (restorer loss {last['restorer_loss']}, potential "
                        f"objective {last['potential_objective']}, L1 {last['l1']}); the run stopped. The last good "
                        f"checkpoint is step {mngr.latest_step()} in {mngr.directory}. Lower the learning rate "
                        "(--config.optim.lr) or check the data."
                    )
                if step % log_every == 0 or final:
                    writer.write_scalars(step, {f"train/{k}": v for k, v in host.items() if k != "finite"})
                    acc, n_acc = None, 0
                last_metrics = last
            if step % ckpt_every == 0 or final or preempt.requested:
                _save(mngr, step, state, data_iter)
            if preempt.requested:
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
        export_dir = as_path(workdir) / "model"
        if not (export_dir / "params").exists():
            save_model_checkpoint(
                export_dir,
                params,
                state_lib.barynet_kwargs(config),
                jax.device_get(state.potentials),
                dict(
                    num_potentials=exp.index.num_potentials,
                    channels=8 * int(config.model.dim),
                    patch_size=int(config.data.patch_size),
                ),
                extra=dict(step=step, tasks=list(config.data.tasks), ids_of_potential=exp.index.ids_of_potential),
            )
        summary["model"] = os.fspath(export_dir)
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
