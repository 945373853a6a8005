"""Model checkpoints: the restorer (and optionally potential) parameters plus the model configuration.

A model checkpoint is a directory with ``model_config.json`` (the keyword arguments of :class:`BaryNet` and of
:class:`Potentials`) and ``params/``, an orbax checkpoint of ``{'barynet': …, 'potentials': … or absent}``.
``baryir-convert`` writes it; evaluation, restoration and fine-tuning read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from baryir_jax.models.barynet import BaryNet
from baryir_jax.models.layers import resolve_conv_impl
from baryir_jax.models.potentials import Potentials

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def as_path(path) -> epath.Path:
    """A local path made absolute, or a cloud path (``gs://…``) as it is: the same code writes to both."""
    path = os.fspath(path)
    return epath.Path(path if "://" in path else os.path.abspath(path))


def save_model_checkpoint(
    directory: str,
    barynet_params,
    barynet_config: dict[str, Any],
    potentials_params=None,
    potentials_config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    directory = as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params_dir = directory / PARAMS_DIR
    if params_dir.exists():
        raise FileExistsError(f"{params_dir} already exists: choose an empty output directory")
    tree = {"barynet": barynet_params}
    if potentials_params is not None:
        tree["potentials"] = potentials_params
    tree = jax.tree.map(np.asarray, tree)
    # Written by this process alone: training exports from process 0 of a multi-process job, and orbax's default
    # (a barrier with every process) would wait forever for the others.
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    with ocp.StandardCheckpointer(multiprocessing_options=alone) as ckptr:
        ckptr.save(params_dir, tree)
        ckptr.wait_until_finished()
    meta = {"barynet": _jsonable(barynet_config), "potentials": _jsonable(potentials_config)}
    if extra:
        meta["extra"] = extra
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return os.fspath(directory)


def load_model_checkpoint(directory: str, conv_impl: str = "auto"):
    """Returns ``(barynet, barynet_params, potentials or None, potentials_params or None, meta)``.

    ``conv_impl`` is how the returned BaryNet computes its depthwise convolutions ('auto': for ``jax.devices()``,
    the devices it will run on; see :func:`baryir_jax.models.layers.resolve_conv_impl`). It is not read from
    ``model_config.json``: it depends on where the model runs, not on what was trained."""
    directory = as_path(directory)
    cfg_path = directory / CONFIG_FILE
    params_dir = directory / PARAMS_DIR
    if not cfg_path.is_file() or not params_dir.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a model checkpoint: it needs {CONFIG_FILE} and {PARAMS_DIR}/ (written by "
            "baryir-convert or by training's model export)"
        )
    meta = json.loads(cfg_path.read_text())
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(params_dir)
    kwargs = _module_kwargs(meta["barynet"])
    kwargs.pop("conv_impl", None)  # a host setting, not the architecture (older exports never wrote it)
    barynet = BaryNet(**kwargs, conv_impl=resolve_conv_impl(conv_impl, jax.devices()))
    pots = None
    if meta.get("potentials") and "potentials" in tree:
        pots = Potentials(**meta["potentials"])
    return barynet, tree["barynet"], pots, tree.get("potentials"), meta


def load_fitting_params(directory: str, barynet: BaryNet, compare: Sequence[str]) -> tuple[Any, list[str] | None]:
    """The restorer parameters of the model checkpoint in ``directory`` (float32 arrays), checked against
    ``barynet``: returns ``(params, None)`` when their tree and every shape are those ``barynet.init`` makes
    (shapes only, ``jax.eval_shape``: nothing computed), else ``(params as read, differences)``: one
    ``"field: checkpoint A, config B"`` per field named in ``compare`` (e.g. :data:`baryir_jax.config.ARCH_KEYS`)
    on which the checkpoint's BaryNet and ``barynet`` differ (an empty list: only the shapes say so). Raises what
    :func:`load_model_checkpoint` raises."""
    model, params, *_ = load_model_checkpoint(directory)
    expected = jax.eval_shape(lambda: barynet.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))["params"]
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.float32), params)
    if jax.tree.structure(expected) == jax.tree.structure(got) and all(
        a.shape == b.shape for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got))
    ):
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), None

    def norm(v):
        return tuple(v) if isinstance(v, (list, tuple)) else v

    return params, [
        f"{k}: checkpoint {norm(getattr(model, k))!r}, config {norm(getattr(barynet, k))!r}"
        for k in compare
        if hasattr(model, k) and hasattr(barynet, k) and norm(getattr(model, k)) != norm(getattr(barynet, k))
    ]


def _jsonable(cfg):
    if cfg is None:
        return None
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _module_kwargs(cfg):
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}
