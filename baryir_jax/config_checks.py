"""The checks of a config's fields: :func:`validate` (every field of a training config, before anything is built),
:func:`large_batch_problems` (the optional large-batch fields of ``config.optim``), :func:`parse_multipliers`
(the oversampling table), BaryNet's structural needs, and the one-line rules they are made of (``_int``,
``_real``, ``_one_of``, ...). :class:`ConfigError` is the error of the config layer.

Import them from :mod:`baryir_jax.config`, the config layer (defaults, loading, derived settings), which
re-exports every name here; this module imports nothing of it.
"""

from __future__ import annotations

import math
import os

import numpy as np

from baryir_jax.errors import UsageError


class ConfigError(UsageError, ValueError):
    """A configuration value that cannot work (the message names the field and what to set instead); exit
    code 2."""


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo=None, hi=None, also=()):
    """An integer in [lo, hi] (either bound optional), or one of `also`."""

    def check(v):
        if _is_int(v) and (v in also or ((lo is None or v >= lo) and (hi is None or v <= hi))):
            return None
        parts = [f"{v2}" for v2 in also]
        if lo is not None and hi is not None:
            parts.append(f"an integer in [{lo}, {hi}]")
        elif lo is not None:
            parts.append(f"an integer >= {lo}")
        else:
            parts.append("an integer")
        return " or ".join(parts)

    return check


def _real(lo=None, hi=None, lo_open=False, hi_open=False):
    """A finite number in the interval (bounds optional; open or closed)."""

    def check(v):
        ok = _is_real(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
        if ok:
            return None
        if lo is not None and hi is not None:
            return f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        if lo is not None:
            return f"a finite number {'>' if lo_open else '>='} {lo}"
        return "a finite number"

    return check


def _one_of(*choices):
    return lambda v: None if isinstance(v, str) and v in choices else "one of " + ", ".join(repr(c) for c in choices)


def _bool(v):
    return None if isinstance(v, (bool, np.bool_)) else "true or false"


def _str(v):
    return None if isinstance(v, str) else "a string"


def parse_multipliers(spec) -> dict[str, int]:
    """``'derain=4,dehaze=2'`` → ``{'derain': 4, 'dehaze': 2}`` ('' → {}). Raises ConfigError naming the
    field for a malformed entry, a repeated task, a name that is no task, or a multiplier that is not a positive
    integer."""
    from baryir_jax.data.sources import resolve_sources

    field = f"config.data.multipliers={spec!r}"
    if spec is None or str(spec).strip() == "":
        return {}
    if not isinstance(spec, str):
        raise ConfigError(f"{field}: expected a string 'task=N,task=N' (e.g. 'derain=4,dehaze=2') or ''")
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not name or not value:
            raise ConfigError(f"{field}: expected 'task=N,task=N' (e.g. 'derain=4,dehaze=2'), got the entry {part!r}")
        try:
            resolve_sources([name], "embedded")
        except ValueError as e:
            raise ConfigError(f"{field}: {e}") from None
        if name in out:
            raise ConfigError(f"{field}: {name} is given twice")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"{field}: the multiplier of {name} must be a positive integer, got {value!r}")
        out[name] = int(value)
    return out


def _model_problems(m) -> list[str]:
    """BaryNet's structural needs (``models/barynet.py``, ``models/layers.py``)."""
    out = []
    dim, heads = m.dim, m.heads
    if not (_is_int(dim) and dim >= 2 and dim % 2 == 0):
        out.append(
            f"config.model.dim={dim!r}: allowed: an even integer >= 2 (each Downsample halves the channels and "
            "pixel-unshuffles them back to 2·dim)"
        )
    for name, n_allowed in (("num_blocks", 4), ("heads", 4)):
        v = m[name]
        lo = 1 if name == "heads" else 0
        if not (isinstance(v, (tuple, list)) and len(v) == n_allowed and all(_is_int(x) and x >= lo for x in v)):
            out.append(f"config.model.{name}={v!r}: allowed: {n_allowed} integers >= {lo}, one per level")
    if not out:
        # Widths each head count meets: level i has dim·2^i channels; heads[0] also serves the level-1 decoder
        # (2·dim), heads[2] also the noise_level3 (16·dim) and noise_level1 (2·dim) blocks.
        widths = {0: (dim, 2 * dim), 1: (2 * dim,), 2: (4 * dim, 16 * dim, 2 * dim), 3: (8 * dim,)}
        for i, ws in widths.items():
            bad = [w for w in ws if w % heads[i]]
            if bad:
                out.append(
                    f"config.model.heads={tuple(heads)!r}: heads[{i}]={heads[i]} must divide the width(s) "
                    f"{ws} it attends over (dim={dim}); allowed: a divisor of {math.gcd(*ws)}"
                )
                break
    return out


