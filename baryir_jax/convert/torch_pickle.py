"""Read PyTorch checkpoint files without PyTorch, without running pickled code, and without trusting the file.

``torch.save`` writes a zip archive holding ``data.pkl`` (a pickle) and one raw file per tensor storage
(``data/<key>``). The pickle names the globals it needs; a normal ``pickle.load`` would import and call whatever
it names, which is how a malicious checkpoint runs code. :class:`SafeTorchUnpickler` resolves globals only from
an allow-list of what rebuilding tensors and ``nn.Module`` trees needs, each handed to the pickle as an inert
stand-in of ours (a ``BUILD`` on one is refused, so no pickle can change anything outside its own objects);
anything else stops the load with an error naming the global, before it is called.

The official BaryIR checkpoints are whole pickled modules whose classes live in a module ``model_bary`` that
users do not have. Any ``model_bary.*`` class (and the ``torch.nn`` container/layer classes listed below)
resolves to a :class:`ModuleStub` subclass made for this one load, so such files load without that module and
without executing it.

Reading happens in two steps, so that a crafted file can neither read outside a buffer nor make the reader
allocate memory out of proportion to the tensors it really holds:

1. :func:`open_torch_checkpoint` unpickles ``data.pkl`` (at most 16 MiB, and compressed at most 16:1) into
   plain Python whose tensors are :class:`TensorRef` records (storage, dtype, offset, shape, strides): no
   storage is read yet.
2. :meth:`TorchCheckpoint.read` reads the tensors asked for, and only the storages they reference. Before
   anything is decompressed it checks every tensor's geometry (integer sizes ≥ 0, offset ≥ 0, strides ≥ 1 on
   every dimension of size > 1, the lowest and highest element inside the storage, no more values than
   storage elements spanned, i.e. no self-overlapping or stride-0 views) and every storage member's declared
   (uncompressed) size against the element count the pickle declares for it; the tensors of one file may
   cover their storages at most :data:`MAX_COVERAGE` times (tied weights cover them twice). A storage member
   is then streamed once, in 4 MiB chunks, up to the last byte its tensors reach; bytes no tensor reaches are
   not kept. Peak memory: the tensors read, plus their storage spans while dense views are assembled (at most
   twice the values + 64 elements per tensor), plus 24 bytes per value for sparse strided views, plus a chunk.

Every problem of the file raises :class:`CheckpointFormatError` (or :class:`UnsafeCheckpointError` for a
refused global) whose message is the reason only, without the file name; geometry errors name the tensor.
:func:`load_torch_checkpoint` does both steps for every tensor reachable from the pickle's root.

Why one module of this size: it holds one idea, reading a ``torch.save`` file safely. The unpickler, the tensor
records and the storage reader share one safety argument: the geometry the pickle declares
(``_geometry_problem``) is checked when a :class:`TensorRef` is built and again against the storage members'
sizes before :meth:`TorchCheckpoint.read` decompresses anything, and the limits (:data:`MAX_PICKLE_BYTES`,
:data:`MAX_COVERAGE`, ...) bound the two steps together. Split, each half would hold only part of the guarantee.
"""

from __future__ import annotations

import collections
import io
import lzma
import pickle
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from baryir_jax.errors import InputError

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
    # wrappers: their state_dict keys carry `module.` / `_orig_mod.`, which the converter strips
    "torch.nn.parallel.data_parallel": {"DataParallel"},
    "torch.nn.parallel.distributed": {"DistributedDataParallel"},
    "torch._dynamo.eval_frame": {"OptimizedModule"},
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

MAX_PICKLE_BYTES = 16 << 20  # data.pkl of the official 53 M-parameter whole-module checkpoint: ~0.2 MB
MAX_PICKLE_RATIO = 16  # a compressed data.pkl may expand at most this much (torch.save stores it uncompressed)
MAX_DIMS = 64
MAX_MODULE_DEPTH = 200  # BaryNet's module tree is 5 levels deep
MAX_STATE_DICT_KEYS = 1_000_000
MAX_COVERAGE = 4  # distinct tensors may hold at most 4x the bytes of the storages they view
_CHUNK = 4 << 20  # a multiple of 8: no element ever straddles two chunks
_DENSE_SLACK = 64

