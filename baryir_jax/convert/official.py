"""Official BaryIR (PyTorch) parameters → our Flax parameter trees.

Accepted files (all read with the safe reader of :mod:`baryir_jax.convert.torch_pickle`, no torch needed):

* the official training checkpoint ``{"epoch", "BaryIR": <BaryNet module>, "Pots": <Potentials module>}``
  (whole pickled modules; DDP scripts save the same with the ``.module`` unwrapped);
* the ``--pretrained`` format ``{"model": <module>, "discr": <module>}``;
* a state dict of BaryNet (``torch.save(model.state_dict())``), or a dict of state dicts under those keys.

Parameter names map mechanically: ``encoder_level1.0.attn.qkv.weight`` → ``encoder_level1_0/attn/qkv/kernel``
(conv kernels OIHW → HWIO, linear weights transposed, MDTA temperatures (h, 1, 1) → (h,), LayerNorm
``.body.weight`` → ``/weight``); the potentials ``potentials.{k}.{0,3,4,6}`` → ``potential_{k}/{conv,fc1,fc2,fc3}``.
The model sizes are read off the state dict. The official unused convs (``chnl_reduce*``,
``reduce_noise_channel_*``) are ignored and reported; anything missing, mis-shaped or unexpected is one error
(:class:`ConversionError`, one line) naming the key and both shapes, found from the shapes alone before any
tensor is read. Wrapper prefixes are removed from the keys: ``module.`` (DataParallel/DDP) and ``_orig_mod.``
(``torch.compile``) in any number and order, and any other prefix (``model.``, ``net.`` …) when every key of
the network carries it and it is the only one in front of ``patch_embed.proj.weight`` (the error names a prefix
that cannot be removed). Only the parameters that are converted are read from the file (see
:mod:`baryir_jax.convert.torch_pickle`); parameters holding NaN or inf are reported by ``warn``, naming them.

Kept whole (one idea, about 450 lines): official parameter trees → ours, i.e. finding BaryNet's and the
potentials' state dicts in a checkpoint's layouts, reading the sizes off them, and mapping every name and layout
with the shape checks that come before any tensor is read; the file reading is in ``torch_pickle``, the command
and its output in :mod:`baryir_jax.convert.cli`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from baryir_jax.convert.torch_pickle import (
    ModuleStub,
    TensorRef,
    describe_error,
    open_torch_checkpoint,
)
from baryir_jax.errors import InputError
from baryir_jax.models.barynet import BaryNet
from baryir_jax.models.potentials import Potentials

UNUSED_PREFIXES = ("chnl_reduce", "reduce_noise_channel_")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
_POTENTIAL_LAYERS = {"0": "conv", "3": "fc1", "4": "fc2", "6": "fc3"}
_RESTORER_KEYS = ("BaryIR", "model", "barynet", "restorer", "state_dict", "net", "params")
_POTENTIAL_KEYS = ("Pots", "discr", "potentials")
_RESTORER_ANCHOR = "patch_embed.proj.weight"
_POTENTIALS_ANCHOR = "potentials.0.0.weight"


class ConversionError(InputError, ValueError):
    """The checkpoint does not hold a BaryNet/Potentials this converter can map; the message (one line) says
    which key."""


def _is_tensor(v) -> bool:
    return isinstance(v, (np.ndarray, TensorRef))


def _key_label(k) -> str:
    return repr(k[:60]) if isinstance(k, str) else f"<{type(k).__name__}>"


def strip_wrappers(key: str) -> str:
    """``key`` without leading ``module.`` / ``_orig_mod.`` wrapper prefixes (any number, any order)."""
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p) and len(key) > len(p):
                key, changed = key[len(p) :], True
    return key


def _as_state_dict(obj, what: str) -> dict[str, Any]:
    """{key: tensor} of a module record or a state dict, wrapper prefixes removed; every tensor's geometry is
    checked (`CheckpointFormatError` naming it), none is read."""
    if isinstance(obj, ModuleStub):
        sd = obj.state_dict()
    elif isinstance(obj, Mapping):
        sd = dict(obj)
    else:
        raise ConversionError(f"the {what} entry is neither a module nor a state dict (got {type(obj).__name__})")
    out: dict[str, Any] = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise ConversionError(f"the {what} state dict has a key that is a {type(k).__name__}, not a string")
        if not _is_tensor(v):
            raise ConversionError(f"'{k}' in the {what} is a {type(v).__name__}, not a tensor")
        if isinstance(v, TensorRef):
            v.check(k if what == "checkpoint" else f"{what}.{k}")
        nk = strip_wrappers(k)
        if nk in out:
            raise ConversionError(f"two keys of the {what} become '{nk}' once wrapper prefixes are removed")
        out[nk] = v
    return out


def _strip_prefix(sd: dict[str, Any], anchor: str, what: str, note: Callable[[str], None] | None) -> dict[str, Any]:
    """Remove a non-wrapper prefix (``model.`` …) that every key carries, found in front of `anchor`."""
    if anchor in sd or not sd:
        return sd
    found = sorted({k[: -len(anchor)] for k in sd if k.endswith("." + anchor)})
    if len(found) > 1:
        raise ConversionError(
            f"the {what} is ambiguous: '{anchor}' appears under {len(found)} prefixes "
            f"({', '.join(repr(p) for p in found[:5])}); convert one network at a time"
        )
    if not found:
        firsts = sorted({k.split(".", 1)[0] + "." for k in sd if "." in k})
        hint = f"; its keys start with {', '.join(repr(p) for p in firsts[:6])}" if firsts else ""
        raise ConversionError(f"missing parameter '{anchor}' in the {what}: is this a BaryNet checkpoint?{hint}")
    prefix = found[0]
    others = [k for k in sd if not k.startswith(prefix)]
    if others:
        raise ConversionError(
            f"the {what}'s keys carry the unknown prefix {prefix!r} on {len(sd) - len(others)} of {len(sd)} keys "
            f"(not on e.g. {_key_label(others[0])}); it is not removed when only some keys carry it"
        )
    if note is not None:
        note(f"removed the key prefix {prefix!r} carried by all {len(sd)} keys of the {what}")
    out = {}
    for k, v in sd.items():
        nk = strip_wrappers(k[len(prefix) :])
        if nk in out:
            raise ConversionError(f"two keys of the {what} become '{nk}' once the prefix {prefix!r} is removed")
        out[nk] = v
    return out


def split_checkpoint(obj, note: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(restorer state dict, potentials state dict or None) from whatever the file held; values are arrays or
    `TensorRef` records (not read yet)."""
    if isinstance(obj, ModuleStub):
        return _strip_prefix(_as_state_dict(obj, "checkpoint"), _RESTORER_ANCHOR, "checkpoint", note), None
    if not isinstance(obj, Mapping):
        raise ConversionError(f"unexpected checkpoint content: {type(obj).__name__}")
    if obj and all(_is_tensor(v) for v in obj.values()):
        sd = _as_state_dict(obj, "checkpoint")
        if _RESTORER_ANCHOR not in sd and any(k.endswith("." + _RESTORER_ANCHOR) for k in sd):
            sd = _strip_prefix(sd, _RESTORER_ANCHOR, "checkpoint", note)
        pots = {k: v for k, v in sd.items() if k.startswith("potentials.")}
        rest = {k: v for k, v in sd.items() if not k.startswith("potentials.")}
        return _strip_prefix(rest, _RESTORER_ANCHOR, "checkpoint", note), (pots or None)
    key = next((k for k in _RESTORER_KEYS if k in obj), None)
    if key is None:
        keys = [_key_label(k) for k in list(obj.keys())[:12]]
        raise ConversionError(
            f"no restorer found in the checkpoint: expected one of the keys {list(_RESTORER_KEYS)}, found "
            f"{', '.join(keys)}{' …' if len(obj) > 12 else ''}"
        )
    restorer = _strip_prefix(_as_state_dict(obj[key], key), _RESTORER_ANCHOR, key, note)
    pkey = next((k for k in _POTENTIAL_KEYS if k in obj), None)
    pots = None
    if pkey is not None:
        pots = _strip_prefix(_as_state_dict(obj[pkey], pkey), _POTENTIALS_ANCHOR, pkey, note)
    return restorer, pots


