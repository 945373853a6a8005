"""The converter on hostile and broken files, all written by hand (tests/torch_files.py, no PyTorch needed):
tensor geometry reaching outside its storage (canary values around it), memory amplification (peak RSS measured
in a subprocess), every kind of malformed zip/pickle (one line, exit 1), BUILD on allowed globals, wrapper
prefixes, argument checks before any work, mis-shaped keys and NaN/inf weights.

Cost: about 70 s on a shared 2-core machine (writing three 256 MiB deflated members and reading them in a
subprocess takes ~16 s; the tiny BaryNet conversions a few seconds each)."""

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch_files as T
from flax import traverse_util

from baryir_jax.convert import cli
from baryir_jax.convert.official import UNUSED_PREFIXES, ConversionError, torch_to_flax
from baryir_jax.convert.torch_pickle import CheckpointFormatError, load_torch_checkpoint
from baryir_jax.evaluate.checkpoint import numpy_init
from baryir_jax.models import BaryNet

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "parity_official.npz")
TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
CANARY = -7777.0
N = 256  # elements of the storage under test; its values are 1000 + i


def _run(code: str, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------------------------------------------
# 1. Geometry: nothing outside the storage is ever read
# ---------------------------------------------------------------------------------------------------------
HOSTILE_GEOMETRIES = {  # name: (offset, size, stride)
    "negative offset": (-1, (4,), (1,)),
    "offset past the end": (N, (1,), (1,)),
    "scalar past the end": (N, (), ()),
    "last element + 1": (N - 1, (2,), (1,)),
    "negative stride": (N - 1, (4,), (-1,)),
    "negative stride 2-D": (100, (4, 4), (-4, 1)),
    "zero stride": (0, (1 << 28,), (0,)),
    "zero stride in 2-D": (0, (4, 4), (4, 0)),
    "huge stride": (0, (2,), (1 << 40,)),
    "huge size": (0, (1 << 62,), (1,)),
    "size overflowing int64": (0, (1 << 70,), (1,)),
    "negative size": (0, (-1,), (1,)),
    "self-overlap": (0, (16, 16), (1, 1)),
    "stride reaching past": (0, (2, 2), (N - 1, 1)),
    "float size": (0, (4.0,), (1,)),
    "bool stride": (0, (4,), (True,)),
    "string offset": ("0", (4,), (1,)),
    "fewer strides": (0, (4, 4), (1,)),
    "not tuples": (0, 4, 1),
    "65 dimensions": (0, (1,) * 65, (1,) * 65),
}
VALID_GEOMETRIES = {  # must read exactly storage[offset + Σ i_d·stride_d]
    "contiguous": (0, (16, 16), (16, 1)),
    "transposed": (0, (16, 16), (1, 16)),
    "last element": (N - 1, (1,), (1,)),
    "scalar at the end": (N - 1, (), ()),
    "size-1 dims with any stride": (7, (1, 3, 1), (-99, 5, 1 << 70)),
    "sparse strided view": (3, (3, 2), (80, 7)),
    "column slice": (2, (16, 3), (16, 1)),
    "empty": (N, (0, 4), (4, 1)),
}


def _geometry_file(path, offset, size, stride):
    canary = np.full(N, CANARY, np.float32).tobytes()
    data = (1000 + np.arange(N, dtype=np.float32)).tobytes()
    root = {
        "ok": T.tensor("1", N, 0, (4,), (1,)),
        "w": T.Call(
            T.G("torch._utils", "_rebuild_tensor_v2"),
            (T.storage("1", N), offset, size, stride, False, T.Call(T.G("collections", "OrderedDict"), ())),
        ),
    }
    # canary storages before and after the one under test, unreferenced
    return T.write_checkpoint(path, T.pickle_bytes(root), {"data/0": canary, "data/1": data, "data/2": canary})


_LOAD_ALL = """
    import json, sys
    import numpy as np
    from baryir_jax.convert.torch_pickle import load_torch_checkpoint
    for path in sys.argv[1:]:
        try:
            w = load_torch_checkpoint(path)["w"]
            out = {"loaded": np.asarray(w, np.float64).tolist(), "shape": list(np.shape(w))}
        except Exception as e:
            out = {"error": type(e).__name__, "msg": str(e)}
        print(json.dumps(out), flush=True)
"""


def _expected(offset, size, stride):
    storage = 1000 + np.arange(N, dtype=np.float64)
    out = np.zeros(size)
    for idx in np.ndindex(*size):
        out[idx] = storage[offset + sum(i * s for i, s in zip(idx, stride))]
    return out


def test_tensor_geometry_never_reads_outside_its_storage(tmp_path):
    cases = {**HOSTILE_GEOMETRIES, **VALID_GEOMETRIES}
    files = [_geometry_file(tmp_path / f"g{i}.pth", *g) for i, g in enumerate(cases.values())]
    r = _run(_LOAD_ALL, *files)  # a subprocess: a read outside a buffer may crash the process
    assert r.returncode == 0, f"the reader crashed (status {r.returncode}): {r.stderr[-2000:]}"
    results = dict(zip(cases, map(json.loads, r.stdout.splitlines())))
    assert len(results) == len(cases), r.stderr[-2000:]
    for name in HOSTILE_GEOMETRIES:
        res = results[name]
        assert res.get("error") == "CheckpointFormatError", (name, res)
        assert "tensor 'w'" in res["msg"], (name, res["msg"])
    for name, (offset, size, stride) in VALID_GEOMETRIES.items():
        res = results[name]
        assert "loaded" in res, (name, res)
        got = np.asarray(res["loaded"]).reshape(res["shape"])
        assert got.shape == tuple(size)
        np.testing.assert_array_equal(got, _expected(offset, size, stride), err_msg=name)
        assert CANARY not in got


# ---------------------------------------------------------------------------------------------------------
# 2. Memory amplification: peak RSS of reading each file, in a subprocess
# ---------------------------------------------------------------------------------------------------------
_PEAK = """
    import json, sys
    from baryir_jax.convert.torch_pickle import load_torch_checkpoint

    def hwm_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1])

    for path in sys.argv[1:]:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the current resident size
        base = hwm_kib()
        try:
            load_torch_checkpoint(path)
            status = "loaded"
        except Exception as e:
            status = type(e).__name__ + ": " + str(e)
        print(json.dumps({"grew_mib": (hwm_kib() - base) / 1024, "status": status}), flush=True)
"""
BIG = 256 << 20  # bytes of zeros in each bomb member (1.5 GiB in the issue; the bound below is independent of it)
BOUND_MIB = 48  # peak RSS growth allowed while reading any of these files


def _deflated_zeros(zf, name, nbytes):
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    chunk = bytes(1 << 20)
    with zf.open(info, "w", force_zip64=True) as f:
        for _ in range(nbytes >> 20):
            f.write(chunk)


def _bomb(path, root, members_small, bomb_key, bomb_bytes, pkl=None):
    with zipfile.ZipFile(path, "w", compresslevel=1) as zf:
        zf.writestr("archive/data.pkl", pkl if pkl is not None else T.pickle_bytes(root))
        zf.writestr("archive/byteorder", "little")
        for name, data in members_small.items():
            zf.writestr(f"archive/{name}", data)
        if bomb_key:
            _deflated_zeros(zf, f"archive/data/{bomb_key}", bomb_bytes)
    return str(path)


def _amplification_files(tmp_path):
    small = (np.arange(16, dtype=np.float32)).tobytes()
    files = {}
    # a 16-element storage viewed with stride 0 as 2^27 values (512 MiB)
    files["zero stride"] = T.write_checkpoint(
        tmp_path / "a.pth", T.pickle_bytes({"w": T.tensor("0", 16, 0, (1 << 27,), (0,))}), {"data/0": small}
    )
    # a bomb member that no tensor references
    files["unreferenced bomb"] = _bomb(
        tmp_path / "b.pth", {"w": T.tensor("0", 16, 0, (16,), (1,))}, {"data/0": small}, "9", BIG
    )
    # a referenced member whose declared size disagrees with the pickle's 16 elements
    files["member larger than declared"] = _bomb(
        tmp_path / "c.pth", {"w": T.tensor("9", 16, 0, (16,), (1,))}, {}, "9", BIG
    )
    # one value at the end of a huge (deflated) storage
    files["one value at the end of a bomb"] = _bomb(
        tmp_path / "d.pth", {"w": T.tensor("9", BIG // 4, BIG // 4 - 1, (1,), (1,))}, {}, "9", BIG
    )
    # 64 distinct overlapping views of one 4 MiB storage (256 MiB of copies)
    n4 = (4 << 20) // 4
    views = {f"w{i}": T.tensor("0", n4, i, (n4 - 64,), (1,)) for i in range(64)}
    files["overlapping views"] = T.write_checkpoint(
        tmp_path / "e.pth", T.pickle_bytes(views), {"data/0": bytes(4 << 20)}
    )
    # a data.pkl that inflates 1000:1 (a flood of empty lists)
    flood = b"\x80\x02" + b"]" * (8 << 20) + b"."
    with zipfile.ZipFile(tmp_path / "f.pth", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", flood)
    files["data.pkl bomb"] = str(tmp_path / "f.pth")
    return files


def test_memory_stays_bounded_on_amplification_files(tmp_path):
    files = _amplification_files(tmp_path)
    r = _run(_PEAK, *files.values())
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and len(results) == len(files), r.stderr[-2000:]
    for (name, path), res in zip(files.items(), results):
        print(f"{name}: file {os.path.getsize(path):,} bytes, peak RSS grew {res['grew_mib']:.1f} MiB: {res['status']}")
        assert res["grew_mib"] < BOUND_MIB, (name, res)
        if name in ("unreferenced bomb", "one value at the end of a bomb"):
            assert res["status"] == "loaded", res  # genuine (if odd) files: read, in bounded memory
        else:
            assert res["status"].startswith("CheckpointFormatError"), (name, res)
        assert os.path.getsize(path) < 2 << 20 or name == "overlapping views", name


def test_only_referenced_storages_are_read_and_values_are_exact(tmp_path):
    values = np.arange(16, dtype=np.float32)
    path = _bomb(
        tmp_path / "x.pth",
        {"w": T.tensor("0", 16, 0, (4, 4), (4, 1)), "t": T.tensor("0", 16, 0, (4, 4), (1, 4))},
        {"data/0": values.tobytes()},
        "9",
        16 << 20,
    )
    sd = load_torch_checkpoint(path)
    np.testing.assert_array_equal(sd["w"], values.reshape(4, 4))
    np.testing.assert_array_equal(sd["t"], values.reshape(4, 4).T)
    # the unreferenced member is never even opened: corrupting it changes nothing
    raw = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("archive/data/9")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    raw[start : start + 64] = b"\xff" * 64
    open(path, "wb").write(bytes(raw))
    np.testing.assert_array_equal(load_torch_checkpoint(path)["w"], values.reshape(4, 4))


# ---------------------------------------------------------------------------------------------------------
# 3. Malformed files: one line "FILE is not a readable PyTorch checkpoint: REASON", exit 1
# ---------------------------------------------------------------------------------------------------------
def _valid_payload():
    return T.pickle_bytes({"w": T.tensor("0", 4, 0, (4,), (1,))})


def _valid_members():
    return {"data/0": np.ones(4, np.float32).tobytes()}


def _module(cls, state):
    """NEWOBJ of a model_bary class followed by BUILD(state)."""
    return T.Raw(T.emit(T.G("model_bary", cls)) + b")\x81" + T.emit(state) + b"b")


def _cyclic_module():
    # m = BaryNet(); memo[1] = m; m.__setstate__({"_modules": {"self": m}})
    head = T.emit(T.G("model_bary", "BaryNet")) + b")\x81q\x01"
    state = b"}(" + T.emit("_modules") + b"}(" + T.emit("self") + b"h\x01uu"
    return T.Raw(head + state + b"b")


def _deep_modules(depth):
    inner = _module("Leaf", {"_parameters": {"weight": T.tensor("0", 4, 0, (4,), (1,))}})
    for _ in range(depth):
        inner = _module("Block", {"_modules": {"c": inner}})
    return inner


def _zip_with(tmp, name, payload=None, members=None, **kw):
    return T.write_checkpoint(tmp / name, _valid_payload() if payload is None else payload, members, **kw)


def _corrupt(path, member, offset_in_data, n=4):
    raw = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    with open(path, "rb") as f:  # the local header's own extra length
        f.seek(info.header_offset + 28)
        extra = struct.unpack("<H", f.read(2))[0]
    start = info.header_offset + 30 + len(info.filename) + extra + offset_in_data
    raw[start : start + n] = bytes(b ^ 0x5A for b in raw[start : start + n])
    open(path, "wb").write(bytes(raw))
    return str(path)


def _malformed_files(tmp):  # name: (path, words the reason must contain)
    f = {}

    def raw(name, data):
        (tmp / name).write_bytes(data)
        return str(tmp / name)

    f["empty file"] = (raw("empty.pth", b""), "empty")
    f["garbage"] = (raw("garbage.pth", np.random.default_rng(0).bytes(4000)), "not a zip archive")
    legacy = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    f["legacy format"] = (raw("legacy.pth", legacy), "legacy")
    with zipfile.ZipFile(tmp / "nopkl.pth", "w") as zf:
        zf.writestr("archive/version", "3")
    f["zip without data.pkl"] = (str(tmp / "nopkl.pth"), "data.pkl")
    with zipfile.ZipFile(tmp / "twopkl.pth", "w") as zf:
        zf.writestr("a/data.pkl", _valid_payload())
        zf.writestr("b/data.pkl", _valid_payload())
    f["two data.pkl"] = (str(tmp / "twopkl.pth"), "data.pkl")
    good = _zip_with(tmp, "good.pth", members=_valid_members())
    data = open(good, "rb").read()
    f["truncated zip"] = (raw("cut.pth", data[: len(data) * 2 // 3]), "zip")
    f["truncated pickle"] = (_zip_with(tmp, "tp.pth", _valid_payload()[:-12], _valid_members()), "truncated")
    junk = b"\x80\x02" + np.random.default_rng(1).bytes(300)
    f["garbage pickle"] = (_zip_with(tmp, "gp.pth", junk, _valid_members()), "data.pkl")
    f["CRC-corrupt member"] = (_corrupt(_zip_with(tmp, "crc.pth"), "archive/data.pkl", 10), "CRC")
    noise = T.pickle_bytes({"w": [np.random.default_rng(i).bytes(40) for i in range(200)]})  # incompressible
    for kind, ctype in (("deflate", zipfile.ZIP_DEFLATED), ("LZMA", zipfile.ZIP_LZMA), ("bzip2", zipfile.ZIP_BZIP2)):
        with zipfile.ZipFile(tmp / f"{kind}.pth", "w", ctype) as zf:
            zf.writestr("archive/data.pkl", noise)
        f[f"corrupt {kind} stream"] = (_corrupt(str(tmp / f"{kind}.pth"), "archive/data.pkl", 30, 8), "data.pkl")
    f["cyclic module tree"] = (_zip_with(tmp, "cyc.pth", T.pickle_bytes({"BaryIR": _cyclic_module()})), "cyclic")
    deep = T.pickle_bytes({"BaryIR": _deep_modules(1000)})
    f["very deep module tree"] = (_zip_with(tmp, "deep.pth", deep, _valid_members()), "deep")
    non_storage = T.Call(T.G("torch._utils", "_rebuild_tensor_v2"), (5, 0, (4,), (1,), False, None))
    f["tensor of a non-storage"] = (
        _zip_with(tmp, "ns.pth", T.pickle_bytes({"BaryIR": {"w": non_storage}})),
        "tensor 'BaryIR.w'",
    )
    f["persistent id not a record"] = (_zip_with(tmp, "pid.pth", T.pickle_bytes(T.Pid("x"))), "persistent id")
    bad_type = T.Pid(("storage", "FloatStorage", "0", "cpu", 4))
    f["storage type a string"] = (_zip_with(tmp, "st.pth", T.pickle_bytes(bad_type)), "storage")
    f["invalid UTF-8"] = (_zip_with(tmp, "utf.pth", b"\x80\x02X\x02\x00\x00\x00\xff\xfe."), "UnicodeDecodeError")
    f["missing memo"] = (_zip_with(tmp, "memo.pth", b"\x80\x02h\x05."), "data.pkl")
    f["stack underflow"] = (_zip_with(tmp, "under.pth", b"\x80\x02a."), "data.pkl")
    f["no STOP"] = (_zip_with(tmp, "nostop.pth", b"\x80\x02}"), "data.pkl")
    f["REDUCE on a string"] = (_zip_with(tmp, "red.pth", b"\x80\x02" + T.emit("abc") + T.emit(()) + b"R."), "data.pkl")
    append = b"\x80\x02" + T.emit(T.G("collections", "OrderedDict")) + b"Na."
    f["APPEND on an allowed global"] = (_zip_with(tmp, "app.pth", append), "data.pkl")
    newobj = b"\x80\x02" + T.emit(T.G("collections", "OrderedDict")) + b")\x81."
    f["NEWOBJ on an allowed global"] = (_zip_with(tmp, "newobj.pth", newobj), "data.pkl")
    f["unregistered extension code"] = (_zip_with(tmp, "ext.pth", b"\x80\x02\x82\xff."), "data.pkl")
    huge = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"x."
    f["BINBYTES8 of 2^62 bytes"] = (_zip_with(tmp, "b8.pth", huge), "data.pkl")
    f["5000-digit integer"] = (_zip_with(tmp, "int.pth", b"\x80\x02I" + b"9" * 5000 + b"\n."), "data.pkl")
    f["OrderedDict of an int"] = (
        _zip_with(tmp, "od.pth", T.pickle_bytes(T.Call(T.G("collections", "OrderedDict"), (5,)))),
        "OrderedDict",
    )
    f["module state not a dict"] = (
        _zip_with(tmp, "ms.pth", T.pickle_bytes({"BaryIR": _module("BaryNet", [1, 2])})),
        "state",
    )
    f["module parameters not a dict"] = (
        _zip_with(tmp, "mp.pth", T.pickle_bytes({"BaryIR": _module("BaryNet", {"_parameters": [1]})})),
        "_parameters",
    )
    f["big-endian"] = (_zip_with(tmp, "be.pth", members=_valid_members(), byteorder="big"), "big-endian")
    f["unknown byteorder"] = (_zip_with(tmp, "bo.pth", members=_valid_members(), byteorder="middle"), "byteorder")
    twice = T.pickle_bytes({"a": T.tensor("0", 4, 0, (4,), (1,)), "b": T.tensor("0", 8, 0, (4,), (1,))})
    f["storage declared twice"] = (_zip_with(tmp, "twice.pth", twice, _valid_members()), "declared twice")
    neg = T.pickle_bytes({"w": T.tensor("0", -4, 0, (4,), (1,))})
    f["negative element count"] = (_zip_with(tmp, "neg.pth", neg, _valid_members()), "element count")
    build = T.pickle_bytes({"w": T.Build(T.G("torch._utils", "_rebuild_tensor_v2"), (None, {"__defaults__": (1,)}))})
    f["BUILD on an allowed global"] = (_zip_with(tmp, "build.pth", build), "modify the global")
    with zipfile.ZipFile(tmp / "bigpkl.pth", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02N." + bytes(17 << 20))
    f["17 MiB data.pkl"] = (str(tmp / "bigpkl.pth"), "data.pkl")
    return f


def test_malformed_files_are_one_line_exit_1(tmp_path, capsys):
    cases = _malformed_files(tmp_path)
    failures = []
    for name, (path, words) in cases.items():
        try:
            rc = cli.main(["--checkpoint", path, "--output", str(tmp_path / "out")])
        except BaseException as e:  # noqa: BLE001 - a raw exception is what this test catches
            failures.append(f"{name}: raised {type(e).__name__}: {str(e)[:200]}")
            capsys.readouterr()
            continue
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        ok = (
            rc == 1
            and len(lines) == 1
            and f"{path} is not a readable PyTorch checkpoint: " in lines[0]
            and lines[0].count(path) == 1
            and words in lines[0]
        )
        if not ok:
            failures.append(f"{name}: rc {rc}, stderr {err.strip()[:400]!r} (wanted {words!r})")
        assert not (tmp_path / "out").exists(), name
    assert not failures, "\n".join(failures)


def _storage_problems(tmp):
    """Files whose pickle is fine but whose storages are not (read only when their tensors are)."""
    f = {"storage missing from the archive": (_zip_with(tmp, "miss.pth"), "missing from the archive")}
    short = {"data/0": np.ones(3, np.float32).tobytes()}
    f["storage member too short"] = (_zip_with(tmp, "short.pth", members=short), "declares 12 bytes")
    odd = {"data/0": bytes(18)}
    f["storage not a multiple of its element"] = (_zip_with(tmp, "odd.pth", members=odd), "declares 18 bytes")
    return f


def test_storage_problems_are_format_errors(tmp_path):
    for path, words in _storage_problems(tmp_path).values():
        with pytest.raises(CheckpointFormatError, match=words):
            load_torch_checkpoint(path)


def test_a_broken_storage_of_a_real_state_dict_is_one_line(tmp_path, tiny, capsys):
    _, sd = tiny
    path = T.state_dict_checkpoint(tmp_path / "sd.pth", sd)
    with zipfile.ZipFile(path) as zf:  # rewrite it with one storage member cut short
        members = {n: zf.read(n) for n in zf.namelist()}
    key = str(list(sd).index("output.weight"))
    members[f"archive/data/{key}"] = members[f"archive/data/{key}"][:-4]
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    rc = cli.main(["--checkpoint", path, "--output", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "is not a readable PyTorch checkpoint" in lines[0]
    assert "'output.weight'" in lines[0] and f"archive/data/{key}" in lines[0]
    assert not (tmp_path / "out").exists()


def test_deeply_nested_pickle_is_one_line(tmp_path, capsys):
    nested = b"]" * 100_000 + b"a" * 99_999
    payload = b"\x80\x02}(" + T.emit("BaryIR") + b"}(" + T.emit("patch_embed.proj.weight") + nested + b"uu."
    path = _zip_with(tmp_path, "nested.pth", payload)
    rc = cli.main(["--checkpoint", path, "--output", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "'patch_embed.proj.weight' in the BaryIR is a list, not a tensor" in lines[0]


# ---------------------------------------------------------------------------------------------------------
# 4. Allowed globals are inert: a hostile file changes nothing outside itself
# ---------------------------------------------------------------------------------------------------------
def test_build_on_allowed_globals_changes_nothing(tmp_path):
    import collections

    from baryir_jax.convert import torch_pickle as tp

    names = ("_rebuild_tensor_v2", "_rebuild_parameter", "_torch_size", "_ordered_dict", "_set")
    fns = [getattr(tp, n) for n in names if hasattr(tp, n)]
    before = [(f.__defaults__, f.__kwdefaults__, dict(f.__dict__), f.__name__, f.__code__) for f in fns]
    globals_ = [
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch", "Size"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("torch", "FloatStorage"),
        ("model_bary", "BaryNet"),
        ("torch.nn.modules.conv", "Conv2d"),
    ]
    state = {"__defaults__": (None, 5, (1,), (0,)), "__kwdefaults__": {"x": 1}, "__name__": "x", "dtype": "O"}
    for i, (mod, name) in enumerate(globals_):
        for st in [(None, state), state]:
            payload = T.pickle_bytes({"w": T.Build(T.G(mod, name), st)})
            path = _zip_with(tmp_path, f"b{i}_{len(st)}.pth", payload)
            with pytest.raises(CheckpointFormatError):
                load_torch_checkpoint(path)
    after = [(f.__defaults__, f.__kwdefaults__, dict(f.__dict__), f.__name__, f.__code__) for f in fns]
    assert after == before
    assert not hasattr(collections.OrderedDict, "dtype") and not hasattr(tp.ModuleStub, "dtype")
    # and a normal file still reads normally afterwards
    values = np.arange(4, dtype=np.float32)
    ok = T.write_checkpoint(tmp_path / "ok.pth", _valid_payload(), {"data/0": values.tobytes()})
    np.testing.assert_array_equal(load_torch_checkpoint(ok)["w"], values)


# ---------------------------------------------------------------------------------------------------------
# 5. Prefixes, shapes, arguments, NaN/inf
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    """(flax params of a tiny BaryNet, the same as an official-style torch state dict)."""
    params = numpy_init(BaryNet(**TINY), 0)
    flat = traverse_util.flatten_dict(params)
    keys = json.loads(str(np.load(FIXTURE)["meta"]))["keys"]["barynet"]
    sd = {}
    for key, _ in keys:
        if key.startswith(UNUSED_PREFIXES):
            continue
        path = _flax_path(key, flat)
        if path not in flat:
            continue  # blocks the tiny configuration does not have
        v = np.asarray(flat[path], np.float32)
        if path[-1] == "kernel":
            v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
        elif path[-1] == "temperature":
            v = v.reshape(-1, 1, 1)
        sd[key] = np.ascontiguousarray(v)
    assert len(sd) == len(flat)
    return params, sd


def _flax_path(key: str, flat) -> tuple[str, ...]:
    """The Flax parameter path of an official key (`encoder_level1.0.norm1.body.weight` →
    `encoder_level1_0/norm1/weight`; conv/linear `weight` → `kernel`)."""
    toks, out = key.split("."), []
    for i, t in enumerate(toks):
        if t.isdigit() and out:
            out[-1] += "_" + t
        elif not (t == "body" and i + 1 < len(toks) and not toks[i + 1].isdigit()):
            out.append(t)
    path = tuple(out)
    return path[:-1] + ("kernel",) if path[-1] == "weight" and path[:-1] + ("kernel",) in flat else path


def _same(a, b):
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


@pytest.mark.parametrize(
    "prefix,wrap",
    [
        ("_orig_mod.", None),
        ("module._orig_mod.", None),
        ("_orig_mod.module.", None),
        ("module.module.", None),
        ("model.", lambda t: {"state_dict": t}),  # PyTorch Lightning
        ("net._orig_mod.", lambda t: {"net": t}),
        ("model.module.", None),
    ],
)
def test_wrapper_prefixes_are_removed(tmp_path, tiny, prefix, wrap, capsys):
    params, sd = tiny
    path = T.state_dict_checkpoint(tmp_path / "p.pth", {prefix + k: v for k, v in sd.items()}, wrap)
    out = torch_to_flax(path, report=None)
    assert _same(out["barynet"], params)
    assert "WARNING" not in capsys.readouterr().err


def test_unknown_or_ambiguous_prefix_is_named(tmp_path, tiny):
    _, sd = tiny
    mixed = {("weird." if i % 2 else "") + k: v for i, (k, v) in enumerate(sd.items())}
    with pytest.raises(ConversionError, match="unknown prefix 'weird.'"):
        torch_to_flax(T.state_dict_checkpoint(tmp_path / "m.pth", mixed), report=None)
    both = {**{"a." + k: v for k, v in sd.items()}, **{"b." + k: v for k, v in sd.items()}}
    with pytest.raises(ConversionError, match="ambiguous.*'a.', 'b.'"):
        torch_to_flax(T.state_dict_checkpoint(tmp_path / "b.pth", both), report=None)
    other = {"x.y." + k.replace("patch_embed", "stem"): v for k, v in sd.items()}
    with pytest.raises(ConversionError, match="missing parameter 'patch_embed.proj.weight'.*'x.'"):
        torch_to_flax(T.state_dict_checkpoint(tmp_path / "o.pth", other), report=None)


@pytest.mark.parametrize(
    "shape,words",
    [
        ((9, 3, 3, 3), ["(9, 3, 3, 3)", "(8, 3, 3, 3)"]),
        ((8, 3, 5, 5), ["(8, 3, 5, 5)", "(8, 3, 3, 3)"]),
        ((8, 27), ["(8, 27)", "(dim, in_channels, 3, 3)"]),
        ((0, 3, 3, 3), ["(0, 3, 3, 3)"]),
    ],
)
def test_mis_shaped_patch_embed_names_key_and_both_shapes(tmp_path, tiny, capsys, shape, words):
    _, sd = tiny
    bad = dict(sd, **{"patch_embed.proj.weight": np.zeros(shape, np.float32)})
    path = T.state_dict_checkpoint(tmp_path / "s.pth", bad)
    rc = cli.main(["--checkpoint", path, "--output", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, lines
    assert "'patch_embed.proj.weight'" in lines[0] and all(w in lines[0] for w in words), lines[0]


def test_arguments_are_checked_before_any_work(tmp_path, tiny, capsys, monkeypatch):
    _, sd = tiny
    path = T.state_dict_checkpoint(tmp_path / "ok.pth", sd)
    from baryir_jax.convert import official

    def never(*a, **k):  # the conversion must not even start
        raise AssertionError("conversion started before the arguments were checked")

    monkeypatch.setattr(official, "torch_to_flax", never)
    for bad in ("7", "0", "-8", "100"):
        assert cli.main(["--checkpoint", path, "--output", str(tmp_path / "o"), "--patch-size", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--patch-size must be a multiple of 8" in err[0]
    existing = tmp_path / "file.txt"
    existing.write_text("keep me")
    assert cli.main(["--checkpoint", path, "--output", str(existing)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert existing.read_text() == "keep me"
    assert cli.main(["--checkpoint", path, "--output", str(existing / "sub")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    os.mkfifo(tmp_path / "fifo.pth")
    assert cli.main(["--checkpoint", str(tmp_path / "fifo.pth"), "--output", str(tmp_path / "o")]) == 2
    assert "not a regular file" in capsys.readouterr().err
    # a read-only file system (simulated at the OS boundary: root ignores permissions)
    real_open = os.open
    ro = str(tmp_path / "ro")
    os.mkdir(ro)

    def os_open(p, *a, **k):
        if os.fspath(p).startswith(ro):
            raise OSError(30, "Read-only file system", p)
        return real_open(p, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    assert cli.main(["--checkpoint", path, "--output", os.path.join(ro, "conv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0]
    assert os.listdir(ro) == []


def test_nan_and_inf_weights_are_named_in_a_warning(tmp_path, tiny, capsys):
    params, sd = tiny
    bad = dict(sd)
    bad["latent.0.attn.qkv.weight"] = sd["latent.0.attn.qkv.weight"].copy()
    bad["latent.0.attn.qkv.weight"].flat[3] = np.nan
    bad["output.weight"] = sd["output.weight"].copy()
    bad["output.weight"].flat[:2] = [np.inf, -np.inf]
    path = T.state_dict_checkpoint(tmp_path / "nan.pth", bad)
    rc = cli.main(["--checkpoint", path, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 0
    warning = [line for line in err.splitlines() if "NaN or inf" in line]
    assert len(warning) == 1
    assert "latent.0.attn.qkv.weight (1 NaN, 0 inf)" in warning[0] and "output.weight (0 NaN, 2 inf)" in warning[0]
    assert "encoder_level1" not in warning[0]


def test_a_failed_write_leaves_no_output(tmp_path, tiny, capsys, monkeypatch):
    import builtins
    import errno

    _, sd = tiny
    path = T.state_dict_checkpoint(tmp_path / "ok.pth", sd)
    real_open = builtins.open

    def full_disk_open(file, mode="r", *a, **k):  # the disk fills up when the config is written (after params/)
        if "w" in mode and os.fspath(file).endswith("model_config.json"):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full_disk_open)
    rc = cli.main(["--checkpoint", path, "--output", str(tmp_path / "new" / "conv")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "the disk is full" in lines[0] and "nothing was kept" in lines[0], lines
    assert not (tmp_path / "new").exists()