# What a malformed zip or pickle can raise from the reading code (zipfile, zlib, lzma, pickle, struct, numpy, ours).
MALFORMED_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    RuntimeError,  # RecursionError, NotImplementedError
    ValueError,  # UnicodeDecodeError, io.UnsupportedOperation
    TypeError,
    LookupError,  # KeyError, IndexError
    ArithmeticError,  # OverflowError, ZeroDivisionError
    AttributeError,
    MemoryError,
    BufferError,
    AssertionError,
)


class UnsafeCheckpointError(InputError, pickle.UnpicklingError):
    """The checkpoint's pickle names a global that is not on the allow-list; nothing of it was run."""


class CheckpointFormatError(InputError, ValueError):
    """The file is not a PyTorch checkpoint this reader can read; the message is the reason (no file name)."""


def describe_error(e: BaseException, limit: int = 160) -> str:
    """``Type: message`` of an exception, one line, at most `limit` characters, safe on any message."""
    try:
        msg = str(e)
    except Exception:  # noqa: BLE001 - e.g. a KeyError whose key's repr recurses
        msg = ""
    msg = " ".join(msg.split())
    if len(msg) > limit:
        msg = msg[: limit - 1] + "…"
    name = type(e).__name__
    if name == "error":  # zlib.error, struct.error
        name = f"{type(e).__module__}.{name}"
    return f"{name}: {msg}" if msg else name


def _num(v: int) -> str:
    return str(v) if -(10**30) < v < 10**30 else f"{'-' if v < 0 else ''}~2^{abs(v).bit_length()}"


def _is_int(v) -> bool:
    return type(v) is int  # not bool, not a subclass with custom arithmetic


# ---------------------------------------------------------------------------------------------------------
# What the pickle gets: inert records and stand-ins
# ---------------------------------------------------------------------------------------------------------
class ModuleStub:
    """An inert stand-in for a pickled ``nn.Module``: it only keeps the pickled attribute dict."""

    torch_class = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise CheckpointFormatError(f"unexpected pickled state for module {self.torch_class}")
        self.__dict__["_state"] = state

    def __repr__(self):
        return f"ModuleStub({self.torch_class})"

    def children(self) -> Iterator[tuple[str, Any]]:
        """(name, value) of the module's own parameters and persistent buffers (None entries left out)."""
        st = self.__dict__.get("_state", {})
        for name, value in _named_entries(st.get("_parameters"), self, "_parameters"):
            if value is not None:
                yield name, value
        non_persistent = st.get("_non_persistent_buffers_set") or ()
        if not isinstance(non_persistent, (set, frozenset, list, tuple)):
            raise CheckpointFormatError(f"module {self.torch_class}: _non_persistent_buffers_set is not a set")
        for name, value in _named_entries(st.get("_buffers"), self, "_buffers"):
            if value is not None and name not in non_persistent:
                yield name, value

    def submodules(self) -> list[tuple[str, ModuleStub]]:
        st = self.__dict__.get("_state", {})
        return [(n, c) for n, c in _named_entries(st.get("_modules"), self, "_modules") if isinstance(c, ModuleStub)]

    def state_dict(self, prefix: str = "") -> collections.OrderedDict[str, Any]:
        """The module's parameters and persistent buffers, named as ``nn.Module.state_dict`` names them.

        Walked without recursion; a cyclic tree, one deeper than :data:`MAX_MODULE_DEPTH` levels or one that
        expands to more than :data:`MAX_STATE_DICT_KEYS` entries (shared submodules are listed under each
        name, as torch does) raises :class:`CheckpointFormatError`."""
        out: collections.OrderedDict[str, Any] = collections.OrderedDict()
        # (module, prefix, depth, ancestors as a linked list of (id, parent-link))
        stack: list[tuple[ModuleStub, str, int, tuple | None]] = [(self, prefix, 0, None)]
        while stack:
            mod, pre, depth, ancestors = stack.pop()
            if depth > MAX_MODULE_DEPTH:
                raise CheckpointFormatError(
                    f"the module tree is more than {MAX_MODULE_DEPTH} levels deep (at '{pre[:80]}…')"
                )
            for name, value in mod.children():
                out[pre + name] = value
                if len(out) > MAX_STATE_DICT_KEYS:
                    raise CheckpointFormatError(
                        f"the module tree expands to more than {MAX_STATE_DICT_KEYS:,} parameters (shared submodules?)"
                    )
            link = (id(mod), ancestors)
            for name, child in reversed(mod.submodules()):
                a = link
                while a is not None:
                    if a[0] == id(child):
                        raise CheckpointFormatError(
                            f"the module tree is cyclic: '{(pre + name)[:80]}' contains one of its ancestors"
                        )
                    a = a[1]
                stack.append((child, pre + name + ".", depth + 1, link))
        return out


