"""Reading image files safely, converting them to 8-bit RGB, and the crop/augmentation helpers.

`load_image_file` never lets a bad file crash a build: it returns a `LoadedImage` (possibly with a
`conversion` note) or raises `ImageProblem` with a `kind` ('unreadable' or 'refused') and a message that the
builders count and list in their summary.

Conversion policy (documented in docs/data.md):
* 8-bit RGB JPEG/PNG: stored byte for byte (no re-encoding, so no quality loss and no size growth);
* other 8-bit RGB files (BMP, TIFF, WebP...): re-encoded losslessly as PNG (not a conversion of the pixels);
* grayscale (`L`, `1`, `LA`): channels replicated to RGB, reported as converted;
* RGBA / palette: the alpha channel is dropped as `PIL.Image.convert('RGB')` does in the official loader,
  reported as converted (the report says when some pixels were not opaque);
* 16-bit (PNG or TIFF, gray or colour): reduced to 8 bits by keeping the high byte (`v >> 8`), reported as
  converted (the official `convert('RGB')` clips 16-bit grayscale to 255 instead: mostly white images);
* CMYK, YCbCr, LAB, HSV: converted to RGB by Pillow, reported;
* float (`F`) and 32-bit integer images, and anything Pillow cannot decode completely (truncated, corrupt,
  empty): refused or unreadable, never stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat

import numpy as np
from PIL import Image, UnidentifiedImageError

from baryir_jax.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageProblem(InputError):
    """A file that cannot be used: `kind` is 'unreadable' or 'refused'."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    encoded: bytes  # what the data set stores (PNG or the original JPEG/PNG bytes)
    height: int
    width: int
    conversion: str | None  # None when the pixels are stored unchanged
    single_channel: bool  # the file had one channel (before any conversion)

    def decode(self) -> np.ndarray:
        return decode_image(self.encoded)


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def drop_extension(rel: str) -> str:
    """`rel` without the extension of its last component, folders kept: 'part1/0025_0.8.jpg' -> 'part1/0025_0.8',
    'a.b/x' -> 'a.b/x'."""
    return rel.rsplit(".", 1)[0] if "." in os.path.basename(rel) else rel


def stem(name: str) -> str:
    """The file name of `name` without folders and extension ('a/rain-1.png' -> 'rain-1'): what keys the seeds
    of the frozen and unseen degradations."""
    return drop_extension(os.path.basename(name))