# --- BaryNet ------------------------------------------------------------------------------------------------


def _flax_path(torch_key: str) -> tuple[str, ...]:
    toks = torch_key.split(".")
    out: list[str] = []
    for i, t in enumerate(toks):
        if t.isdigit() and out:
            out[-1] = f"{out[-1]}_{t}"
        elif t == "body" and (i + 1 < len(toks) and not toks[i + 1].isdigit()):
            continue  # LayerNorm wrapper
        else:
            out.append(t)
    return tuple(out)


def _to_flax_value(leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    if leaf == "weight" and value.ndim == 4:
        return "kernel", value.transpose(2, 3, 1, 0)
    if leaf == "weight" and value.ndim == 2:
        return "kernel", value.T
    if leaf == "temperature":
        return leaf, value.reshape(-1)
    return leaf, value


MAX_BLOCKS = 256


def _count(sd, prefix):
    """Number of blocks `prefix.0.` … `prefix.{n-1}.`; they must be numbered without gaps."""
    idx = {int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"\.(\d{1,6})\.", k)] if m}
    if not idx:
        return 0
    n = max(idx) + 1
    if n > MAX_BLOCKS or len(idx) != n:
        gaps = sorted(set(range(min(n, MAX_BLOCKS))) - idx)[:5]
        raise ConversionError(
            f"the blocks '{prefix}.N.' are numbered up to {n - 1}"
            + (f" with gaps (no {', '.join(map(str, gaps))})" if gaps else f" (at most {MAX_BLOCKS})")
        )
    return n


