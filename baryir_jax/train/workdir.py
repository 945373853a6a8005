"""A training workdir over its life: what may change between runs, the checkpoints' own config and data position,
damaged or non-finite checkpoints, the config history and the model export.

Layout of ``WORKDIR``:

* ``checkpoints/STEP/`` (orbax): ``state`` (:class:`~baryir_jax.train.state.TrainState` in the layout of
  :class:`~baryir_jax.train.state.CheckpointState`), ``data_position`` (JSON:
  the examples of the shared data stream consumed so far) and ``config`` (JSON: the config that ran).
* ``checkpoints_set_aside/STEP`` — checkpoints that could not be resumed (damaged or non-finite), moved out of
  the way once an older step resumed, so that the resumed run can write those step numbers again.
* ``config.json`` — the config of the newest run; ``config_history/NNN_from_step_S.json`` — every run's.
* ``model/`` — the exported model (``model_config.json`` records the step), always the final step's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from baryir_jax.config import ConfigError

log = logging.getLogger("baryir_jax.train")

CHECKPOINTS = "checkpoints"
SET_ASIDE = "checkpoints_set_aside"
HISTORY = "config_history"
MODEL = "model"


class WorkdirError(ConfigError):
    """The workdir cannot continue as asked (changed settings, no checkpoint that restores); the message says
    what to do. A :class:`ConfigError`: ``baryir-train`` exits with code 2."""


# ---------------------------------------------------------------------------------- what may change between runs

# Fields whose change alters the structure or the meaning of what a checkpoint holds; a run that resumes a
# workdir must keep them. A prefix ending in '.' covers every field under it (also fields added later).
FIXED_FIELDS: dict[str, str] = {
    "model.": "the restorer's architecture: the saved parameters have its shapes and compute its function",
    "seed": "the data stream's shuffle, crops and noise: the saved data position points into the stream of this seed",
    "data.tasks": "one potential and one λ per source, in this order: the saved potentials belong to these sources",
    "data.collection": "which data sets make the stream the saved data position points into",
    "data.multipliers": "the oversampled mixture: λ_k (from the counts) and the stream the data position points into",
    "data.patch_size": "the potentials' input (patch/8 latents): their parameter shapes",
    "loss.congruence": "how the saved potentials are read (penalty, or the exact/centered parametrisation)",
    "loss.potential_update": "potential updates per step, counted in their saved RMSprop state (the LR schedule)",
    "loss.inner_map_steps": "restorer updates per step, counted in its saved RMSprop state (the LR schedule)",
    "loss.penalty_points": "the rules of the game the saved potentials were trained under",
    "loss.skip_absent_potentials": "the rules of the game the saved potentials were trained under",
}
# Everything else may change, and the change is logged. Why each group is safe:
# * optim.* (LRs, their decay, RMSprop decay and eps): the saved RMSprop state (second moments and the update count)
#   is a valid state for any of them; the LR is a function of the count, so a new schedule applies from now on.
# * train.* (num_steps/num_epochs, cadences of logging, checkpoints, validation and images, max_to_keep,
#   export_model, grad_accum_steps — the same global batch in micro-batches, the same gradient up to rounding —
#   and init_from, which only a run without a checkpoint reads).
# * eval.*: validation and the final table only.
# * data.data_dir (where the same data sets live), data.num_workers and data.prefetch (the batches do not depend on
#   them), data.batch_size (the data position is kept in examples, so the stream continues where it stopped; an
#   epoch, and so the LR decay, counts the new number of steps).
# * dtype: parameters and optimizer states are float32 either way; only the restorer's arithmetic changes.
# * loss.l1_weight, loss.gamma, loss.tau, loss.kappa: weights of the objective, hyperparameters like the LR.
# Whatever the fields say, the saved state's tree is compared with the configured one before restoring
# (:func:`check_state_structure`), so no setting reaches orbax with a state of another shape.


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _is_fixed(key: str) -> str | None:
    for field, why in FIXED_FIELDS.items():
        if key == field or (field.endswith(".") and key.startswith(field)):
            return why
    return None


def config_dict(config) -> dict:
    """The config as JSON data (tuples as lists), as checkpoints and config.json record it."""
    return json.loads(config.to_json_best_effort())


def compare_configs(saved: dict, current: dict) -> tuple[list[tuple[str, Any, Any, str]], list[tuple[str, Any, Any]]]:
    """(fixed, allowed): the fields that differ, split by :data:`FIXED_FIELDS`. A field present on one side only
    (added to the config since the checkpoint, or removed) is not a difference."""
    a, b = _flatten(saved), _flatten(current)
    fixed, allowed = [], []
    for key in sorted(set(a) & set(b)):
        if a[key] != b[key]:
            why = _is_fixed(key)
            if why:
                fixed.append((key, a[key], b[key], why))
            else:
                allowed.append((key, a[key], b[key]))
    return fixed, allowed


def check_resume_config(workdir: str, saved: dict | None, saved_where: str, current: dict) -> None:
    """Stop (:class:`WorkdirError`, one line) if ``current`` changes a fixed field of the checkpoint's config;
    log the allowed changes."""
    if saved is None:
        return
    fixed, allowed = compare_configs(saved, current)
    if fixed:
        what = "; ".join(f"{k}: {_short(old)} → {_short(new)} ({why})" for k, old, new, why in fixed)
        model = os.path.join(workdir, MODEL)
        if exported_step(workdir) is None:  # stopped before its export: say how to write one
            steps = checkpoint_steps(os.path.join(workdir, CHECKPOINTS))
            model += (
                f" (it has no exported model yet: resume it with its own settings and "
                f"--config.train.num_steps={steps[0]}, which trains nothing and exports step {steps[0]})"
                if steps
                else " (it has no exported model yet)"
            )
        raise WorkdirError(
            f"{workdir} holds a run whose settings differ from this one where a resumed run must keep them "
            f"(compared with {saved_where}): {what}. Keep those values to resume it; or train with them in a new "
            f"--workdir, optionally fine-tuning its model: --config.train.init_from={model}"
        )
    if allowed:
        log.info(
            "resuming with changed settings (allowed): %s",
            "; ".join(f"{k}: {_short(old)} → {_short(new)}" for k, old, new in allowed),
        )


def _short(v, limit: int = 80) -> str:
    s = repr(tuple(v) if isinstance(v, list) else v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def abstract_leaves(tree) -> dict[str, tuple]:
    """``{'restorer.encoder_level1_0.attn.qkv.kernel': shape, …}`` of a pytree or of orbax's metadata tree."""
    import jax

    def name(k) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[".".join(name(k) for k in path)] = tuple(getattr(leaf, "shape", ()))
    return out


