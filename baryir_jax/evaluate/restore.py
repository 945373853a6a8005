"""`baryir-restore`: restore your own images of any size, tiled with blended overlaps.

    baryir-restore --checkpoint CKPT --input photo.jpg --output restored/
    baryir-restore --checkpoint CKPT --input my_photos/ --output restored/ --tile 512 --overlap 32
    python -m baryir_jax.evaluate.restore --checkpoint CKPT --input big.png --output out/ --tile 0   # whole image

Images larger than `--tile` are cut into `tile × tile` tiles that overlap by `--overlap` pixels; the last tile of
a row/column is aligned with the image edge. Every tile runs through the network at the same shape (one
compilation for all large images), `--batch` tiles at a time. Tile outputs are accumulated in a float32 canvas
with a raised-cosine weight over the `overlap` pixels of each side that borders another tile (weight 1
elsewhere and at the image border), divided by the summed weights, then quantised like the official outputs
(``uint8(clamp(x·255 + 0.5, 0, 255))``). Memory grows with the image only through these canvases (about 35
bytes per pixel: ~0.4 GB for 4000×3000), not through the network. An image no larger than a tile in a side is
padded (reflect) to a multiple of 8 in that side and runs whole; `--tile 0` runs every image whole.

Inputs: every file Pillow reads, via `baryir_jax.data.images.load_image_file`: grayscale is replicated to RGB
and saved back as grayscale; RGBA/LA keep their alpha channel (passed through unchanged); 16-bit images are
reduced to 8 bits (high byte); EXIF orientation is applied. Unreadable, truncated or refused files are
reported and skipped, and counted in the summary. Outputs are PNG files under `--output`, at the input's
relative path with the extension `.png`.

The checkpoint is a model checkpoint directory (``model_config.json`` + ``params/``), from `baryir-convert`
(official weights) or from training's export. The summary prints the wall time and the process's peak
resident memory. Exit status: 0 when at least one image was restored, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from baryir_jax.evaluate.metrics import quantize_np
from baryir_jax.evaluate.shapes import MULTIPLE, pad_to, round_up

# PIL's EXIF orientation → transpose, as ImageOps.exif_transpose.
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def check_tiling(tile: int, overlap: int) -> None:
    if tile < 0 or (tile and (tile % MULTIPLE or tile < 2 * MULTIPLE)):
        raise ValueError(
            f"--tile must be 0 (whole images) or a multiple of {MULTIPLE} of at least {2 * MULTIPLE}, got {tile}."
        )
    if tile and not 0 <= overlap < tile:
        raise ValueError(
            f"--overlap must be in [0, tile) = [0, {tile}), got {overlap}: tiles advance by tile - overlap pixels."
        )


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size), stride tile - overlap, the last one flush with
    the end."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    if not starts or starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def ramp(overlap: int) -> np.ndarray:
    """Raised-cosine weights rising over `overlap` pixels, strictly inside (0, 1)."""
    i = np.arange(1, overlap + 1, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(np.pi * i / (overlap + 1))).astype(np.float32)


def axis_weight(start: int, length: int, size: int, overlap: int) -> np.ndarray:
    """Weights along one axis of a tile: ramps on the sides that border another tile, 1 elsewhere."""
    w = np.ones(length, np.float32)
    n = min(overlap, length // 2)
    if n > 0:
        r = ramp(n)
        if start > 0:
            w[:n] = r
        if start + length < size:
            w[length - n :] = r[::-1]
    return w


def restore_float(
    fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int = 512, overlap: int = 32, batch_size: int = 1
) -> np.ndarray:
    """Run `fn` ((N, h, w, 3) float32 → same) over `image` (H, W, 3) float32, tiled and blended; → (H, W, 3)
    float32. `tile=0`: the whole image at once (padded to multiples of 8)."""
    check_tiling(tile, overlap)
    if batch_size < 1:
        raise ValueError(f"--batch must be at least 1, got {batch_size}.")
    h, w = image.shape[:2]
    th = round_up(h, MULTIPLE) if tile == 0 else min(tile, round_up(h, MULTIPLE))
    tw = round_up(w, MULTIPLE) if tile == 0 else min(tile, round_up(w, MULTIPLE))
    hp, wp = max(h, th), max(w, tw)
    padded = pad_to(image, hp, wp, "reflect")
    if (th, tw) == (hp, wp):  # one tile: no canvas needed
        return np.asarray(fn(padded[None]))[0, :h, :w]
    ys, xs = tile_starts(hp, th, overlap), tile_starts(wp, tw, overlap)
    canvas = np.zeros((hp, wp, image.shape[2]), np.float32)
    weight = np.zeros((hp, wp, 1), np.float32)
    wy = {y: axis_weight(y, th, hp, overlap) for y in ys}
    wx = {x: axis_weight(x, tw, wp, overlap) for x in xs}
    positions = [(y, x) for y in ys for x in xs]
    batch = np.zeros((batch_size, th, tw, image.shape[2]), np.float32)
    for i in range(0, len(positions), batch_size):
        chunk = positions[i : i + batch_size]
        batch[:] = 0.0
        for j, (y, x) in enumerate(chunk):
            batch[j] = padded[y : y + th, x : x + tw]
        out = np.asarray(fn(batch))
        for j, (y, x) in enumerate(chunk):
            wgt = (wy[y][:, None] * wx[x][None, :])[..., None]
            canvas[y : y + th, x : x + tw] += out[j] * wgt
            weight[y : y + th, x : x + tw] += wgt
    canvas /= weight
    return canvas[:h, :w]


def restore_image(restorer, image: np.ndarray, tile: int = 512, overlap: int = 32, batch_size: int = 1) -> np.ndarray:
    """uint8 (H, W, 3) → restored uint8 (H, W, 3)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"restore_image expects a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}.")
    x = image.astype(np.float32) / np.float32(255.0)
    return quantize_np(restore_float(restorer, x, tile, overlap, batch_size))


