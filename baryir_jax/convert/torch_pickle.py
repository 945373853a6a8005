"""Read PyTorch checkpoint files without PyTorch and without running pickled code.

``torch.save`` writes a zip archive holding ``data.pkl`` (a pickle) and one raw file per tensor storage. The
pickle names the globals it needs; a normal ``pickle.load`` would import and call whatever it names, which is
how a malicious checkpoint runs code. :class:`SafeTorchUnpickler` resolves globals only from an allow-list of
what rebuilding tensors and ``nn.Module`` trees needs, each mapped to a small function of ours (tensors become
NumPy arrays, modules become inert :class:`ModuleStub` records); anything else stops the load with an error
naming the global, before it is called.

The official BaryIR checkpoints are whole pickled modules whose classes live in a module ``model_bary`` that
users do not have. Any ``model_bary.*`` class (and the ``torch.nn`` container/layer classes listed below)
resolves to a :class:`ModuleStub` subclass, so such files load without that module and without executing it.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

# Classes of torch.nn whose pickled instances only carry parameters, buffers and submodules.
_TORCH_MODULE_CLASSES = {
    "torch.nn.modules.container": {"Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"},
    "torch.nn.modules.conv": {"Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d"},
    "torch.nn.modules.linear": {"Linear", "Identity", "Bilinear"},
    "torch.nn.modules.activation": {"LeakyReLU", "ReLU", "PReLU", "GELU", "Sigmoid", "Tanh", "SiLU", "Softmax"},
    "torch.nn.modules.pixelshuffle": {"PixelShuffle", "PixelUnshuffle"},
    "torch.nn.modules.flatten": {"Flatten", "Unflatten"},
    "torch.nn.modules.normalization": {"LayerNorm", "GroupNorm"},
    "torch.nn.modules.batchnorm": {"BatchNorm2d", "BatchNorm1d"},
    "torch.nn.modules.dropout": {"Dropout", "Dropout2d"},
    "torch.nn.modules.pooling": {"AvgPool2d", "MaxPool2d", "AdaptiveAvgPool2d"},
    "torch.nn.parallel.data_parallel": {"DataParallel"},
}
# Modules whose every class is treated as a module-tree record (the official model file, never imported).
_STUB_MODULES = {"model_bary"}

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle names a global that is not on the allow-list; nothing of it was run."""


class CheckpointFormatError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands."""


class ModuleStub:
    """An inert stand-in for a pickled ``nn.Module``: it only keeps the pickled attribute dict."""

    torch_class = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise CheckpointFormatError(f"unexpected pickled state for module {self.torch_class}")
        self.__dict__["_state"] = state

    def __repr__(self):
        return f"ModuleStub({self.torch_class})"

    def state_dict(self, prefix: str = "") -> collections.OrderedDict[str, np.ndarray]:
        """The module's parameters and persistent buffers, named as ``nn.Module.state_dict`` names them."""
        out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        st = self.__dict__.get("_state", {})
        for name, value in (st.get("_parameters") or {}).items():
            if value is not None:
                out[prefix + name] = value
        non_persistent = st.get("_non_persistent_buffers_set") or set()
        for name, value in (st.get("_buffers") or {}).items():
            if value is not None and name not in non_persistent:
                out[prefix + name] = value
        for name, child in (st.get("_modules") or {}).items():
            if isinstance(child, ModuleStub):
                out.update(child.state_dict(prefix + name + "."))
        return out


_stub_classes: dict[str, type] = {}


def _stub_class(qualified: str) -> type:
    if qualified not in _stub_classes:
        _stub_classes[qualified] = type(qualified.rsplit(".", 1)[-1], (ModuleStub,), {"torch_class": qualified})
    return _stub_classes[qualified]


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    itemsize = storage.dtype.itemsize
    if len(size) == 0:
        return np.array(storage[storage_offset])
    needed = storage_offset + 1 + sum((s - 1) * st for s, st in zip(size, stride) if s > 0)
    if any(s == 0 for s in size):
        return np.zeros(tuple(size), storage.dtype)
    if needed > storage.size:
        raise CheckpointFormatError("a tensor reaches past the end of its storage: the file is truncated or corrupt")
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _torch_size(*args):
    return tuple(*args) if args else ()


_ALLOWED_CALLABLES = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("torch", "Size"): _torch_size,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class SafeTorchUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip checkpoint with an allow-list of globals (see module docstring)."""

    def __init__(self, file, storages: dict[str, bytes]):
        super().__init__(file)
        self._storages = storages
        self._loaded: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_CALLABLES:
            return _ALLOWED_CALLABLES[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module in _STUB_MODULES or name in _TORCH_MODULE_CLASSES.get(module, ()):
            return _stub_class(f"{module}.{name}")
        raise UnsafeCheckpointError(
            f"refusing to load the global '{module}.{name}' named in the checkpoint: only the globals needed to "
            "rebuild tensors and module trees are allowed, so this file was not loaded and nothing in it was run. "
            "If it is a genuine PyTorch checkpoint, re-save its state_dict() with torch.save and convert that."
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointFormatError(f"unsupported persistent id in the checkpoint: {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"unsupported storage type in the checkpoint: {storage_type!r}")
        key = str(key)
        if key not in self._loaded:
            if key not in self._storages:
                raise CheckpointFormatError(f"storage {key} is missing from the checkpoint archive (truncated file?)")
            buf = np.frombuffer(self._storages[key], dtype=storage_type.dtype)
            if buf.size < numel:
                raise CheckpointFormatError(
                    f"storage {key} holds {buf.size} elements, {numel} expected (truncated file?)"
                )
            self._loaded[key] = buf
        return self._loaded[key]


def load_torch_checkpoint(path: str) -> Any:
    """Load a ``torch.save`` zip file into plain Python: dicts, NumPy arrays and :class:`ModuleStub` trees."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CheckpointFormatError(
            f"{path} is not a zip-format PyTorch checkpoint (torch.save has written zip files since PyTorch 1.6); "
            "re-save it with a recent torch, or check that the download is complete"
        ) from e
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointFormatError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
        root = pkl[0][: -len("data.pkl")]
        byteorder = root + "byteorder"
        if byteorder in names and zf.read(byteorder).decode().strip() != "little":
            raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported")
        prefix = root + "data/"
        storages = {n[len(prefix) :]: zf.read(n) for n in names if n.startswith(prefix) and n != prefix}
        data = zf.read(pkl[0])
    return SafeTorchUnpickler(io.BytesIO(data), storages).load()