def check_state_structure(workdir: str, step: int, saved_meta, state) -> None:
    """Stop (:class:`WorkdirError`) if the checkpoint's state tree differs from the configured one."""
    saved, mine = abstract_leaves(saved_meta), abstract_leaves(state)
    if saved == mine:
        return
    diffs = []
    for key in sorted(set(saved) | set(mine)):
        if saved.get(key) != mine.get(key):
            diffs.append(f"{key}: {saved.get(key, 'absent')} → {mine.get(key, 'absent')}")
    raise WorkdirError(
        f"the train state in {workdir} (checkpoint step {step}) has another structure than this config builds "
        f"({len(diffs)} differing arrays, e.g. {'; '.join(diffs[:3])}). Use the config it was trained with (see "
        f"{os.path.join(workdir, 'config.json')}), or a new --workdir"
    )


# ------------------------------------------------------------------------------------------------ checkpoints


def checkpoint_steps(ckpt_dir) -> list[int]:
    """Finished checkpoint steps in ``ckpt_dir``, newest first (orbax's unfinished ``N.orbax-checkpoint-tmp…``
    folders are not steps)."""
    from etils import epath

    path = epath.Path(ckpt_dir)
    if not path.is_dir():
        return []
    steps = []
    for p in path.iterdir():
        if p.name.isdigit() and p.is_dir():
            if "://" in os.fspath(path) and not (p / "commit_success.txt").exists():
                continue  # cloud storage: orbax marks a finished step with this file instead of a rename
            steps.append(int(p.name))
    return sorted(steps, reverse=True)


