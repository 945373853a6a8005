"""Loading a restorer for evaluation and restoration: a model checkpoint (+ an optional config file).

A model checkpoint is the directory `baryir_jax.models.io` writes (``model_config.json`` + ``params/``):
`baryir-convert` makes one from official weights, training exports one. `load_restorer` reads it; a
``--config FILE`` is needed only for a ``params/`` folder without ``model_config.json`` (then ``config.model``
gives the BaryNet arguments) or to take ``config.data.data_dir``.

`Restorer` runs the network with one jitted function per (network, input shape); compiled functions are cached
per network configuration, so two evaluations of the same network in one process share them. It records the
distinct input shapes it ran (`shapes`): that is the number of compilations the caller caused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from baryir_jax import config as config_lib
from baryir_jax.config import ARCH_KEYS
from baryir_jax.config import load as load_config  # noqa: F401  (the one config loader; importable here too)
from baryir_jax.errors import InputError
from baryir_jax.evaluate import metrics
from baryir_jax.models import BaryNet
from baryir_jax.models.io import CONFIG_FILE, PARAMS_DIR


class CheckpointError(InputError):
    """The checkpoint or config cannot be used; the message says what, where and how to fix it."""


class _DrainingEventLoop(asyncio.SelectorEventLoop):
    """An event loop that, when closed, first lets its unfinished tasks finish (their errors collected, not raised).

    orbax restores with ``gather`` in a fresh loop that it closes as soon as one read fails; the other reads are
    still in flight in tensorstore, and when they complete they schedule their results on the closed loop, which
    prints "RuntimeError: Event loop is closed" tracebacks long after the one error was reported."""

    def close(self):
        if not self.is_closed() and not self.is_running():
            pending = [t for t in asyncio.all_tasks(self) if not t.done()]
            if pending:
                self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        return _DrainingEventLoop()


@contextlib.contextmanager
def clean_async_teardown():
    """Loops created inside (by orbax, for a restore or a save) drain their tasks before closing, so a failed
    read or write is reported once, not followed by "Event loop is closed" tracebacks; the previous event loop
    policy is put back."""
    with warnings.catch_warnings():  # event loop policies are deprecated from Python 3.14 on
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(previous)


def numpy_init(module: BaryNet, seed: int = 0):
    """Random parameters with PyTorch's default initialisation, made with NumPy from `jax.eval_shape` (no XLA
    compilation, seconds even on a small CPU): conv kernels U(±1/√fan_in), LayerNorm weights 1 and biases 0,
    attention temperatures 1. For timing and tests without trained weights."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 8, 8, module.inp_channels))))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            bound = 1.0 / np.sqrt(max(int(np.prod(s.shape[:-1])), 1))
            return rng.uniform(-bound, bound, s.shape).astype(np.float32)
        if name in ("weight", "scale", "temperature"):
            return np.ones(s.shape, np.float32)
        return np.zeros(s.shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes["params"])


