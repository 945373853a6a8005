"""The one config layer: defaults, loading, validation and the settings derived from a config.

* :func:`base_config`: the official BaryIR settings (``baryir-official.md`` §3–§4); the files in ``configs/``
  start from it and change what their run needs.
* :func:`load`: ``FILE[:variant]`` plus ``--config.KEY=VALUE`` overrides (ml_collections' config-flag
  semantics), for every command that takes ``--config``; one-line :class:`ConfigError` for a missing file, an
  unknown variant, an unknown key or an unparsable value.
* :func:`validate`: every field, before anything is built (with :func:`large_batch_problems`,
  :func:`parse_multipliers` and :class:`ConfigError`, defined in :mod:`baryir_jax.config_checks` and
  importable from here).
* Derived settings, each defined here only: :func:`data_dir` (where the data sets are),
  :func:`mixture_multipliers` (the oversampling table as a mapping), :func:`model_kwargs` (BaryNet's
  arguments), :func:`compute_dtype`, :func:`conv_impl` (the depthwise convolutions for the devices).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import ml_collections

from baryir_jax.config_checks import (  # noqa: F401 - the checks are importable from the config layer
    LR_SCALING,
    ConfigError,
    _is_int,
    _is_real,
    large_batch_problems,
    parse_multipliers,
    validate,
)

# Official `--de_type` names of the 3D and 5D runs.
TASKS_3D = ("derain", "dehaze", "denoise_15", "denoise_25", "denoise_50")
TASKS_5D = ("derain", "dehaze", "lowlight", "denoise_25", "deblur")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "float32"  # compute dtype of the restorer: 'float32' or 'bfloat16' (parameters stay float32)

    # BaryNet (official sizes). bary_blocks = -1: T_θ has num_blocks[3] blocks, as in the official code.
    c.model = ml_collections.ConfigDict(
        dict(
            dim=48,
            num_blocks=(4, 6, 6, 8),
            num_refinement_blocks=4,
            heads=(1, 2, 4, 8),
            ffn_expansion_factor=2.66,
            bary_blocks=-1,
            residual_scale=0.8,
            # depthwise convolutions: 'auto' (from the devices the step is compiled for: shifted sums on CPUs,
            # XLA's grouped convolution on TPUs/GPUs), 'native' or 'shifted'. Same function; speed only.
            conv_impl="auto",
        )
    )

    c.data = ml_collections.ConfigDict(
        dict(
            collection="benchmark",  # 'benchmark' (prepared TFDS data sets) or 'embedded' (ships with the install)
            data_dir="",  # where baryir-prepare wrote the data sets
            tasks=TASKS_3D,
            multipliers="",  # '' = the official oversampling; or 'derain=360,dehaze=1,...'
            patch_size=128,
            batch_size=3,  # global batch, split over all devices
            num_workers=0,  # grain worker processes per host
            prefetch=2,
        )
    )

    # The restorer's loss: l1_weight·L1 + mean_i λ_k(i)[rms(z_i − b_i) + γ(ort_i + con_i) − f_k(i)(b_i)].
    c.loss = ml_collections.ConfigDict(
        dict(
            l1_weight=1e4,  # official --Sigma
            gamma=0.05,  # 0.05 in the single-GPU trainer, 0.02 in the official multi-GPU one
            tau=0.07,  # contrastive temperature
            kappa=10.0,  # congruence penalty weight
            congruence="penalty",  # 'penalty' (official) | 'exact' | 'centered' | 'none'
            penalty_points="last",  # 'last' sample of the batch (official) | 'batch'
            potential_update="two_step",  # 'two_step' (official single-GPU) | 'summed' (official multi-GPU)
            skip_absent_potentials=True,  # potentials with no sample in the batch keep params and RMSprop state
            inner_map_steps=1,  # restorer updates per potential update (official: 1)
        )
    )

    # RMSprop as PyTorch's (decay 0.99, eps 1e-8 outside the square root) for both players.
    c.optim = ml_collections.ConfigDict(
        dict(lr=1e-4, potentials_lr=1e-4, decay_every_epochs=50, decay_factor=0.1, rmsprop_decay=0.99, eps=1e-8)
    )
    # Large-batch options (docs/large_batch_study.md); these defaults are the official behaviour. Both players'
    # LRs are multiplied by 1 ('none'), B/reference_batch ('linear') or its square root ('sqrt'), B the global
    # batch; a linear warm-up over warmup_steps training steps (0 = none); gradients clipped to a global L2 norm
    # before RMSprop, per player (0 = off).
    c.optim.update(dict(lr_scaling="none", reference_batch=3, warmup_steps=0, clip_norm=0.0, potentials_clip_norm=0.0))

    c.train = ml_collections.ConfigDict(
        dict(
            num_epochs=56,
            num_steps=-1,  # > 0 overrides num_epochs
            grad_accum_steps=1,  # micro-batches per step (the global batch must divide by it)
            log_every=100,
            checkpoint_every=2000,
            max_to_keep=3,
            eval_every=-1,  # steps between validations; -1 = once per epoch, 0 = never
            image_every=-1,  # steps between TensorBoard image summaries; -1 = with validation
            init_from="",  # a model checkpoint (baryir-convert output or an export) to fine-tune from
            export_model=True,  # write a model checkpoint (workdir/model) at the end
        )
    )

    # Validation during training and the evaluation after it.
    c.eval = ml_collections.ConfigDict(
        dict(
            tasks=("derain",),  # official: Rain100L test after every epoch
            max_images=-1,  # -1 = all
            after_training=False,  # run the per-task evaluation table when training ends
        )
    )
    return c


def mixture_multipliers(config) -> tuple[dict[str, int] | None, list[str]]:
    """The multipliers that apply to the mixture ``config.data.tasks``, and the tasks named in
    ``config.data.multipliers`` that are not in it.

    The multipliers field is a table of per-task oversampling factors, not a list aligned with the tasks: an
    entry for a task that is not trained has nothing to apply to and is ignored (the caller logs it), so that
    narrowing ``data.tasks`` on the command line keeps a config file's table usable (README: "any subset").
    A name that is no task at all is an error (:func:`parse_multipliers`).
    """
    table = parse_multipliers(config.data.multipliers)
    tasks = set(config.data.tasks)
    ignored = [t for t in table if t not in tasks]
    kept = {t: m for t, m in table.items() if t in tasks}
    return (kept or None), ignored


# --------------------------------------------------------------------------------------------------- loading

OVERRIDE_PREFIXES = ("--config.", "--noconfig.")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the ``--config.KEY=VALUE`` / ``--noconfig.KEY`` overrides, the other arguments) of a command line.
    ``--config.KEY VALUE`` (two words) becomes ``--config.KEY=VALUE``; ``--config.KEY`` alone sets a boolean."""
    overrides, rest, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a.startswith(OVERRIDE_PREFIXES):
            if a.startswith("--config.") and "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                a, i = f"{a}={argv[i + 1]}", i + 1
            overrides.append(a)
        else:
            rest.append(a)
        i += 1
    return overrides, rest