def _missing(sd, key: str, form: str) -> ConversionError:
    """The error for a missing `key`, naming the unknown prefix when the key is there under one."""
    carried = sorted(k for k in sd if k.endswith("." + key))
    if carried:
        prefix = carried[0][: -len(key)]
        return ConversionError(
            f"missing parameter '{key}': the key {carried[0]!r} carries the unknown prefix {prefix!r}, which only "
            "some keys carry, so it is not removed"
        )
    return ConversionError(f"missing parameter '{key}' (shape {form}); is this a BaryNet checkpoint?")


def _shape(sd, key, ndim: int, form: str) -> tuple[int, ...]:
    if key not in sd:
        raise _missing(sd, key, form)
    shape = tuple(int(s) for s in sd[key].shape)
    if len(shape) != ndim or min(shape, default=1) < 1:
        raise ConversionError(f"'{key}' has shape {shape}, the BaryNet needs {form}")
    return shape


def infer_barynet_config(sd: Mapping[str, Any]) -> dict[str, Any]:
    """BaryNet keyword arguments read off an official state dict (from shapes only)."""
    pe = _shape(sd, "patch_embed.proj.weight", 4, "(dim, in_channels, 3, 3)")
    dim, inp = pe[0], pe[1]
    # dim is read off patch_embed; the first block's output projection (dim, dim, 1, 1) must agree
    po = "encoder_level1.0.attn.project_out.weight"
    if po in sd:
        other = _shape(sd, po, 4, "(dim, dim, 1, 1)")[0]
        if other != dim or pe[2:] != (3, 3):
            raise ConversionError(
                f"'patch_embed.proj.weight' has shape {pe}, the BaryNet needs {(other, inp, 3, 3)} (dim {other}, "
                f"as in '{po}' {tuple(sd[po].shape)})"
            )
    out = _shape(sd, "output.weight", 4, "(out_channels, 2·dim, 3, 3)")[0]
    levels = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    blocks = [_count(sd, p) for p in levels]
    heads = [_shape(sd, f"{p}.0.attn.temperature", 3, "(heads, 1, 1)")[0] for p in levels]
    hidden = _shape(sd, "encoder_level1.0.ffn.project_in.weight", 4, "(2·hidden, dim, 1, 1)")[0] // 2
    ffn = 2.66 if int(dim * 2.66) == hidden else hidden / dim
    return dict(
        inp_channels=inp,
        out_channels=out,
        dim=dim,
        num_blocks=tuple(blocks),
        num_refinement_blocks=_count(sd, "refinement"),
        heads=tuple(heads),
        ffn_expansion_factor=ffn,
        use_bias="patch_embed.proj.bias" in sd,
        layernorm_type="WithBias" if "LN.body.bias" in sd else "BiasFree",
        bary_blocks=_count(sd, "barylatent"),
    )


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    leaf = path[-1]
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    if leaf == "temperature":
        return (shape[0], 1, 1)
    return shape


