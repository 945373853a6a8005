"""baryir-restore and the user's files: colliding destinations, --output equal to or inside the input folder,
output problems found before the model loads, per-file write failures, a full disk, FIFOs, ICC colour profiles.

Cost: about 80 s on a shared 2-core machine (a tiny BaryNet; every image is 32x32, run whole: one compiled
shape; the FIFO test runs the CLI in a thread)."""

import builtins
import errno
import hashlib
import io
import os
import struct
import threading

import numpy as np
import pytest
from PIL import Image, ImageCms

from baryir_jax.evaluate import restore
from baryir_jax.evaluate.checkpoint import numpy_init
from baryir_jax.models import BaryNet

TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from baryir_jax.models.io import save_model_checkpoint

    d = tmp_path_factory.mktemp("restore_files") / "ckpt"
    save_model_checkpoint(str(d), numpy_init(BaryNet(**TINY), 0), TINY)
    return str(d)


def _img(seed, gray=False):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (32, 32) if gray else (32, 32, 3), dtype=np.uint8)


def _run(ckpt, inp, out, *extra):
    return restore.main(["--checkpoint", ckpt, "--input", str(inp), "--output", str(out), "--tile", "0", *extra])


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ---------------------------------------------------------------------------------------------------------
# 6. Colliding destinations
# ---------------------------------------------------------------------------------------------------------
def test_inputs_sharing_a_destination_are_both_kept(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_img(0)).save(src / "shot.jpg", quality=95)  # colour
    Image.fromarray(_img(1, gray=True)).save(src / "shot.png")  # grayscale: its result is mode L
    (src / "sub").mkdir()
    Image.fromarray(_img(2)).save(src / "sub" / "shot.bmp")  # another folder: no collision
    out = tmp_path / "out"
    assert _run(ckpt, src, out) == 0
    text = capsys.readouterr().out
    assert "restored 3 image(s)" in text and "2 renamed" in text
    assert _files(out) == ["shot_jpg.png", "shot_png.png", "sub/shot.png"]
    assert Image.open(out / "shot_jpg.png").mode == "RGB" and Image.open(out / "shot_png.png").mode == "L"