def tile_count(h: int, w: int, tile: int, overlap: int) -> int:
    if tile == 0:
        return 1
    th, tw = min(tile, round_up(h, MULTIPLE)), min(tile, round_up(w, MULTIPLE))
    return len(tile_starts(max(h, th), th, overlap)) * len(tile_starts(max(w, tw), tw, overlap))


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------


def find_inputs(path: str) -> tuple[list[tuple[str, str]], int]:
    """[(file, relative path)] of the image files at `path` (a file or a folder, searched recursively) and the
    number of other files ignored."""
    from baryir_jax.data.images import is_image_file

    if os.path.isfile(path):
        return [(path, os.path.basename(path))], 0
    found, ignored = [], 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            full = os.path.join(root, f)
            if is_image_file(f):
                found.append((full, os.path.relpath(full, path)))
            elif not f.startswith("."):
                ignored += 1
    return found, ignored


def read_image(path: str):
    """→ (uint8 RGB (H, W, 3), alpha uint8 (H, W) or None, grayscale: bool, note or None). Raises
    `ImageProblem` for files that cannot be used."""
    from baryir_jax.data.images import ImageProblem, load_image_file

    loaded = load_image_file(path)
    rgb = loaded.decode()
    alpha, orientation = None, 1
    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
                alpha = np.asarray(im.convert("RGBA").getchannel("A"))
    except Exception as e:  # noqa: BLE001 - load_image_file already decoded it; a metadata problem is not fatal
        raise ImageProblem("unreadable", f"cannot read its metadata: {type(e).__name__}: {e}") from None
    notes = [loaded.conversion] if loaded.conversion else []
    if orientation in _ORIENT:
        rgb = np.asarray(Image.fromarray(rgb).transpose(_ORIENT[orientation]))
        if alpha is not None:
            alpha = np.asarray(Image.fromarray(alpha).transpose(_ORIENT[orientation]))
        notes.append(f"EXIF orientation {orientation} applied")
    return rgb, alpha, loaded.single_channel, "; ".join(notes) or None


