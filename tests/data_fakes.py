"""Fake `manual_dir`s for the data tests: tiny random images with the real file names and folder layouts of
the official repository (`data/Train/...`, `data/test/...`) and of the downloads it points to."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 40, 56  # tiny, not a multiple of 16 (the pipeline's base-16 crop has work to do)


def rand_image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, image: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kw)
    return path


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_png16_rgb(path: Path, image16: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = image16.shape
    raw = b"".join(b"\x00" + image16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def make_official_tree(root: Path) -> Path:
    """A small but complete official `data/` tree; returns `root/data`. Images are lossless PNG/BMP except the
    JPEG names the real sets use (BSD400, OTS, SOTS hazy), saved at quality 95."""
    data = root / "data"
    seed = iter(range(10_000))
    # denoising: BSD400 with and without the `a` prefix, WED bmp
    for name in ["a100007.jpg", "247012.jpg"]:
        save(data / "Train/Denoise" / name, rand_image(next(seed)), quality=95)
    for i in (1, 2, 3):
        save(data / "Train/Denoise" / f"{i:05d}.bmp", rand_image(next(seed)))
    # Rain100L
    for n in (1, 2, 3):
        img = rand_image(next(seed))
        save(data / "Train/Derain/gt" / f"norain-{n}.png", img)
        save(data / "Train/Derain/rainy" / f"rain-{n}.png", 255 - img)
    for n in (1, 2):
        img = rand_image(next(seed))
        save(data / "test/derain/Rain100L/target" / f"norain-{n:03d}.png", img)
        save(data / "test/derain/Rain100L/input" / f"rain-{n:03d}.png", 255 - img)
    # RESIDE OTS: synthetic/partK/XXXX_beta_A.jpg + original/XXXX.jpg
    for scene, hazy in [
        ("0025", ["part1/0025_0.8_0.04.jpg", "part1/0025_1_0.2.jpg"]),
        ("0026", ["part2/0026_0.9_0.1.jpg"]),
    ]:
        save(data / "Train/Dehaze/original" / f"{scene}.jpg", rand_image(next(seed)), quality=95)
        for h in hazy:
            save(data / "Train/Dehaze/synthetic" / h, rand_image(next(seed)), quality=95)
    # SOTS-outdoor
    for scene in ("0001", "0002"):
        save(data / "test/dehaze/target" / f"{scene}.png", rand_image(next(seed)))
        save(data / "test/dehaze/input" / f"{scene}_0.8_0.2.jpg", rand_image(next(seed)), quality=95)
    # GoPro (flattened names as the official folders hold them)
    for name in ("GOPR0372_07_00-000047.png", "GOPR0372_07_00-000048.png"):
        img = rand_image(next(seed))
        save(data / "Train/Deblur/sharp" / name, img)
        save(data / "Train/Deblur/blur" / name, img // 2)
    for name in ("GOPR0384_11_00-000001.png",):
        img = rand_image(next(seed))
        save(data / "test/deblur/target" / name, img)
        save(data / "test/deblur/input" / name, img // 2)
    # LOL-v1
    for name in ("2.png", "5.png"):
        img = rand_image(next(seed))
        save(data / "Train/lowlight/high" / name, img)
        save(data / "Train/lowlight/low" / name, img // 4)
    img = rand_image(next(seed))
    save(data / "test/lowlight/eval15/high/1.png", img)
    save(data / "test/lowlight/eval15/low/1.png", img // 4)
    # CBSD68 (colour)
    for i in range(3):
        save(data / "test/denoise/cbsd68" / f"{i:04d}.png", rand_image(next(seed)))
    return data


def make_pairs_folder(root: Path, n: int = 3, h: int = H, w: int = W, seed: int = 500, invert: bool = True) -> Path:
    """A user's folder: degraded/ and target/, pairs by name; degraded = 255 - clean when `invert`."""
    for i in range(n):
        img = rand_image(seed + i, h, w)
        save(root / "target" / f"img_{i}.png", img)
        save(root / "degraded" / f"img_{i}.png", 255 - img if invert else img)
    return root


class NoNetwork:
    """Context manager: any attempt to open a network connection raises."""

    def __enter__(self):
        import socket

        self._saved = (socket.socket.connect, socket.create_connection)

        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        return self

    def __exit__(self, *exc):
        import socket

        socket.socket.connect, socket.create_connection = self._saved
        return False


_PREPARED: dict = {}
OFFICIAL_DATASETS = ("denoise_train", "rain100l", "reside_ots", "sots_outdoor", "gopro", "lol_v1", "cbsd68")
SQUARE = 32  # side of the `square` user pairs: exactly one patch, so the crop is the whole image


def prepared_data(base: Path) -> dict:
    """Build every data set once per test session: the fake official tree, two user folders (`inv`: degraded =
    255 - clean; `square`: 32x32 pairs) and `embedded` (with the network blocked). Returns paths and results."""
    if "data_dir" in _PREPARED:
        return _PREPARED
    from baryir_jax.data.prepare import prepare

    root = Path(base) / "baryir_data_fixture"
    tree = make_official_tree(root)
    data_dir = root / "prepared"
    results = {}
    for ds in OFFICIAL_DATASETS:
        results[ds] = prepare(ds, data_dir, tree, progress=False, out=lambda s: None)
    inv = make_pairs_folder(root / "pairs_inv", n=3)
    results["paired_folder/inv"] = prepare(
        "paired_folder", data_dir, inv, name="inv", progress=False, out=lambda s: None
    )
    square = make_pairs_folder(root / "pairs_square", n=2, h=SQUARE, w=SQUARE, seed=900, invert=True)
    results["paired_folder/square"] = prepare(
        "paired_folder", data_dir, square, name="square", progress=False, out=lambda s: None
    )
    with NoNetwork():
        results["embedded"] = prepare("embedded", data_dir, progress=False, out=lambda s: None)
    _PREPARED.update(root=root, tree=tree, data_dir=data_dir, results=results, inv=inv, square=square)
    return _PREPARED