def _override_key(arg: str) -> str:
    return arg.split("=", 1)[0][len("--noconfig.") if arg.startswith("--noconfig.") else len("--config.") :]


def _check_keys(config, overrides: Sequence[str]) -> None:
    for key in map(_override_key, overrides):
        node, done = config, []
        for part in key.split("."):
            fields = list(node.keys()) if hasattr(node, "keys") else []
            if part not in fields:
                where = ".".join(done) or "the config"
                raise ConfigError(
                    f"unknown config key '{key}': {where} has no field '{part}' (its fields: "
                    f"{', '.join(sorted(map(str, fields)))})"
                )
            node, done = node[part], done + [part]


def load(spec, overrides: Sequence[str] = (), *, lock: bool = True) -> Any:
    """The config of ``FILE[:variant]`` with ``overrides`` applied: what every ``--config`` of every command reads.

    ``FILE`` is a Python file defining ``get_config()``; everything after the first ``:`` is passed to it
    (``get_config(variant)``), as ml_collections' ``config_flags.DEFINE_config_file`` does. ``overrides`` are
    command-line words ``--config.KEY=VALUE`` / ``--noconfig.KEY`` (:func:`split_overrides`), parsed with
    ml_collections' config flags (the same syntax and types as ``baryir-train`` has always taken). The result
    is locked (no new fields) when ``lock``.

    Raises :class:`ConfigError` (one line, exit code 2) for a missing file, a file that fails to import or
    whose ``get_config`` refuses the variant or returns anything but a ``ConfigDict`` (a ``FrozenConfigDict`` is
    taken as one), an override naming no field, and a value that cannot be parsed. ``FILE`` is compiled from
    its text on every call (no bytecode cache is read or written beside it).
    """
    spec = os.fspath(spec)
    file, colon, variant = spec.partition(":")
    if not os.path.isfile(file):
        raise ConfigError(
            f"--config={spec}: no such file (give a Python file defining get_config(), optionally FILE:variant)"
        )
    try:
        # Read as Python source whatever the file's name, compiled from its text each time: no bytecode is read
        # or written (a cache keyed by the stem let exp.txt and exp.py of one size and second run each other's
        # code). The module is registered while it runs, as an import would (dataclasses look it up).
        name = f"_baryir_config_{abs(hash(os.path.abspath(file)))}"
        with open(file, "rb") as f:
            code = compile(f.read(), file, "exec", dont_inherit=True)
        module = types.ModuleType(name)
        module.__file__ = file
        sys.modules[name] = module
        exec(code, module.__dict__)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"--config={spec}: {file} defines no get_config()")
        config = module.get_config(variant) if colon else module.get_config()
    except ConfigError:
        raise
    except ValueError as e:  # get_config's own refusal, e.g. an unknown variant
        raise ConfigError(f"--config={spec}: {e}") from None
    except Exception as e:  # noqa: BLE001  (a broken config file: say which and what, without the traceback)
        raise ConfigError(f"--config={spec}: {type(e).__name__}: {e}") from None
    if isinstance(config, ml_collections.FrozenConfigDict):
        config = ml_collections.ConfigDict(config)  # the same fields, overridable and lockable
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"--config={spec}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict "
            "(build on baryir_jax.config.base_config(), as configs/*.py do)"
        )
    overrides = list(overrides)
    _check_keys(config, overrides)
    if overrides:
        from absl import flags
        from ml_collections import config_flags

        argv = ["baryir", *overrides]
        fv = flags.FlagValues()
        config_flags.DEFINE_config_dict("config", config, flag_values=fv, lock_config=lock, sys_argv=argv)
        try:
            fv(argv)
        except flags.Error as e:
            line = next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)
            raise ConfigError(line) from None
        return fv.config
    if lock:
        config.lock()
    return config