def write_image(path: str, rgb: np.ndarray, alpha: np.ndarray | None, grayscale: bool) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    im = Image.fromarray(rgb)
    if grayscale:
        im = im.convert("LA") if alpha is not None else im.convert("L")
        if alpha is not None:
            im.putalpha(Image.fromarray(alpha))
    elif alpha is not None:
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(alpha))
    im.save(path)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="baryir-restore",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--checkpoint", required=True, help="model checkpoint directory (model_config.json + params/)")
    p.add_argument("--input", required=True, help="an image file or a folder of images (searched recursively)")
    p.add_argument("--output", required=True, help="folder for the restored PNGs")
    p.add_argument("--tile", type=int, default=512, help="tile size, a multiple of 8 (0: whole images)")
    p.add_argument("--overlap", type=int, default=32, help="overlap of neighbouring tiles in pixels")
    p.add_argument("--batch", type=int, default=1, help="tiles per network call")
    p.add_argument("--config", default=None, help="config file, only for a checkpoint without model_config.json")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="compute dtype override")
    args = p.parse_args(argv)
    from baryir_jax.data.images import ImageProblem
    from baryir_jax.evaluate.checkpoint import CheckpointError, load_config, load_restorer

    t0 = time.perf_counter()
    try:
        check_tiling(args.tile, args.overlap)
        if args.batch < 1:
            raise ValueError(f"--batch must be at least 1, got {args.batch}.")
        if not os.path.exists(args.input):
            raise ValueError(f"--input {args.input}: no such file or folder.")
        inputs, ignored = find_inputs(args.input)
        if not inputs:
            raise ValueError(
                f"--input {args.input}: no image files found (looked for .png, .jpg, .jpeg, .bmp, .tif, "
                ".tiff, .webp, .ppm, .pgm)" + (f"; {ignored} other file(s) ignored" if ignored else "") + "."
            )
        restorer = load_restorer(args.checkpoint, load_config(args.config) if args.config else None, args.dtype)
    except (CheckpointError, ValueError) as e:
        print(f"baryir-restore: {e}", file=sys.stderr)
        return 1
    out_root = os.path.abspath(args.output)
    done, skipped = 0, []
    for path, rel in inputs:
        dest = os.path.join(out_root, os.path.splitext(rel)[0] + ".png")
        if os.path.abspath(path) == dest:
            skipped.append(f"{path}: the output would overwrite the input; choose another --output")
            continue
        try:
            rgb, alpha, gray, note = read_image(path)
        except ImageProblem as e:
            skipped.append(f"{path}: {e.message}")
            print(f"skipped {path}: {e.message}", file=sys.stderr)
            continue
        t = time.perf_counter()
        h, w = rgb.shape[:2]
        out = restore_image(restorer, rgb, args.tile, args.overlap, args.batch)
        write_image(dest, out, alpha, gray)
        done += 1
        n_tiles = tile_count(h, w, args.tile, args.overlap)
        print(
            f"{rel}: {w}x{h}, {n_tiles} tile(s), {time.perf_counter() - t:.1f} s -> {dest}"
            + (f" ({note})" if note else "")
        )
    total = time.perf_counter() - t0
    print(
        f"restored {done} image(s), skipped {len(skipped)} (unreadable, corrupt or refused)"
        + (f", ignored {ignored} non-image file(s)" if ignored else "")
        + f"; {len(restorer.shapes)} compiled shape(s) {sorted(s[1:3] for s in restorer.shapes)}; "
        f"{total:.1f} s in all; peak RSS {peak_rss_mib():.0f} MiB"
    )
    for line in skipped:
        print(f"  skipped: {line}")
    return 0 if done else 1


def run() -> None:  # console-script entry point
    sys.exit(main())


if __name__ == "__main__":
    run()
