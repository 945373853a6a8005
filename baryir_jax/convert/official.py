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
``reduce_noise_channel_*``) are ignored and reported; anything missing, mis-shaped or unexpected is an error
naming the key and both shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from baryir_jax.convert.torch_pickle import CheckpointFormatError, ModuleStub, load_torch_checkpoint
from baryir_jax.models.barynet import BaryNet
from baryir_jax.models.potentials import Potentials

UNUSED_PREFIXES = ("chnl_reduce", "reduce_noise_channel_")
_POTENTIAL_LAYERS = {"0": "conv", "3": "fc1", "4": "fc2", "6": "fc3"}
_RESTORER_KEYS = ("BaryIR", "model", "barynet", "restorer", "state_dict")
_POTENTIAL_KEYS = ("Pots", "discr", "potentials")


class ConversionError(ValueError):
    """The checkpoint does not hold a BaryNet/Potentials this converter can map; the message says which key."""


def _as_state_dict(obj, what: str) -> dict[str, np.ndarray]:
    if isinstance(obj, ModuleStub):
        sd = obj.state_dict()
    elif isinstance(obj, Mapping) and all(isinstance(v, np.ndarray) for v in obj.values()):
        sd = dict(obj)
    else:
        raise ConversionError(f"the {what} entry is neither a module nor a state dict (got {type(obj).__name__})")
    # DataParallel/DDP prefixes.
    return {re.sub(r"^(module\.)+", "", k): np.asarray(v) for k, v in sd.items()}