def read_saved_config(workdir, steps: list[int]) -> tuple[dict | None, str]:
    """The config recorded by the newest checkpoint that has a readable one; for checkpoints written before
    they recorded it, ``WORKDIR/config.json``. Returns (config dict or None, where it came from)."""
    from etils import epath

    root = epath.Path(workdir)
    for step in steps:
        f = root / CHECKPOINTS / str(step) / "config" / "metadata"
        try:
            return json.loads(f.read_text()), f"checkpoint step {step}"
        except (OSError, ValueError):
            continue
    f = root / "config.json"
    if steps and f.exists():
        try:
            return json.loads(f.read_text()), "config.json"
        except ValueError:
            pass
    return None, ""


def set_aside(workdir, skipped: list[tuple[int, str]]) -> None:
    """Move the checkpoints that could not be resumed to ``WORKDIR/checkpoints_set_aside/`` (process 0 only)."""
    from etils import epath

    root = epath.Path(workdir)
    for step, _ in skipped:
        src = root / CHECKPOINTS / str(step)
        dst = root / SET_ASIDE / str(step)
        if not src.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        while dst.exists():
            n += 1
            dst = root / SET_ASIDE / f"{step}.{n}"
        src.rename(dst)
        log.warning("moved the unusable checkpoint step %d to %s (delete it when you no longer need it)", step, dst)


def write_config(workdir, config, start: int) -> None:
    """``config.json`` (this run's config) and ``config_history/NNN_from_step_S.json`` (every run's); process 0."""
    from etils import epath

    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    text = config.to_json_best_effort(indent=2)
    hist = root / HISTORY
    hist.mkdir(parents=True, exist_ok=True)
    n = len([p for p in hist.iterdir() if p.name.endswith(".json")])
    if n == 0 and (root / "config.json").exists():  # a workdir from before the history: keep its config too
        (hist / "000_before_history.json").write_text((root / "config.json").read_text())
        n = 1
    (hist / f"{n:03d}_from_step_{start}.json").write_text(text)
    (root / "config.json").write_text(text)


# ------------------------------------------------------------------------------------------------ model export


def exported_step(workdir) -> int | None:
    """The step recorded by a complete ``WORKDIR/model`` export; None if there is none or it is incomplete."""
    from etils import epath

    model = epath.Path(workdir) / MODEL
    cfg = model / "model_config.json"
    params = model / "params"
    if not cfg.exists() or not params.exists():
        return None
    try:
        step = json.loads(cfg.read_text()).get("extra", {}).get("step")
    except ValueError:
        return None
    return int(step) if isinstance(step, int) else None


def export_model(workdir, write) -> str:
    """Replace ``WORKDIR/model`` with a fresh export, never leaving a mix of two: ``write(directory)`` writes
    the export into ``model.partial/``, which then replaces ``model/`` by renames (local storage). On cloud
    storage, where a folder cannot be renamed, the export is written in place after removing the old one's
    ``model_config.json``, the file readers need and :func:`exported_step` checks, so an interrupted export
    reads as incomplete and the next run writes it again."""
    from etils import epath

    root = epath.Path(workdir)
    target = root / MODEL
    if "://" in os.fspath(root):
        if (target / "model_config.json").exists():
            (target / "model_config.json").unlink()
        if target.exists():
            target.rmtree()
        write(os.fspath(target))
        return os.fspath(target)
    partial, old = root / (MODEL + ".partial"), root / (MODEL + ".replaced")
    for leftover in (partial, old):
        if leftover.exists():
            shutil.rmtree(os.fspath(leftover))
    write(os.fspath(partial))
    if target.exists():
        os.replace(os.fspath(target), os.fspath(old))
    os.replace(os.fspath(partial), os.fspath(target))
    if old.exists():
        shutil.rmtree(os.fspath(old))
    return os.fspath(target)