def _expected_params(model, sample_shape, config, what: str) -> dict[tuple[str, ...], Any]:
    try:
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(sample_shape)))
    except Exception as e:  # noqa: BLE001 - sizes read off the file that make no network: say which
        sizes = ", ".join(f"{k}={v}" for k, v in config.items())
        raise ConversionError(
            f"the sizes read off the checkpoint ({sizes}) do not make a {what}: {describe_error(e)}"
        ) from None
    return traverse_util.flatten_dict(shapes["params"])


def _match(
    expected: dict[tuple[str, ...], Any], candidates: dict[tuple[str, ...], str], sd: Mapping[str, Any], what: str
) -> dict[tuple[str, ...], str]:
    """{flax path: torch key} after checking every shape (from the shapes only: nothing is read)."""
    problems, plan = [], {}
    for path, struct in expected.items():
        want = _torch_shape(path, tuple(struct.shape))
        key = candidates.get(path)
        if key is None:
            problems.append(f"missing parameter for {'/'.join(path)} (torch shape {want})")
            continue
        got = tuple(int(s) for s in sd[key].shape)
        if got != want:
            problems.append(f"'{key}' has shape {got}, the {what} needs {want}")
        plan[path] = key
    extra = sorted(k for p, k in candidates.items() if p not in expected)
    if extra:
        problems.append(f"unexpected parameters: {', '.join(extra[:10])}{' …' if len(extra) > 10 else ''}")
    if problems:
        more = f"; … and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ConversionError(f"the checkpoint does not match the {what}: " + "; ".join(problems[:8]) + more)
    return plan


def _candidate_path(key: str, expected) -> tuple[str, ...]:
    path = _flax_path(key)
    if path[-1] == "weight" and path[:-1] + ("kernel",) in expected:
        return path[:-1] + ("kernel",)
    return path


def _read(sd: Mapping[str, Any], keys, read) -> dict[str, np.ndarray]:
    wanted = {k: sd[k] for k in keys}
    refs = {k: v for k, v in wanted.items() if isinstance(v, TensorRef)}
    if refs:
        if read is None:
            raise TypeError("the state dict holds tensors not read yet: pass read=TorchCheckpoint.read")
        wanted.update(read(refs))
    return wanted


def warn_non_finite(values: Mapping[str, np.ndarray], warn: Callable[[str], None] | None) -> list[str]:
    """Names of the floating-point parameters holding NaN or ±inf; `warn` gets one line naming them."""
    bad = []
    for k, v in values.items():
        v = np.asarray(v)
        if v.dtype.kind != "f" and v.dtype.name != "bfloat16":
            continue
        v32 = v.astype(np.float32, copy=False)
        nan, inf = int(np.isnan(v32).sum()), int(np.isinf(v32).sum())
        if nan or inf:
            bad.append(f"{k} ({nan} NaN, {inf} inf)")
    if bad and warn is not None:
        warn(
            f"WARNING: {len(bad)} parameter(s) hold NaN or inf values, so the network's outputs will too: "
            + ", ".join(bad[:10])
            + (f" … and {len(bad) - 10} more" if len(bad) > 10 else "")
        )
    return bad


def _default_warn(msg: str) -> None:
    print(msg, file=sys.stderr)


def convert_barynet(sd: Mapping[str, Any], config: dict[str, Any] | None = None, *, read=None, warn=_default_warn):
    """(params, config, ignored keys) for a BaryNet state dict (arrays, or `TensorRef` records read with
    `read` after every key and shape has been checked)."""
    config = dict(config or infer_barynet_config(sd))
    ignored = sorted(k for k in sd if k.startswith(UNUSED_PREFIXES))
    expected = _expected_params(BaryNet(**config), (1, 8, 8, config["inp_channels"]), config, "BaryNet")
    candidates = {}
    for k in sd:
        if not k.startswith(UNUSED_PREFIXES):
            candidates[_candidate_path(k, expected)] = k
    plan = _match(expected, candidates, sd, "BaryNet")
    values = _read(sd, plan.values(), read)
    warn_non_finite(values, warn)
    flat = {}
    for path, key in plan.items():
        _, value = _to_flax_value(path[-1] if path[-1] != "kernel" else "weight", np.asarray(values[key], np.float32))
        flat[path] = jnp.asarray(value, dtype=expected[path].dtype)
    return traverse_util.unflatten_dict(flat), config, ignored


# --- Potentials ---------------------------------------------------------------------------------------------