# ------------------------------------------------------------------------------------------ derived settings


def _section(config, name: str):
    return getattr(config, name, None) if config is not None else None


def data_dir(config, workdir: str | None = None) -> str | None:
    """Where the data sets are: ``config.data.data_dir`` when set; else, for a training run (``workdir`` given)
    of the embedded collection, ``WORKDIR/data`` (prepared there on first use). None when the config names none
    and no workdir is given (evaluation: ``--data_dir`` decides). Raises :class:`ConfigError` for a training run
    of the benchmark collection without a data directory."""
    data = _section(config, "data")
    given = getattr(data, "data_dir", None) if data is not None else None
    if given:
        return os.fspath(given)
    if workdir is None:
        return None
    if getattr(data, "collection", None) == "embedded":
        return os.path.join(os.fspath(workdir), "data")
    raise ConfigError(
        "config.data.data_dir is empty: point it at the directory where baryir-prepare wrote the "
        "data sets (--config.data.data_dir=DIR), or use --config.data.collection=embedded"
    )


def collection(config) -> str | None:
    """``config.data.collection`` ('benchmark' or 'embedded'), or None when the config has none."""
    data = _section(config, "data")
    return (getattr(data, "collection", None) or None) if data is not None else None


# BaryNet arguments that change the parameter tree (the architecture); config.model's other fields (conv_impl,
# dtype) choose how it runs.
ARCH_KEYS = (
    "inp_channels",
    "out_channels",
    "dim",
    "num_blocks",
    "num_refinement_blocks",
    "heads",
    "ffn_expansion_factor",
    "use_bias",
    "layernorm_type",
    "bary_blocks",
    "residual_scale",
)