def _named_entries(table, module: ModuleStub, what: str) -> list[tuple[str, Any]]:
    if table is None:
        return []
    if not isinstance(table, dict):
        raise CheckpointFormatError(f"module {module.torch_class}: {what} is a {type(table).__name__}, not a dict")
    items = list(table.items())
    for name, _ in items:
        if not isinstance(name, str):
            raise CheckpointFormatError(f"module {module.torch_class}: a name in {what} is a {type(name).__name__}")
    return items


class _Storage:
    """What the pickle's persistent id of a storage becomes: its key, dtype and declared element count."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel

    def __setstate__(self, state):
        raise CheckpointFormatError("the pickle tries to modify a storage record (a BUILD on it)")

    def __repr__(self):
        return f"storage {self.key!r} ({self.numel} × {self.dtype.name})"


class TensorRef:
    """A tensor the pickle describes, not read yet. ``shape``/``dtype``/``ndim``/``size`` as NumPy's; when the
    pickle's arguments do not describe a tensor inside its storage, ``problem`` says why (see :meth:`check`)."""

    __slots__ = ("storage", "offset", "shape", "strides", "problem", "hi")

    def __init__(self, storage=None, offset=0, shape=(), strides=(), problem=None, hi=-1):
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides
        self.problem, self.hi = problem, hi

    def __setstate__(self, state):
        raise CheckpointFormatError("the pickle tries to modify a tensor (a BUILD on it)")

    def __array__(self, *args, **kwargs):
        raise TypeError("a TensorRef is read with TorchCheckpoint.read() first")

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def check(self, name: str) -> TensorRef:
        """Raise `CheckpointFormatError` naming the tensor `name` when its geometry is not valid."""
        if self.problem:
            raise CheckpointFormatError(f"tensor '{name}': {self.problem}")
        return self

    def __repr__(self):
        if self.problem:
            return f"TensorRef(invalid: {self.problem})"
        return f"TensorRef({self.shape}, {self.dtype.name}, storage {self.storage.key!r} at {self.offset})"


def _geometry_problem(storage, offset, size, stride) -> tuple[str | None, tuple, tuple, int]:
    """(problem or None, shape, strides (0 on dimensions of size <= 1), highest element index)."""
    if not isinstance(storage, _Storage):
        return f"its storage argument is of type {type(storage).__name__}, not a storage", (), (), -1
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        return "its size and stride are not tuples", (), (), -1
    if len(size) > MAX_DIMS:
        return f"{len(size)} dimensions (at most {MAX_DIMS})", (), (), -1
    if len(stride) != len(size):
        return f"{len(size)} sizes but {len(stride)} strides", (), (), -1
    if not _is_int(offset):
        return f"its storage offset is of type {type(offset).__name__}, not an integer", (), (), -1
    for d, (s, st) in enumerate(zip(size, stride)):
        if not _is_int(s) or not _is_int(st):
            return f"dimension {d}: size and stride must be integers", (), (), -1
        if s < 0:
            return f"dimension {d} has the negative size {_num(s)}", (), (), -1
        if s >= 1 << 62:
            return f"dimension {d} has the implausible size {_num(s)}", (), (), -1
    shape = tuple(size)
    strides = tuple(st if s > 1 else 0 for s, st in zip(size, stride))
    if offset < 0:
        return f"its storage offset {_num(offset)} is negative (it would read before its storage)", shape, strides, -1
    numel = 1
    for s in shape:
        numel *= s
    if numel == 0:
        if offset > storage.numel:
            return (
                f"offset {_num(offset)} is past the end of its storage ({storage.numel} elements)",
                shape,
                strides,
                -1,
            )
        return None, shape, strides, -1
    for d, (s, st) in enumerate(zip(shape, stride)):
        if s > 1 and st < 1:
            why = "a stride of 0 repeats one value" if st == 0 else "a negative stride reads before the offset"
            return (
                f"stride {_num(st)} on dimension {d} of size {s}: strides must be at least 1 ({why})",
                shape,
                strides,
                -1,
            )
    hi = offset + sum((s - 1) * st for s, st in zip(shape, strides))
    if hi >= storage.numel:
        return (
            f"shape {shape} with strides {tuple(map(_num, stride))} from offset {_num(offset)} reaches element "
            f"{_num(hi)}, past the end of its storage of {storage.numel} elements",
            shape,
            strides,
            -1,
        )
    if numel > hi - offset + 1:
        return (
            f"it overlaps itself: {_num(numel)} values from {hi - offset + 1} storage elements (shape {shape}, "
            f"strides {tuple(stride)})",
            shape,
            strides,
            -1,
        )
    return None, shape, strides, hi


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    problem, shape, strides, hi = _geometry_problem(storage, storage_offset, size, stride)
    if problem:
        return TensorRef(problem=problem)
    return TensorRef(storage, storage_offset, shape, strides, None, hi)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, TensorRef):
        return TensorRef(problem=f"a Parameter wrapping an object of type {type(data).__name__} instead of a tensor")
    return data