def check_patch_size(patch_size) -> None:
    """`ConversionError` unless `patch_size` is None or a multiple of 8 of at least 16 (latent side >= 2)."""
    if patch_size is not None and (type(patch_size) is not int or patch_size < 16 or patch_size % 8):
        raise ConversionError(
            f"--patch-size must be a multiple of 8 of at least 16 (the official runs use 128 or 144), got {patch_size}"
        )


def infer_potentials_config(sd: Mapping[str, Any], patch_size: int | None = None) -> dict[str, Any]:
    check_patch_size(patch_size)
    num = _count(sd, "potentials")
    if not num:
        raise ConversionError("the potentials state dict has no 'potentials.<k>.' parameters")
    channels = _shape(sd, "potentials.0.0.weight", 4, "(channels, channels/4, 4, 4)")[0]
    feats = _shape(sd, "potentials.0.3.weight", 2, "(features/4, features)")[1]
    side = int(round((feats / channels) ** 0.5))
    if channels * side * side != feats:
        raise ConversionError(
            f"potentials.0.3.weight has {feats} input features, not channels·s² for channels {channels}"
        )
    if patch_size is None:
        # conv side s comes from latent sides 4s-2 … 4s+1; the official patch sizes are 128 (s=4), 144 (s=5).
        patch_size = {4: 128, 5: 144}.get(side, 8 * 4 * side)
    return dict(num_potentials=num, channels=channels, patch_size=int(patch_size))


def convert_potentials(sd: Mapping[str, Any], patch_size: int | None = None, *, read=None, warn=_default_warn):
    config = infer_potentials_config(sd, patch_size)
    side = config["patch_size"] // 8
    expected = _expected_params(Potentials(**config), (1, side, side, config["channels"]), config, "Potentials")
    candidates = {}
    for k in sd:
        m = re.fullmatch(r"potentials\.(\d{1,4})\.(\d{1,4})\.(weight|bias)", k)
        if not m or m.group(2) not in _POTENTIAL_LAYERS:
            candidates[("?", k)] = k
            continue
        leaf = "kernel" if m.group(3) == "weight" else "bias"
        candidates[(f"potential_{m.group(1)}", _POTENTIAL_LAYERS[m.group(2)], leaf)] = k
    plan = _match(expected, candidates, sd, "Potentials")
    values = _read(sd, plan.values(), read)
    warn_non_finite(values, warn)
    flat = {}
    for path, key in plan.items():
        _, value = _to_flax_value("weight" if path[-1] == "kernel" else path[-1], np.asarray(values[key], np.float32))
        flat[path] = jnp.asarray(value, dtype=expected[path].dtype)
    return traverse_util.unflatten_dict(flat), config


def torch_to_flax(path: str, *, patch_size: int | None = None, report=print, warn=_default_warn) -> dict[str, Any]:
    """Convert an official BaryIR checkpoint (or state dict) file.

    Returns ``{'barynet': params, 'potentials': params or None, 'barynet_config': …, 'potentials_config': …,
    'ignored': [...]}``; ``report`` receives one-line notes (ignored unused parameters, a removed key prefix),
    ``warn`` one line naming parameters that hold NaN or inf. Raises `CheckpointFormatError` (the file is not a
    readable checkpoint; the message is the reason, without the path), `UnsafeCheckpointError` (a refused
    global) or `ConversionError` (readable, but not a BaryNet this converter maps). Only the converted
    parameters are read from the file.
    """
    check_patch_size(patch_size)
    with open_torch_checkpoint(path) as ckpt:
        restorer_sd, pots_sd = split_checkpoint(ckpt.root, note=report)
        params, config, ignored = convert_barynet(restorer_sd, read=ckpt.read, warn=warn)
        pots, pots_config = (None, None)
        if pots_sd:
            pots, pots_config = convert_potentials(pots_sd, patch_size, read=ckpt.read, warn=warn)
    if ignored and report is not None:
        n = sum(int(np.prod(restorer_sd[k].shape)) for k in ignored)
        report(
            f"ignored {len(ignored)} unused official parameters ({n:,} values): "
            + ", ".join(sorted({k.split(".")[0] for k in ignored}))
        )
    return {
        "barynet": params,
        "potentials": pots,
        "barynet_config": config,
        "potentials_config": pots_config,
        "ignored": ignored,
    }