def split_checkpoint(obj) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(restorer state dict, potentials state dict or None) from whatever the file held."""
    if isinstance(obj, ModuleStub):
        return _as_state_dict(obj, "checkpoint"), None
    if not isinstance(obj, Mapping):
        raise ConversionError(f"unexpected checkpoint content: {type(obj).__name__}")
    if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        sd = _as_state_dict(obj, "checkpoint")
        pots = {k: v for k, v in sd.items() if k.startswith("potentials.")}
        rest = {k: v for k, v in sd.items() if not k.startswith("potentials.")}
        return rest, (pots or None)
    restorer = next((obj[k] for k in _RESTORER_KEYS if k in obj), None)
    if restorer is None:
        raise ConversionError(
            f"no restorer found in the checkpoint: expected one of the keys {list(_RESTORER_KEYS)}, found "
            f"{sorted(map(str, obj.keys()))}"
        )
    pots = next((obj[k] for k in _POTENTIAL_KEYS if k in obj), None)
    return _as_state_dict(restorer, "restorer"), (_as_state_dict(pots, "potentials") if pots is not None else None)


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


def _count(sd, prefix):
    idx = {int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"\.(\d+)\.", k)] if m}
    return max(idx) + 1 if idx else 0


def infer_barynet_config(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """BaryNet keyword arguments read off an official state dict."""

    def need(key):
        if key not in sd:
            raise ConversionError(
                f"missing parameter '{key}' (expected shape: see BaryNet); is this a BaryNet checkpoint?"
            )
        return sd[key]

    pe = need("patch_embed.proj.weight")
    dim, inp = int(pe.shape[0]), int(pe.shape[1])
    out = int(need("output.weight").shape[0])
    blocks = [_count(sd, p) for p in ("encoder_level1", "encoder_level2", "encoder_level3", "latent")]
    heads = [
        int(need(f"{p}.0.attn.temperature").shape[0])
        for p in ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    ]
    hidden = int(need("encoder_level1.0.ffn.project_in.weight").shape[0]) // 2
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


def _fill(
    expected: dict[tuple[str, ...], Any], converted: dict[tuple[str, ...], tuple[str, np.ndarray]], what: str
) -> dict:
    problems = []
    for path, struct in expected.items():
        if path not in converted:
            problems.append(
                f"missing parameter for {'/'.join(path)} (torch shape {_torch_shape(path, tuple(struct.shape))})"
            )
            continue
        key, value = converted[path]
        if tuple(value.shape) != tuple(struct.shape):
            problems.append(
                f"'{key}' has shape {_torch_shape(path, tuple(value.shape))}, the {what} needs "
                f"{_torch_shape(path, tuple(struct.shape))}"
            )
    extra = sorted(converted[p][0] for p in converted if p not in expected)
    if extra:
        problems.append(f"unexpected parameters: {', '.join(extra[:10])}{' …' if len(extra) > 10 else ''}")
    if problems:
        raise ConversionError(f"the checkpoint does not match the {what}:\n  " + "\n  ".join(problems))
    flat = {p: jnp.asarray(converted[p][1], dtype=expected[p].dtype) for p in expected}
    return traverse_util.unflatten_dict(flat)


def convert_barynet(sd: Mapping[str, np.ndarray], config: dict[str, Any] | None = None):
    """(params, config, ignored keys) for a BaryNet state dict."""
    config = dict(config or infer_barynet_config(sd))
    ignored = sorted(k for k in sd if k.startswith(UNUSED_PREFIXES))
    converted = {}
    for k, v in sd.items():
        if k.startswith(UNUSED_PREFIXES):
            continue
        path = _flax_path(k)
        leaf, value = _to_flax_value(path[-1], np.asarray(v, np.float32))
        converted[path[:-1] + (leaf,)] = (k, value)
    model = BaryNet(**config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, config["inp_channels"]))))
    expected = traverse_util.flatten_dict(shapes["params"])
    return _fill(expected, converted, "BaryNet"), config, ignored


# --- Potentials ---------------------------------------------------------------------------------------------


def infer_potentials_config(sd: Mapping[str, np.ndarray], patch_size: int | None = None) -> dict[str, Any]:
    ks = {int(m.group(1)) for k in sd for m in [re.match(r"potentials\.(\d+)\.", k)] if m}
    if not ks:
        raise ConversionError("the potentials state dict has no 'potentials.<k>.' parameters")
    num = max(ks) + 1
    channels = int(sd["potentials.0.0.weight"].shape[0])
    feats = int(sd["potentials.0.3.weight"].shape[1])
    side = int(round((feats / channels) ** 0.5))
    if channels * side * side != feats:
        raise ConversionError(
            f"potentials.0.3.weight has {feats} input features, not channels·s² for channels {channels}"
        )
    if patch_size is None:
        # conv side s comes from latent sides 4s-2 … 4s+1; the official patch sizes are 128 (s=4), 144 (s=5).
        patch_size = {4: 128, 5: 144}.get(side, 8 * 4 * side)
    return dict(num_potentials=num, channels=channels, patch_size=int(patch_size))


def convert_potentials(sd: Mapping[str, np.ndarray], patch_size: int | None = None):
    config = infer_potentials_config(sd, patch_size)
    converted = {}
    for k, v in sd.items():
        m = re.fullmatch(r"potentials\.(\d+)\.(\d+)\.(weight|bias)", k)
        if not m or m.group(2) not in _POTENTIAL_LAYERS:
            converted[("?", k)] = (k, np.asarray(v))
            continue
        leaf, value = _to_flax_value(m.group(3), np.asarray(v, np.float32))
        converted[(f"potential_{m.group(1)}", _POTENTIAL_LAYERS[m.group(2)], leaf)] = (k, value)
    model = Potentials(**config)
    side = config["patch_size"] // 8
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, config["channels"]))))
    return _fill(traverse_util.flatten_dict(shapes["params"]), converted, "Potentials"), config


def torch_to_flax(path: str, *, patch_size: int | None = None, report=print) -> dict[str, Any]:
    """Convert an official BaryIR checkpoint (or state dict) file.

    Returns ``{'barynet': params, 'potentials': params or None, 'barynet_config': …, 'potentials_config': …,
    'ignored': [...]}``; ``report`` receives the one-line note about ignored unused parameters.
    """
    try:
        obj = load_torch_checkpoint(path)
    except FileNotFoundError:
        raise
    except CheckpointFormatError as e:
        raise ConversionError(str(e)) from e
    restorer_sd, pots_sd = split_checkpoint(obj)
    params, config, ignored = convert_barynet(restorer_sd)
    if ignored and report is not None:
        n = sum(int(np.prod(restorer_sd[k].shape)) for k in ignored)
        report(
            f"ignored {len(ignored)} unused official parameters ({n:,} values): "
            + ", ".join(sorted({k.split(".")[0] for k in ignored}))
        )
    pots, pots_config = (None, None)
    if pots_sd:
        pots, pots_config = convert_potentials(pots_sd, patch_size)
    return {
        "barynet": params,
        "potentials": pots,
        "barynet_config": config,
        "potentials_config": pots_config,
        "ignored": ignored,
    }