def _torch_size(*args):
    if len(args) > 1:
        raise CheckpointFormatError("torch.Size called with more than one argument")
    if not args:
        return ()
    sizes = args[0]
    if not isinstance(sizes, (tuple, list)) or len(sizes) > MAX_DIMS:
        raise CheckpointFormatError("torch.Size called with something other than a short tuple")
    return tuple(sizes)


def _ordered_dict(*args):
    if len(args) > 1:
        raise CheckpointFormatError("OrderedDict called with more than one argument")
    if args and not isinstance(args[0], (list, tuple, dict)):
        raise CheckpointFormatError(f"OrderedDict called with an object of type {type(args[0]).__name__}")
    return collections.OrderedDict(*args)


def _set(*args):
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple))):
        raise CheckpointFormatError("set called with something other than a list")
    return set(*args)


_ALLOWED_CALLABLES = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("__builtin__", "set"): _set,
    ("builtins", "set"): _set,
    ("torch", "Size"): _torch_size,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Global:
    """The stand-in a pickle gets for an allowed callable: calling it calls ours; a BUILD on it is refused, so
    the pickle cannot set attributes (``__defaults__``, ``__dict__`` …) of anything outside its own objects."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn, name: str):
        self._fn, self._name = fn, name

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise CheckpointFormatError(f"{self._name} called with keyword arguments")
        return self._fn(*args)

    def __setstate__(self, state):
        raise CheckpointFormatError(f"the pickle tries to modify the global {self._name} (a BUILD on it); refused")

    def __repr__(self):
        return f"<allowed global {self._name}>"


class _StorageType:
    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])

    def __setstate__(self, state):
        raise CheckpointFormatError(f"the pickle tries to modify torch.{self.name} (a BUILD on it); refused")


class SafeTorchUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip checkpoint with an allow-list of globals (see module docstring).
    Storages become :class:`_Storage` records and tensors :class:`TensorRef` records: nothing is read."""

    def __init__(self, file):
        super().__init__(file)
        self._storages: dict[str, _Storage] = {}
        self._classes: dict[str, type] = {}  # stub classes of this load only

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_CALLABLES:
            return _Global(_ALLOWED_CALLABLES[(module, name)], f"{module}.{name}")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module in _STUB_MODULES or name in _TORCH_MODULE_CLASSES.get(module, ()):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (ModuleStub,), {"torch_class": qualified})
            return self._classes[qualified]
        raise UnsafeCheckpointError(
            f"refusing to load the global '{module}.{name}' named in the checkpoint: only the globals needed to "
            "rebuild tensors and module trees are allowed, so this file was not loaded and nothing in it was run. "
            "If it is a genuine PyTorch checkpoint, re-save its state_dict() with torch.save and convert that."
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) != 5 or not isinstance(pid[0], str) or pid[0] != "storage":
            raise CheckpointFormatError("a persistent id in the pickle is not a torch storage record")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(
                f"a storage's type is of type {type(storage_type).__name__}, not a storage type"
            )
        if not isinstance(key, str) or not key or len(key) > 256:
            raise CheckpointFormatError("a storage key is not a short string")
        if not _is_int(numel) or numel < 0 or numel >= 1 << 62:
            raise CheckpointFormatError(f"storage {key!r}: its element count is not an integer in [0, 2^62)")
        nbytes = numel * storage_type.dtype.itemsize
        seen = self._storages.get(key)
        if seen is not None and seen.numel * seen.dtype.itemsize != nbytes:
            raise CheckpointFormatError(f"storage {key!r} is declared twice with different sizes")
        storage = _Storage(key, storage_type.dtype, numel)
        self._storages.setdefault(key, storage)
        return storage