def test_output_equal_to_the_input_folder_never_overwrites_an_input(ckpt, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(_img(3)).save(src / "a.jpg", quality=95)
    Image.fromarray(_img(4)).save(src / "a.png")
    Image.fromarray(_img(5)).save(src / "b.png")
    (src / "notes.txt").write_text("keep")
    before = {f: _digest(src / f) for f in _files(src)}
    assert _run(ckpt, src, src) == 0
    text = capsys.readouterr().out
    after = _files(src)
    assert {f: _digest(src / f) for f in before} == before  # every original byte for byte
    new = sorted(set(after) - set(before))
    assert len(new) == 3 and "restored 3 image(s)" in text, (new, text)
    assert all(f.endswith(".png") and not f.startswith(".") for f in new)


def test_output_inside_the_input_folder_is_not_searched(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_img(6)).save(src / "x.png")
    for _ in range(2):  # a rerun must not restore the previous results
        assert _run(ckpt, src, src / "restored") == 0
        assert "restored 1 image(s)" in capsys.readouterr().out
    assert _files(src) == ["restored/x.png", "x.png"]


# ---------------------------------------------------------------------------------------------------------
# 7. Output problems
# ---------------------------------------------------------------------------------------------------------
def test_unusable_output_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    Image.fromarray(_img(7)).save(tmp_path / "a.png")
    no_ckpt = str(tmp_path / "no_checkpoint_here")  # if --output were checked after loading, this would show
    (tmp_path / "file").write_text("x")
    for out, words in [(tmp_path / "file", "exists and is not a folder"), (tmp_path / "file" / "sub", "is a file")]:
        assert _run(no_ckpt, tmp_path / "a.png", out) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert (tmp_path / "file").read_text() == "x"
    ro = str(tmp_path / "ro")
    os.mkdir(ro)
    real_open = os.open

    def os_open(p, *a, **k):  # a read-only file system, at the OS boundary (root ignores chmod)
        if os.fspath(p).startswith(ro):
            raise OSError(errno.EROFS, "Read-only file system", p)
        return real_open(p, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    assert _run(no_ckpt, tmp_path / "a.png", os.path.join(ro, "out")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0]
    assert os.listdir(ro) == []


def test_a_file_that_cannot_be_written_is_a_counted_skip(ckpt, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png", "c.png", "d.png"):
        Image.fromarray(_img(8)).save(src / name)
    out.mkdir()
    (out / "sub").write_text("a file where a folder is needed")
    (out / "c.png").mkdir()  # a folder where the result should go
    assert _run(ckpt, src, out) == 0
    text = capsys.readouterr().out
    assert "restored 2 image(s), skipped 2" in text
    assert "sub/b.png: cannot write" in text and "c.png exists and is a folder" in text
    assert sorted(_files(out)) == ["a.png", "d.png", "sub"]


def _enospc_after(monkeypatch, victim: str, allow: int = 100):
    """Make writes to any file whose name contains `victim` fail with ENOSPC after `allow` bytes, at the OS
    boundary (os.write and builtins.open, the two ways Python code writes files)."""
    written = {"n": 0}

    def check(n):
        if written["n"] + n > allow:
            raise OSError(errno.ENOSPC, "No space left on device")
        written["n"] += n

    real_write, real_open = os.write, builtins.open

    def os_write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if victim in os.path.basename(target):
            n = min(len(data), max(allow - written["n"], 0))
            if n == 0:
                check(len(data))
            real_write(fd, bytes(memoryview(data)[:n]))
            check(n)
            return n
        return real_write(fd, data)

    class Full(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def writable(self):
            return True

        def write(self, data):
            n = min(len(data), max(allow - written["n"], 0))
            self.f.write(bytes(memoryview(data)[:n]))
            self.f.flush()
            check(len(data))
            return n

        def close(self):
            self.f.close()
            super().close()

    def open_(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if isinstance(file, (str, os.PathLike)) and victim in os.path.basename(os.fspath(file)) and "w" in mode:
            return io.BufferedWriter(Full(f))
        return f

    monkeypatch.setattr(os, "write", os_write)
    monkeypatch.setattr(builtins, "open", open_)


def test_a_full_disk_stops_with_one_line_and_no_partial_file(ckpt, tmp_path, capsys, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(_img(9)).save(src / name)
    _enospc_after(monkeypatch, "b.png")
    rc = _run(ckpt, src, out)
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "the disk is full" in err[0] and "b.png" in err[0], cap.err
    assert "restored 1 image(s)" in cap.out and "STOPPED" in cap.out
    assert _files(out) == ["a.png"]  # no b.png, no temporary file, nothing after
    Image.open(out / "a.png").load()  # complete


# ---------------------------------------------------------------------------------------------------------
# 8. Special files
# ---------------------------------------------------------------------------------------------------------
def test_a_fifo_named_like_an_image_is_skipped_without_blocking(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_img(10)).save(src / "ok.png")
    os.mkfifo(src / "pipe.png")
    os.symlink(src / "missing.png", src / "broken.png")
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("rc", _run(ckpt, src, tmp_path / "out")), daemon=True)
    worker.start()
    worker.join(timeout=120)
    if worker.is_alive():  # unblock the reader so the test process can finish, then fail
        fd = os.open(src / "pipe.png", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(timeout=60)
        pytest.fail("baryir-restore blocked on a FIFO")
    text = capsys.readouterr().out
    assert result["rc"] == 0 and "restored 1 image(s), skipped 2" in text
    assert "pipe.png: not a regular file: a named pipe (FIFO)" in text and "broken.png: cannot read file" in text


# ---------------------------------------------------------------------------------------------------------
# 9. Colour profiles
# ---------------------------------------------------------------------------------------------------------
def _s15(v):
    return struct.pack(">i", round(v * 65536))


def display_p3_profile() -> bytes:
    """An ICC v2 display profile with the Display P3 primaries (D50-adapted colorants, as Apple's profile) and a
    2.2 gamma, written by hand."""

    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)

    desc_text = b"Display P3\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(desc_text)) + desc_text + bytes(4 + 4 + 2 + 1 + 67)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233) + b"\0\0"  # gamma 2.2 (u8Fixed8), padded to 4
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.964203, 1.0, 0.824905)),
        (b"rXYZ", xyz(0.515121, 0.241196, -0.001053)),
        (b"gXYZ", xyz(0.291977, 0.692245, 0.041885)),
        (b"bXYZ", xyz(0.157104, 0.066574, 0.784073)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", b"text\0\0\0\0" + b"No copyright, test data\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(24)
        + struct.pack(">I", 0)  # rendering intent
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + bytes(48)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def test_an_icc_colour_profile_is_carried_to_the_output(ckpt, tmp_path, capsys):
    p3 = display_p3_profile()
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(p3))).strip() == "Display P3"
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_img(11)).save(src / "p3.png", icc_profile=p3)
    Image.fromarray(_img(12)).save(src / "photo.jpg", icc_profile=p3, quality=95)
    rgba = np.dstack([_img(13), np.full((32, 32), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(src / "p3_alpha.png", icc_profile=p3)
    Image.fromarray(_img(14, gray=True)).save(src / "gray_with_rgb_profile.png", icc_profile=p3)
    Image.fromarray(_img(15)).save(src / "plain.png")
    out = tmp_path / "out"
    assert _run(ckpt, src, out) == 0
    text = capsys.readouterr().out
    for name in ("p3.png", "photo.png", "p3_alpha.png"):
        with Image.open(out / name) as im:
            assert im.info.get("icc_profile") == p3, name
    with Image.open(out / "p3_alpha.png") as im:
        assert im.mode == "RGBA" and np.all(np.asarray(im)[..., 3] == 200)
    with Image.open(out / "gray_with_rgb_profile.png") as im:
        assert im.mode == "L" and "icc_profile" not in im.info  # an RGB profile cannot describe a gray image
    assert "RGB colour profile dropped" in text
    with Image.open(out / "plain.png") as im:
        assert "icc_profile" not in im.info