LR_SCALING = ("none", "linear", "sqrt")


def large_batch_problems(config) -> list[str]:
    """One line per bad large-batch field of ``config.optim`` (all optional; absent = the official behaviour):
    ``lr_scaling`` (one of :data:`LR_SCALING`), ``reference_batch`` (int >= 1), ``warmup_steps`` (int >= 0),
    ``clip_norm`` and ``potentials_clip_norm`` (finite >= 0; 0 = no clipping)."""
    rules = (
        ("lr_scaling", _one_of(*LR_SCALING)),
        ("reference_batch", _int(1)),
        ("warmup_steps", _int(0)),
        ("clip_norm", _real(0)),
        ("potentials_clip_norm", _real(0)),
    )
    o = config.optim
    out = []
    for name, rule in rules:
        if name in o:
            allowed = rule(o[name])
            if allowed:
                out.append(f"config.optim.{name}={o[name]!r}: allowed: {allowed}")
    return out


def validate(config) -> None:
    """Check every field of a training config before anything is built or compiled.

    Raises :class:`ConfigError` with one line naming each bad field, its value and what is allowed. Fields that
    this function does not know (added by other tools) are left to their users. Checked here: the types and
    ranges of every number, the names of every choice, the task names (``data.tasks``, ``data.multipliers``,
    ``eval.tasks``), the model's structural needs (even ``dim``, heads dividing their widths), the patch size
    (a multiple of 8 for the three 2× downsamplings, at least 16 for the potentials' 4×4 stride-4 convolution on
    the patch/8 latent) and ``grad_accum_steps`` dividing ``batch_size``. Not checked here (they need the
    devices or the data): the batch split over the devices and whether the data sets are prepared.
    """
    from baryir_jax.data import sources
    from baryir_jax.transport.congruence import MODES, PENALTY_POINTS
    from baryir_jax.transport.game import POTENTIAL_UPDATES

    problems: list[str] = []

    def check(path: str, rule, value=None):
        node = config
        try:
            for part in path.split("."):
                node = node[part]
        except (KeyError, AttributeError):
            return  # a field this config does not have: nothing to check
        allowed = rule(node)
        if allowed:
            problems.append(f"config.{path}={node!r}: allowed: {allowed}")

    check("seed", _int(0, 2**32 - 1))
    check("dtype", _one_of("float32", "bfloat16"))
    if "model" in config:
        m = config.model
        problems += _model_problems(m)
        check("model.num_refinement_blocks", _int(0))
        check("model.ffn_expansion_factor", _real(0, lo_open=True))
        if _is_int(m.get("dim")) and _is_real(m.get("ffn_expansion_factor")) and m.dim * m.ffn_expansion_factor < 1:
            problems.append(
                f"config.model.ffn_expansion_factor={m.ffn_expansion_factor!r}: allowed: at least 1/dim "
                "(the feed-forward layer needs one hidden channel)"
            )
        check("model.bary_blocks", _int(0, also=(-1,)))
        check("model.residual_scale", _real())
        check("model.conv_impl", _one_of("auto", "native", "shifted"))

    d = config.data
    check("data.collection", _one_of(*sources.COLLECTIONS))
    check("data.data_dir", _str)
    tasks = d.tasks
    if not isinstance(tasks, (tuple, list)) or not all(isinstance(t, str) for t in tasks):
        problems.append(f"config.data.tasks={tasks!r}: allowed: a tuple of task names, e.g. ('derain', 'dehaze')")
    elif d.collection in sources.COLLECTIONS:
        try:
            sources.resolve_sources(list(tasks), d.collection)
        except ValueError as e:
            problems.append(f"config.data.tasks={tuple(tasks)!r}: {e}")
    try:
        parse_multipliers(d.multipliers)
    except ConfigError as e:
        problems.append(str(e))
    check(
        "data.patch_size",
        lambda v: (
            None
            if _is_int(v) and v >= 16 and v % 8 == 0
            else (
                "a multiple of 8 (BaryNet downsamples by 8) of at least 16 (the potentials' 4x4 stride-4 convolution "
                "needs a latent of at least 2x2), e.g. 128 (official) or 32"
            )
        ),
    )
    check("data.batch_size", _int(1))
    check("data.num_workers", _int(0))
    check("data.prefetch", _int(0))

    check("loss.l1_weight", _real(0))
    check("loss.gamma", _real(0))
    check("loss.tau", _real(0, lo_open=True))
    check("loss.kappa", _real(0))
    check("loss.congruence", _one_of(*MODES))
    check("loss.penalty_points", _one_of(*PENALTY_POINTS))
    check("loss.potential_update", _one_of(*POTENTIAL_UPDATES))
    check("loss.skip_absent_potentials", _bool)
    check("loss.inner_map_steps", _int(1))

    check("optim.lr", _real(0))
    check("optim.potentials_lr", _real(0))
    check("optim.decay_every_epochs", _int(1))
    check("optim.decay_factor", _real(0, 1, lo_open=True))
    check("optim.rmsprop_decay", _real(0, 1, hi_open=True))
    check("optim.eps", _real(0, lo_open=True))
    problems += large_batch_problems(config)

    t = config.train
    check("train.num_steps", _int(1, also=(-1,)))
    if t.get("num_steps") == -1:
        check("train.num_epochs", _int(1))
    check("train.grad_accum_steps", _int(1))
    if _is_int(d.get("batch_size")) and _is_int(t.get("grad_accum_steps")) and t.grad_accum_steps >= 1:
        if d.batch_size >= 1 and d.batch_size % t.grad_accum_steps:
            problems.append(
                f"config.train.grad_accum_steps={t.grad_accum_steps}: allowed: a divisor of "
                f"config.data.batch_size={d.batch_size} (the global batch splits into that many micro-batches)"
            )
    for name in ("log_every", "checkpoint_every", "max_to_keep"):
        check(f"train.{name}", _int(1))
    check("train.eval_every", _int(0, also=(-1,)))
    check("train.image_every", _int(0, also=(-1,)))
    check("train.init_from", _str)
    init_from = t.get("init_from")
    if isinstance(init_from, str) and init_from and "://" not in init_from:
        if not os.path.isfile(os.path.join(init_from, "model_config.json")):
            problems.append(
                f"config.train.init_from={init_from!r}: allowed: '' or a model checkpoint directory "
                "(model_config.json + params/, written by baryir-convert or by a training run's export)"
            )
    check("train.export_model", _bool)

    if "eval" in config:
        e = config.eval
        known = sources.EVAL_TASKS.get(d.collection, {})
        et = e.tasks
        if not isinstance(et, (tuple, list)) or not all(isinstance(x, str) for x in et):
            problems.append(f"config.eval.tasks={et!r}: allowed: a tuple of task names")
        elif known and any(x not in known for x in et):
            bad = [x for x in et if x not in known][0]
            problems.append(
                f"config.eval.tasks={tuple(et)!r}: {bad!r} has no evaluation split in the {d.collection} "
                f"collection; allowed: {', '.join(known)}"
            )
        check("eval.max_images", _int(1, also=(-1,)))
        check("eval.after_training", _bool)

    if problems:
        raise ConfigError("; ".join(problems))