def model_kwargs(config) -> dict[str, Any]:
    """BaryNet's architecture arguments (:data:`ARCH_KEYS`) from the fields ``config.model`` has (a partial
    model section is fine: a params-only checkpoint needs only the sizes): sequences as tuples,
    ``bary_blocks < 0`` (T_θ with ``num_blocks[3]`` blocks, the official size) as None."""
    model = _section(config, "model")
    if model is None:
        return {}
    fields = dict(model.items() if hasattr(model, "items") else dict(model).items())
    kw = {}
    for k in ARCH_KEYS:  # in BaryNet's argument order (model_config.json records them so)
        if k not in fields:
            continue
        v = fields[k]
        kind = _ARCH_TYPES.get(k)
        if isinstance(v, (list, tuple)):
            v = tuple(int(x) if kind is int and _is_int(x) else x for x in v)
        elif kind is not None and _is_real(v) and not (kind is int and not _is_int(v)):
            v = kind(v)
        kw[k] = v
    if kw.get("bary_blocks") is not None and _is_int(kw["bary_blocks"]) and kw["bary_blocks"] < 0:
        kw["bary_blocks"] = None
    return kw


# The numeric architecture fields as BaryNet takes them (plain Python numbers: model_config.json records them).
_ARCH_TYPES = dict(
    dim=int,
    num_blocks=int,
    num_refinement_blocks=int,
    heads=int,
    ffn_expansion_factor=float,
    bary_blocks=int,
    residual_scale=float,
    inp_channels=int,
    out_channels=int,
)


DTYPES = ("float32", "bfloat16", "float16")


def dtype_name(config) -> str | None:
    """The compute dtype a config asks for: ``config.model.dtype``, else the top-level ``config.dtype``; None
    when it names none."""
    model = _section(config, "model")
    for value in (getattr(model, "dtype", None) if model is not None else None, _section(config, "dtype")):
        if isinstance(value, str):
            return value
    return None


def compute_dtype(value) -> Any:
    """A jnp dtype from a name in :data:`DTYPES` (None → float32; a dtype passes through). Raises
    :class:`ConfigError` for another name."""
    import jax.numpy as jnp

    if value is None:
        return jnp.float32
    if isinstance(value, str):
        if value not in DTYPES:
            raise ConfigError(f"unknown dtype {value!r}: use one of {', '.join(DTYPES)}")
        return getattr(jnp, value)
    return value


def conv_impl(config, devices=None) -> str:
    """``config.model.conv_impl`` ('auto' when absent) for a program compiled for ``devices`` (default
    ``jax.devices()``): 'auto' becomes 'shifted' for CPUs and 'native' for TPUs/GPUs
    (:func:`baryir_jax.models.layers.resolve_conv_impl`). Raises :class:`ConfigError` for an unknown setting
    or devices of several kinds."""
    import jax

    from baryir_jax.models.layers import resolve_conv_impl

    model = _section(config, "model")
    setting = (model.get("conv_impl", "auto") if hasattr(model, "get") else "auto") if model is not None else "auto"
    try:
        return resolve_conv_impl(str(setting), jax.devices() if devices is None else devices)
    except ValueError as e:
        raise ConfigError(f"config.model.conv_impl: {e}") from None
