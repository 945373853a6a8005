"""Hand-written torch.save-style files for the converter tests: a tiny pickle assembler (protocol 2 opcodes) and
a zip writer, so hostile checkpoints can be built exactly, without PyTorch.

The node types below stand for what a pickle can express: ``G`` a global (GLOBAL opcode), ``Call`` a REDUCE,
``Pid`` a persistent id (BINPERSID), ``Build`` a BUILD, ``Raw`` opcode bytes spliced in as they are; str,
bytes, int, float, bool, None, tuple, list and dict are written with their usual opcodes."""

from __future__ import annotations

import dataclasses
import struct
import zipfile
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class G:
    module: str
    name: str


@dataclasses.dataclass(frozen=True)
class Call:
    fn: Any
    args: tuple


@dataclasses.dataclass(frozen=True)
class Pid:
    pid: Any


@dataclasses.dataclass(frozen=True)
class Build:
    obj: Any
    state: Any


@dataclasses.dataclass(frozen=True)
class Raw:
    data: bytes


def _long(v: int) -> bytes:
    n = (v.bit_length() + 8) // 8 or 1
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def emit(x) -> bytes:
    """Opcodes that push `x` on the unpickler's stack."""
    if isinstance(x, Raw):
        return x.data
    if isinstance(x, G):
        return b"c" + f"{x.module}\n{x.name}\n".encode()
    if isinstance(x, Call):
        return emit(x.fn) + emit(tuple(x.args)) + b"R"
    if isinstance(x, Pid):
        return emit(x.pid) + b"Q"
    if isinstance(x, Build):
        return emit(x.obj) + emit(x.state) + b"b"
    if x is None:
        return b"N"
    if x is True or x is False:
        return b"\x88" if x else b"\x89"
    if isinstance(x, int):
        return b"J" + struct.pack("<i", x) if -(2**31) <= x < 2**31 else _long(x)
    if isinstance(x, float):
        return b"G" + struct.pack(">d", x)
    if isinstance(x, str):
        e = x.encode()
        return b"X" + struct.pack("<I", len(e)) + e
    if isinstance(x, bytes):
        return b"C" + bytes([len(x)]) + x if len(x) < 256 else b"B" + struct.pack("<I", len(x)) + x
    if isinstance(x, tuple):
        return b"(" + b"".join(emit(v) for v in x) + b"t"
    if isinstance(x, list):
        return b"](" + b"".join(emit(v) for v in x) + b"e"
    if isinstance(x, dict):
        return b"}(" + b"".join(emit(k) + emit(v) for k, v in x.items()) + b"u"
    raise TypeError(type(x))


def pickle_bytes(x) -> bytes:
    return b"\x80\x02" + emit(x) + b"."


STORAGE = {"float32": "FloatStorage", "float64": "DoubleStorage", "int64": "LongStorage", "uint8": "ByteStorage"}


def storage(key: str, numel: int, dtype: str = "float32") -> Pid:
    return Pid(("storage", G("torch", STORAGE[dtype]), key, "cpu", numel))


def tensor(key: str, numel: int, offset, size, stride, dtype: str = "float32") -> Call:
    """What torch.save writes for a tensor: _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    return Call(
        G("torch._utils", "_rebuild_tensor_v2"),
        (
            storage(key, numel, dtype),
            offset,
            tuple(size),
            tuple(stride),
            False,
            Call(G("collections", "OrderedDict"), ()),
        ),
    )


def write_checkpoint(
    path, payload: bytes, members: dict[str, bytes] | None = None, *, root="archive", compress=None, byteorder="little"
) -> str:
    """A zip laid out as torch.save's: root/data.pkl, root/byteorder, root/data/<key> (STORED unless `compress`
    names members to deflate), members written in the given order."""
    members = members or {}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/data.pkl", payload)
        zf.writestr(f"{root}/byteorder", byteorder)
        for name, data in members.items():
            ctype = zipfile.ZIP_DEFLATED if compress and name in compress else zipfile.ZIP_STORED
            zf.writestr(f"{root}/{name}", data, compress_type=ctype)
        zf.writestr(f"{root}/version", "3\n")
    return str(path)


def state_dict_checkpoint(path, sd: dict[str, np.ndarray], wrap=None) -> str:
    """A torch.save(state_dict)-style file of contiguous arrays, one storage each (`wrap`: the root object is
    `wrap(tensors)` instead of the dict itself, e.g. ``lambda t: {"state_dict": t}``)."""
    tensors, members = {}, {}
    for i, (k, v) in enumerate(sd.items()):
        v = np.ascontiguousarray(v)
        strides = tuple(s // v.itemsize for s in v.strides) if v.ndim else ()
        tensors[k] = tensor(str(i), v.size, 0, v.shape, strides, v.dtype.name)
        members[f"data/{i}"] = v.tobytes()
    root = wrap(tensors) if wrap else tensors
    return write_checkpoint(path, pickle_bytes(root), members)
