"""What a training run is made of, built from its config: the data-parallel mesh, the data sources and their λ_k,
both players (:class:`~baryir_jax.models.BaryNet`, :class:`~baryir_jax.models.Potentials`) with their optimizers,
and the step (:class:`Experiment`; also used by the benchmarks, the preflight and tests).

* Data parallel over every device of every process: a 1-D ``Mesh`` ('data', ``AxisType.Auto``) (:func:`make_mesh`),
  the batch split on it, parameters and optimizer states replicated (:func:`place_replicated`).
* ``config.train.init_from``: the restorer starts from a model checkpoint's parameters, checked against the
  configured BaryNet first (:func:`load_restorer_params`).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh

from baryir_jax import config as config_lib
from baryir_jax.config import ARCH_KEYS, ConfigError, mixture_multipliers
from baryir_jax.config import validate as validate_config
from baryir_jax.data import pipeline as data_pipeline
from baryir_jax.data import sources as data_sources
from baryir_jax.models.io import load_fitting_params
from baryir_jax.train import state as state_lib
from baryir_jax.train import step as step_lib
from baryir_jax.transport.congruence import PotentialIndex, lambdas_from_counts

log = logging.getLogger("baryir_jax.train")


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
    """Restorer parameters from a model checkpoint, checked against the configured BaryNet
    (:func:`baryir_jax.models.io.load_fitting_params`). Raises :class:`ConfigError` naming each field that
    differs."""
    params, differ = load_fitting_params(directory, barynet, ARCH_KEYS)
    if differ is not None:
        raise ConfigError(
            f"config.train.init_from={directory}: its BaryNet does not match config.model "
            f"({', '.join(differ) or 'the parameter shapes differ'}); set config.model to the checkpoint's sizes "
            "(its model_config.json)"
        )
    return params