@dataclasses.dataclass
class Restorer:
    """A BaryNet and its parameters, ready to run on float32 NHWC images in [0, 1] with H, W multiples of 8."""

    module: BaryNet
    params: Any
    meta: dict = dataclasses.field(default_factory=dict)
    source: str = ""
    shapes: set = dataclasses.field(default_factory=set)
    name: str | None = None  # the method name in tables (default: from the checkpoint)

    def __post_init__(self):
        self.params = jax.device_put(self.params)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 → restored (N, H, W, 3) float32 (unclipped)."""
        x = np.asarray(x, np.float32)
        self._check(x.shape)
        self.shapes.add(tuple(x.shape))
        return np.asarray(_forward(self.module)(self.params, x))

    def evaluate(self, x: np.ndarray, target: np.ndarray, valid_hw: np.ndarray, y_channel: bool = False):
        """Restore, quantise as the official code saves images, and score the ``valid_hw`` region against the uint8
        target, in one compiled call: → (uint8 restored (N, H, W, 3), psnr (N,), ssim (N,)) as NumPy."""
        x = np.asarray(x, np.float32)
        self._check(x.shape)
        self.shapes.add(tuple(x.shape))
        q, p, s = _evaluate(self.module, bool(y_channel))(self.params, x, target, np.asarray(valid_hw, np.int32))
        return np.asarray(q), np.asarray(p, np.float64), np.asarray(s, np.float64)

    def _check(self, shape):
        if len(shape) != 4 or shape[-1] != self.module.inp_channels or shape[1] % 8 or shape[2] % 8:
            raise ValueError(
                f"the restorer runs on (N, H, W, {self.module.inp_channels}) batches with H and W "
                f"multiples of 8, got {shape}; pad or tile the image first."
            )

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        extra = self.meta.get("extra") or {}
        name = extra.get("converted_from") or os.path.basename(os.path.normpath(self.source)) or "BaryIR-JAX"
        return f"BaryIR-JAX ({name})"


@functools.cache
def _forward(module: BaryNet):
    return jax.jit(lambda p, x: module.apply({"params": p}, x).restored)


@functools.cache
def _evaluate(module: BaryNet, y_channel: bool):
    def step(p, x, target, hw):
        q = metrics.quantize(module.apply({"params": p}, x).restored)
        return (
            q,
            metrics.psnr(q, target, y_channel=y_channel, valid_hw=hw),
            metrics.ssim(q, target, y_channel=y_channel, valid_hw=hw),
        )

    return jax.jit(step)


def load_restorer(checkpoint: str, config=None, dtype: str | None = None) -> Restorer:
    """A `Restorer` from a model checkpoint directory; `config` (a loaded config or None) supplies the BaryNet
    arguments when the directory has no ``model_config.json``; `dtype` ('float32'|'bfloat16') overrides the
    compute dtype."""
    directory = os.path.abspath(os.path.expanduser(checkpoint))
    if not os.path.isdir(directory):
        raise CheckpointError(
            f"--checkpoint {checkpoint}: no such directory. Give a model checkpoint directory "
            f"({CONFIG_FILE} + {PARAMS_DIR}/), written by baryir-convert or by the training export."
        )
    has_cfg = os.path.isfile(os.path.join(directory, CONFIG_FILE))
    has_params = os.path.isdir(os.path.join(directory, PARAMS_DIR))
    cfg_model = config_lib.model_kwargs(config)
    cfg_dtype = config_lib.dtype_name(config)
    if not has_params:
        hint = ""
        if any(n.isdigit() for n in os.listdir(directory)):
            hint = (
                " It looks like a training checkpoint directory (numbered steps); export it to a model checkpoint "
                "first (the training export writes model_config.json + params/)."
            )
        raise CheckpointError(f"{directory} is not a model checkpoint: it has no {PARAMS_DIR}/ folder.{hint}")
    if has_cfg:
        from baryir_jax.models.io import load_model_checkpoint

        try:
            with clean_async_teardown():
                module, params, _, _, meta = load_model_checkpoint(directory)
        except Exception as e:  # noqa: BLE001 - orbax/json errors: say which directory
            raise CheckpointError(f"cannot read the model checkpoint {directory}: {_one_line(e)}") from None
        mismatched = {
            k: (getattr(module, k), v)
            for k, v in cfg_model.items()
            if k in ARCH_KEYS and _norm(getattr(module, k)) != _norm(v)
        }
        if mismatched:
            lines = ", ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, (a, b) in mismatched.items())
            raise CheckpointError(
                f"the config's model disagrees with the checkpoint {directory} ({lines}); the "
                "checkpoint's model_config.json decides the network: drop --config or use the config "
                "the checkpoint was trained with."
            )
    else:
        if not cfg_model and not getattr(config, "model", None):
            raise CheckpointError(
                f"{directory} has {PARAMS_DIR}/ but no {CONFIG_FILE}: give --config FILE whose "
                "config.model holds the BaryNet arguments (dim, num_blocks, ...)."
            )
        import orbax.checkpoint as ocp

        try:
            module = BaryNet(**{k: v for k, v in cfg_model.items() if k in ARCH_KEYS})
        except TypeError as e:
            raise CheckpointError(f"config.model has arguments BaryNet does not take: {e}") from None
        try:
            with clean_async_teardown(), ocp.StandardCheckpointer() as ckptr:
                tree = ckptr.restore(os.path.join(directory, PARAMS_DIR))
        except Exception as e:  # noqa: BLE001 - orbax errors: say which directory
            raise CheckpointError(f"cannot read the parameters in {directory}: {_one_line(e)}") from None
        params = tree.get("barynet", tree) if isinstance(tree, dict) else tree
        meta = {"barynet": cfg_model}
    want = dtype if dtype is not None else (cfg_dtype if cfg_dtype is not None else module.dtype)
    # the depthwise convolutions for the devices this process runs on (config.model.conv_impl, or auto)
    impl = config_lib.conv_impl(config)
    module = module.clone(dtype=config_lib.compute_dtype(want), conv_impl=impl)
    _check_params(module, params, directory)
    return Restorer(module, params, meta, directory)


def _one_line(e: BaseException, limit: int = 400) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}{'…' if len(msg) > limit else ''}"


def _norm(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _check_params(module: BaryNet, params, directory: str) -> None:
    expected = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 8, 8, module.inp_channels))))

    def shapes(tree):
        return {
            jax.tree_util.keystr(p): tuple(np.shape(leaf)) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        }

    exp, got = shapes(expected["params"]), shapes(params)
    if exp != got:
        missing = sorted(set(exp) - set(got))[:3]
        extra = sorted(set(got) - set(exp))[:3]
        shaped = [f"{k}: {got[k]} vs {exp[k]}" for k in sorted(set(exp) & set(got)) if exp[k] != got[k]][:3]
        raise CheckpointError(
            f"the parameters in {directory} do not fit BaryNet({_arch(module)}): missing "
            f"{missing}, unexpected {extra}, mis-shaped {shaped}."
        )


def _arch(module) -> str:
    return ", ".join(f"{k}={getattr(module, k)!r}" for k in ("dim", "num_blocks", "num_refinement_blocks", "heads"))


def describe(restorer: Restorer) -> dict:
    m = restorer.module
    n = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(restorer.params))
    return {
        "checkpoint": restorer.source,
        "parameters": n,
        "dtype": jnp.dtype(m.dtype).name,
        **{
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in ((k, getattr(m, k)) for k in ("dim", "num_blocks", "num_refinement_blocks", "heads"))
        },
        "extra": restorer.meta.get("extra"),
    }


def save_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=_json_default, ensure_ascii=False)
        f.write("\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