def pixel_sha256(image: np.ndarray) -> str:
    """SHA-256 (hex) of "HxWxC:" + the uint8 HWC bytes of `image` (shape (H, W, C)): a checksum of the pixels,
    independent of the file format they were stored in."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w, c = image.shape
    return hashlib.sha256(f"{h}x{w}x{c}:".encode() + image.tobytes()).hexdigest()


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(encoded: bytes) -> np.ndarray:
    """Stored bytes → uint8 (H, W, 3)."""
    with Image.open(io.BytesIO(encoded)) as im:
        return np.asarray(im.convert("RGB"))


def _png_bit_depth(raw: bytes) -> int | None:
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 26 and raw[12:16] == b"IHDR":
        return raw[24]
    return None


def _tiff_16bit(im: Image.Image) -> bool:
    bits = getattr(im, "tag_v2", {}).get(258) if im.format == "TIFF" else None
    if bits is None:
        return False
    bits = bits if isinstance(bits, tuple) else (bits,)
    return any(b == 16 for b in bits)


def _high_byte(arr: np.ndarray) -> np.ndarray:
    return (np.asarray(arr).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)


def _transparency(alpha: np.ndarray) -> str:
    return ", it had transparent pixels" if alpha.min() < 255 else ""


def load_image_bytes(raw: bytes) -> LoadedImage:
    """Validate, decode completely and convert one encoded image (see the module docstring)."""
    if not raw:
        raise ImageProblem("unreadable", "empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        raise ImageProblem("unreadable", "not an image file Pillow can identify") from None
    except Exception as e:  # noqa: BLE001 - any decoder error is a property of the file
        raise ImageProblem("unreadable", f"cannot open: {type(e).__name__}: {e}") from None
    with im:
        fmt, mode = im.format, im.mode
        try:
            im.load()
        except Exception as e:  # noqa: BLE001
            raise ImageProblem("unreadable", f"truncated or corrupt {fmt} file ({type(e).__name__}: {e})") from None
        notes = []
        frames = getattr(im, "n_frames", 1)
        if frames > 1 and fmt not in ("MPO",):
            notes.append(f"first of {frames} frames used")
        png_bits = _png_bit_depth(raw)
        sixteen = png_bits == 16 or _tiff_16bit(im) or mode.startswith("I;16")
        single = mode in ("1", "L", "LA", "I", "F", "La") or mode.startswith("I;16")
        if mode == "F":
            raise ImageProblem("refused", "32-bit float image: save it as 8-bit RGB PNG")
        if mode == "I" or mode.startswith("I;16"):
            arr = np.asarray(im)
            if mode == "I" and png_bits != 16 and not _tiff_16bit(im):
                if arr.min() < 0 or arr.max() > 255:
                    raise ImageProblem("refused", "32-bit integer image: save it as 8-bit RGB PNG")
                gray, note = arr.astype(np.uint8), "grayscale → RGB"
            else:
                gray, note = _high_byte(arr), "16-bit grayscale → 8-bit RGB (high byte)"
            rgb = np.repeat(gray[..., None], 3, axis=-1)
            notes.append(note)
        elif mode in ("1", "L"):
            rgb = np.asarray(im.convert("RGB"))
            notes.append("grayscale → RGB")
        elif mode in ("LA", "La"):
            alpha = np.asarray(im.getchannel("A"))
            rgb = np.asarray(im.convert("L").convert("RGB"))
            notes.append("grayscale+alpha → RGB (alpha dropped" + _transparency(alpha) + ")")
        elif mode in ("RGBA", "RGBa", "P", "PA"):
            has_alpha = mode != "P" or "transparency" in im.info
            rgba = np.asarray(im.convert("RGBA"))
            rgb = np.ascontiguousarray(rgba[..., :3])
            if mode.startswith("P"):
                notes.append("palette → RGB")
            if has_alpha:
                notes.append("RGBA → RGB (alpha dropped" + _transparency(rgba[..., 3]) + ")")
        elif mode == "RGB":
            rgb = None
        else:  # CMYK, YCbCr, LAB, HSV, RGBX...
            rgb = np.asarray(im.convert("RGB"))
            notes.append(f"{mode} → RGB")
        if sixteen and mode == "RGB":
            notes.append("16-bit RGB → 8-bit (high byte)")
        width, height = im.size
        if width == 0 or height == 0:
            raise ImageProblem("unreadable", "image has zero size")
        if rgb is None:
            if fmt in ("JPEG", "MPO", "PNG") and not sixteen and frames == 1:
                encoded = raw
            else:
                encoded = encode_png(np.asarray(im))
        else:
            encoded = encode_png(rgb)
    return LoadedImage(
        encoded=encoded,
        height=height,
        width=width,
        conversion="; ".join(notes) if notes else None,
        single_channel=single,
    )


_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
}


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (from ``os.stat(...).st_mode``)."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file. Anything else (a FIFO, a device, a socket, a folder) is refused without
    blocking: the file is opened non-blocking and checked with fstat before it is read. Raises `ImageProblem`
    ('unreadable')."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise ImageProblem("unreadable", f"cannot read file: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageProblem("unreadable", f"not a regular file: {file_kind(mode)}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise ImageProblem("unreadable", f"cannot read file: {e.strerror or e}") from None
    finally:
        os.close(fd)


def load_image_file(path: str | os.PathLike) -> LoadedImage:
    return load_image_bytes(read_regular_file(path))


def is_grayscale_content(image: np.ndarray) -> bool:
    """True when all three channels are identical (a grayscale picture saved as RGB)."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


# ---------------------------------------------------------------------------------------------------------
# Geometry shared by the training pipeline
# ---------------------------------------------------------------------------------------------------------
def crop_to_multiple(image: np.ndarray, base: int = 16) -> np.ndarray:
    """Centre crop to a multiple of `base` in H and W, as the official `crop_img(base=16)`:
    rows `[r//2, h - r + r//2)` with `r = h % base` (the extra row goes to the bottom)."""
    h, w = image.shape[:2]
    rh, rw = h % base, w % base
    return image[rh // 2 : h - rh + rh // 2, rw // 2 : w - rw + rw // 2]


def augment(image: np.ndarray, mode: int) -> np.ndarray:
    """The official 8 modes on an HWC array: 0 identity, 1 flipud, 2/4/6 rot90 k=1/2/3 (counter-clockwise in
    the H, W plane), 3/5/7 the same rotation followed by flipud. Training draws 1..7 (identity never)."""
    if mode == 0:
        out = image
    elif mode == 1:
        out = np.flipud(image)
    elif mode in (2, 3, 4, 5, 6, 7):
        out = np.rot90(image, k=(mode - 2) // 2 + 1)
        if mode % 2 == 1:
            out = np.flipud(out)
    else:
        raise ValueError(f"augmentation mode must be in 0..7, got {mode}.")
    return np.ascontiguousarray(out)
