"""Shared configuration defaults: the official BaryIR settings (``baryir-official.md`` §3–§4).

The files in ``configs/`` start from :func:`base_config` and change what their run needs. Every field can be
overridden on the command line: ``--config.optim.lr=2e-4``, ``--config.data.tasks='("derain","dehaze")'``.
"""

from __future__ import annotations

import math
import os

import ml_collections
import numpy as np

# Official `--de_type` names of the 3D and 5D runs.
TASKS_3D = ("derain", "dehaze", "denoise_15", "denoise_25", "denoise_50")
TASKS_5D = ("derain", "dehaze", "lowlight", "denoise_25", "deblur")


class ConfigError(ValueError):
    """A configuration value that cannot work (the message names the field and what to set instead)."""


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


# ------------------------------------------------------------------------------------------------ validation


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