# ---------------------------------------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------------------------------------
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class TorchCheckpoint:
    """An opened checkpoint: ``root`` is the unpickled object (tensors as :class:`TensorRef`); :meth:`read`
    reads tensors. Use as a context manager (it holds the archive open)."""

    def __init__(self, path: str):
        self.path = path
        self._file = None
        self._zip: zipfile.ZipFile | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._zip is not None:
            self._zip.close()
        if self._file is not None:
            self._file.close()
        self._zip = self._file = None

    # ---- opening: the zip directory and data.pkl ----
    def _open(self):
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            head = self._file.read(len(_LEGACY_MAGIC))
            self._file.seek(0, io.SEEK_END)
            self._size = self._file.tell()
            self._file.seek(0)
        except OSError as e:
            raise CheckpointFormatError(f"cannot read it ({e.strerror or describe_error(e)})") from None
        if self._size == 0:
            raise CheckpointFormatError("the file is empty (0 bytes)")
        try:
            self._zip = zipfile.ZipFile(self._file)
        except zipfile.BadZipFile:
            if head == _LEGACY_MAGIC:
                raise CheckpointFormatError(
                    "it is in the legacy torch.save format (PyTorch before 1.6), which this reader does not read; "
                    "load it with torch.load and save it again with a recent PyTorch"
                ) from None
            raise CheckpointFormatError(
                "it is not a zip archive, as torch.save has written since PyTorch 1.6 (an incomplete download, "
                "or another format?)"
            ) from None
        except OSError as e:
            raise CheckpointFormatError(f"cannot read it ({e.strerror or describe_error(e)})") from None
        except MALFORMED_ERRORS as e:
            raise CheckpointFormatError(f"its zip directory is corrupt ({describe_error(e)})") from None
        names = self._zip.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise CheckpointFormatError(f"the archive holds {len(pkl)} data.pkl records, not 1")
        self._root = pkl[0][: -len("data.pkl")]
        byteorder = self._root + "byteorder"
        if byteorder in names:
            order = self._read_small(byteorder, 16).strip()
            if order == b"big":
                raise CheckpointFormatError("it is a big-endian checkpoint, which this reader does not read")
            if order != b"little":
                raise CheckpointFormatError("its byteorder record is neither 'little' nor 'big'")
        info = self._zip.getinfo(pkl[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointFormatError(
                f"its data.pkl declares {info.file_size:,} bytes, more than the {MAX_PICKLE_BYTES >> 20} MiB this "
                "reader accepts (a BaryIR checkpoint's is a few hundred KB)"
            )
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_PICKLE_RATIO * info.compress_size + 4096:
            raise CheckpointFormatError(
                f"its data.pkl expands from {info.compress_size:,} to {info.file_size:,} bytes, more than "
                f"{MAX_PICKLE_RATIO}:1 (torch.save does not compress it)"
            )
        data = self._read_small(pkl[0], MAX_PICKLE_BYTES)
        try:
            self.root = SafeTorchUnpickler(io.BytesIO(data)).load()
        except (UnsafeCheckpointError, CheckpointFormatError):
            raise
        except (pickle.UnpicklingError, EOFError) as e:
            what = "truncated" if isinstance(e, EOFError) or "truncated" in str(e) else "not a valid pickle"
            raise CheckpointFormatError(f"its data.pkl is {what} ({describe_error(e)})") from None
        except RecursionError:
            raise CheckpointFormatError("its data.pkl nests objects too deeply") from None
        except MemoryError:
            raise CheckpointFormatError("its data.pkl needs more memory than is available") from None
        except MALFORMED_ERRORS as e:
            raise CheckpointFormatError(f"its data.pkl is malformed ({describe_error(e)})") from None

    def _member(self, name: str) -> zipfile.ZipInfo:
        info = self._zip.getinfo(name)
        end = info.header_offset + 30 + len(info.filename) + info.compress_size
        if end > self._size:
            raise CheckpointFormatError(f"archive member '{name}' is cut off: the file is truncated")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CheckpointFormatError(f"archive member '{name}' is stored with inconsistent sizes")
        return info

    def _read_small(self, name: str, limit: int) -> bytes:
        try:
            info = self._member(name)
            if info.file_size > limit:
                raise CheckpointFormatError(f"archive member '{name}' declares {info.file_size:,} bytes (> {limit})")
            with self._zip.open(info) as f:
                data = f.read(limit + 1)
        except CheckpointFormatError:
            raise
        except (OSError, *MALFORMED_ERRORS) as e:
            raise _member_error(e, name) from None
        if len(data) != info.file_size:
            raise CheckpointFormatError(f"archive member '{name}' is shorter than its declared size")
        return data

    # ---- tensors ----
    def read(self, tensors: Mapping[str, TensorRef]) -> dict[str, np.ndarray]:
        """{name: TensorRef} → {name: ndarray}, reading only the storages these tensors reference. Identical
        views (same storage, dtype, offset, shape, strides) give the same array. Raises
        `CheckpointFormatError` naming the tensor for an invalid geometry, or the member for a bad storage."""
        distinct: dict[tuple, tuple[str, TensorRef]] = {}
        name_of: dict[str, tuple] = {}
        for name, ref in tensors.items():
            if not isinstance(ref, TensorRef):
                raise TypeError(f"{name}: not a TensorRef")
            ref.check(name)
            ident = (ref.storage.key, ref.dtype.str, ref.offset, ref.shape, ref.strides)
            distinct.setdefault(ident, (name, ref))
            name_of[name] = ident
        by_storage: dict[str, list[tuple[tuple, str, TensorRef]]] = collections.defaultdict(list)
        for ident, (name, ref) in distinct.items():
            by_storage[ref.storage.key].append((ident, name, ref))
        infos, storage_bytes = {}, 0
        for key, group in by_storage.items():
            name, ref = group[0][1], group[0][2]
            member = f"{self._root}data/{key}"
            nbytes = ref.storage.numel * ref.dtype.itemsize
            try:
                info = self._member(member)
            except KeyError:
                raise CheckpointFormatError(
                    f"storage {key!r} of tensor '{name}' is missing from the archive (an incomplete download?)"
                ) from None
            if info.file_size != nbytes:
                raise CheckpointFormatError(
                    f"archive member '{member}' (storage of tensor '{name}') declares {info.file_size:,} bytes, but "
                    f"the pickle declares {ref.storage.numel:,} {ref.dtype.name} elements ({nbytes:,} bytes)"
                )
            infos[key] = info
            storage_bytes += nbytes
        tensor_bytes = sum(ref.nbytes for _, ref in distinct.values())
        if tensor_bytes > MAX_COVERAGE * storage_bytes + (1 << 20):
            raise CheckpointFormatError(
                f"its tensors hold {tensor_bytes:,} bytes but view only {storage_bytes:,} bytes of storage: they "
                f"overlap more than {MAX_COVERAGE} times (a crafted file?)"
            )
        arrays: dict[tuple, np.ndarray] = {}
        for key, group in by_storage.items():
            try:
                arrays.update(self._read_storage(infos[key], group))
            except CheckpointFormatError:
                raise
            except MemoryError:
                raise CheckpointFormatError(f"not enough memory to read storage {key!r}") from None
            except (OSError, *MALFORMED_ERRORS) as e:
                raise _member_error(e, infos[key].filename) from None
        return {name: arrays[ident] for name, ident in name_of.items()}

    def _read_storage(self, info: zipfile.ZipInfo, group) -> dict[tuple, np.ndarray]:
        """Stream one storage member once, forward, in chunks; fill every tensor of `group` from it."""
        jobs = sorted((_Job(ident, ref) for ident, _, ref in group if ref.size), key=lambda j: j.lo)
        out = {ident: np.zeros(ref.shape, ref.dtype) for ident, _, ref in group if not ref.size}
        if not jobs:
            return out
        end = max(j.hi for j in jobs)
        with self._zip.open(info) as f:
            pos = _skip(f, 0, jobs[0].lo - jobs[0].lo % 8, info.filename)
            nxt, active = 0, []
            while pos < end:
                chunk = _read_exact(f, min(_CHUNK, end - pos), info.filename)
                a, b = pos, pos + len(chunk)
                while nxt < len(jobs) and jobs[nxt].lo < b:
                    active.append(jobs[nxt])
                    nxt += 1
                raw = np.frombuffer(chunk, np.uint8)
                for job in active:
                    job.feed(raw, a, b)
                for job in active:
                    if job.hi <= b:
                        out[job.ident] = job.result()
                active = [j for j in active if j.hi > b]
                pos = b
                if not active and nxt < len(jobs) and jobs[nxt].lo - jobs[nxt].lo % 8 > pos:
                    pos = _skip(f, pos, jobs[nxt].lo - jobs[nxt].lo % 8, info.filename)
        return out


def _member_error(e: BaseException, member: str) -> CheckpointFormatError:
    if isinstance(e, OSError) and e.errno is not None:  # the file system, not the data (bz2 data errors have none)
        return CheckpointFormatError(f"cannot read it ({e.strerror or describe_error(e)})")
    return CheckpointFormatError(f"archive member '{member}' is corrupt ({describe_error(e)})")


class _Job:
    """One tensor being filled from its storage's byte stream (byte range [lo, hi))."""

    def __init__(self, ident, ref: TensorRef):
        self.ident, self.ref = ident, ref
        isz = ref.dtype.itemsize
        self.isz = isz
        self.lo, self.hi = ref.offset * isz, (ref.hi + 1) * isz
        span = ref.hi - ref.offset + 1
        self.dense = span <= 2 * ref.size + _DENSE_SLACK
        if self.dense:
            self.buf = np.empty(self.hi - self.lo, np.uint8)
        else:  # sparse strided view: gather its values by sorted element index
            idx = np.full(1, ref.offset, np.int64)
            for s, st in zip(ref.shape, ref.strides):
                idx = (idx[:, None] + np.arange(s, dtype=np.int64) * st).reshape(-1)
            self.order = np.argsort(idx, kind="stable")
            self.sorted = idx[self.order]
            del idx
            self.values = np.empty(ref.size, _raw_dtype(ref.dtype))

    def feed(self, raw: np.ndarray, a: int, b: int) -> None:
        if self.dense:
            lo, hi = max(a, self.lo), min(b, self.hi)
            if hi > lo:
                self.buf[lo - self.lo : hi - self.lo] = raw[lo - a : hi - a]
            return
        first = a // self.isz  # a is a multiple of 8, so of the item size
        j0, j1 = np.searchsorted(self.sorted, [first, b // self.isz])
        if j1 > j0:
            view = raw[: len(raw) - len(raw) % self.isz].view(_raw_dtype(self.ref.dtype))
            self.values[self.order[j0:j1]] = view[self.sorted[j0:j1] - first]

    def result(self) -> np.ndarray:
        ref, dt = self.ref, _raw_dtype(self.ref.dtype)
        if self.dense:
            flat = self.buf.view(dt)
            view = np.lib.stride_tricks.as_strided(flat, shape=ref.shape, strides=[st * self.isz for st in ref.strides])
            arr = view.reshape(ref.shape) if view.flags.c_contiguous and flat.size == ref.size else np.array(view)
            del self.buf
        else:
            arr = self.values.reshape(ref.shape)
            del self.values, self.sorted, self.order
        return arr != 0 if ref.dtype == np.bool_ else arr


def _raw_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.uint8) if dtype == np.bool_ else dtype


def _read_exact(f, n: int, member: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointFormatError(f"archive member '{member}' ends before its declared size")
    return data


def _skip(f, pos: int, to: int, member: str) -> int:
    while pos < to:
        pos += len(_read_exact(f, min(_CHUNK, to - pos), member))
    return pos


# ---------------------------------------------------------------------------------------------------------
# Walking the unpickled object
# ---------------------------------------------------------------------------------------------------------
def _label(key) -> str:
    if isinstance(key, str):
        return key[:200]
    if _is_int(key):
        return _num(key)
    return f"<{type(key).__name__}>"


def _children(obj) -> list[tuple[Any, Any]]:
    if isinstance(obj, ModuleStub):
        st = obj.__dict__.get("_state", {})
        return list(st.items())
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    return []


def find_tensors(root) -> dict[str, TensorRef]:
    """Every :class:`TensorRef` reachable from `root` (through dicts, lists, tuples and module records), named by
    its path (``BaryIR._modules.patch_embed…``), each container visited once, without recursion."""
    found: dict[str, TensorRef] = {}
    seen: set[int] = set()
    stack: list[tuple[Any, tuple | None]] = [(root, None)]  # (object, path as a linked list (label, parent))
    while stack:
        obj, path = stack.pop()
        if isinstance(obj, TensorRef):
            name = _path_str(path)
            while name in found:
                name += "'"
            found[name] = obj
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        module = isinstance(obj, ModuleStub)
        for k, v in reversed(_children(obj)):
            if isinstance(v, (TensorRef, ModuleStub, dict, list, tuple)):
                # a module's _parameters/_buffers/_modules tables add no name: paths read like state_dict keys
                label = None if module and k in _MODULE_TABLES else _label(k)
                stack.append((v, (label, path)))
    return found


_MODULE_TABLES = ("_parameters", "_buffers", "_modules")


def _path_str(path: tuple | None, keep: int = 12) -> str:
    parts = []
    while path is not None:
        if path[0] is not None:
            parts.append(path[0])
        path = path[1]
    if len(parts) > keep:
        parts = parts[:keep] + ["…"]
    return ".".join(reversed(parts)) or "<root>"


def _substitute(root, arrays: dict[int, np.ndarray]):
    """`root` with every TensorRef replaced by its array (dicts, lists and module records in place; tuples that
    hold tensors are rebuilt), without recursion."""

    def resolve(v, tuples):
        if isinstance(v, TensorRef):
            return arrays.get(id(v), v)
        if isinstance(v, tuple):
            return tuples.get(id(v), v)
        return v

    tuples: dict[int, tuple] = {}
    mutable: list = []
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        obj, done = stack.pop()
        if done:
            new = tuple(resolve(v, tuples) for v in obj)
            tuples[id(obj)] = new if any(a is not b for a, b in zip(new, obj)) else obj
            continue
        if id(obj) in seen or not isinstance(obj, (ModuleStub, dict, list, tuple)):
            continue
        seen.add(id(obj))
        if isinstance(obj, tuple):
            stack.append((obj, True))
        else:
            mutable.append(obj)
        for _, v in _children(obj):
            if isinstance(v, (ModuleStub, dict, list, tuple)):
                stack.append((v, False))
    for obj in mutable:
        table = obj.__dict__.get("_state", {}) if isinstance(obj, ModuleStub) else obj
        for k, v in _children(obj):
            new = resolve(v, tuples)
            if new is not v:
                table[k] = new
    return resolve(root, tuples) if isinstance(root, (TensorRef, tuple)) else root


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------
def open_torch_checkpoint(path: str) -> TorchCheckpoint:
    """Open a ``torch.save`` zip file and unpickle its ``data.pkl`` safely (tensors not read yet). Raises
    `CheckpointFormatError` or `UnsafeCheckpointError`."""
    return TorchCheckpoint(path)


def load_torch_checkpoint(path: str) -> Any:
    """Load a ``torch.save`` zip file into plain Python: dicts, NumPy arrays and :class:`ModuleStub` trees.
    Raises `CheckpointFormatError` (the reason, without the path) or `UnsafeCheckpointError`."""
    with open_torch_checkpoint(path) as ckpt:
        refs = find_tensors(ckpt.root)
        arrays = ckpt.read(refs)
        by_id = {id(ref): arrays[name] for name, ref in refs.items()}
        return _substitute(ckpt.root, by_id)
