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

Inputs: a file, or the files of a folder (recursively) named .png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .ppm,
.pgm or .gif (an animated GIF: its first frame; other files are named in the summary as ignored), read via
`baryir_jax.data.images.load_image_bytes`: grayscale is replicated
to RGB and saved back as grayscale; RGBA/LA keep their alpha channel (passed through unchanged); an embedded ICC
colour profile is carried to the output (when the output has the profile's colour model); 16-bit images are
reduced to 8 bits (high byte); EXIF orientation is applied. Unreadable, truncated or refused files, and
anything that is not a regular file (a FIFO, a device, a broken link), are reported and skipped, and counted in
the summary; non-regular files are never opened for reading in a way that can block.

Outputs are PNG files under `--output`, at the input's relative path with the extension `.png`. Every
destination is planned against every input and every other destination before anything is written: no input
file is ever overwritten (also with `--output` equal to the input folder), and inputs that would share a
destination (`shot.jpg`, `shot.png`) get distinct names (`shot_jpg.png`, `shot_png.png`). An output folder inside
the input folder is not searched for inputs. Each PNG is written to a hidden temporary file next to its
destination and renamed when complete, so a destination is either the old file or the complete new one.
`--output` is checked before the model is loaded (a file, a path under a file, not writable, a read-only file
system). A file that cannot be written is a counted skip with its reason; a full disk stops the run with one
line and leaves no partial file.

The checkpoint is a model checkpoint directory (``model_config.json`` + ``params/``), from `baryir-convert`
(official weights) or from training's export. The summary prints the wall time and the process's peak
resident memory. Exit status: 0 when at least one image was restored, 1 when none was (or the arguments or the
checkpoint are unusable), 2 when a full disk stopped the run (the images restored before it are complete) or a
``--config`` file, variant or ``--config.KEY=VALUE`` override cannot work (README: Exit status).
"""

# (The docstring above is the command's --help.) This module holds the tiling with blended overlaps
# (:func:`restore_float`, :func:`restore_image`) and the command; finding, naming, reading and writing the files
# is in :mod:`baryir_jax.evaluate.restore_files`.

from __future__ import annotations

import argparse
import errno
import os
import resource
import sys
import time
from collections.abc import Callable

import numpy as np

from baryir_jax import cli
from baryir_jax import config as config_lib
from baryir_jax.errors import BaryIRError, InputError, UsageError
from baryir_jax.evaluate.metrics import quantize_np
from baryir_jax.evaluate.restore_files import (  # noqa: F401 - re-exported: the file handling of this command
    RESTORABLE_EXTENSIONS,
    _real,
    check_output,
    encode_image,
    find_inputs,
    icc_profile,
    input_tree_files,
    name_some,
    plan_destinations,
    profile_fits,
    read_image,
    write_file_atomically,
    write_image,
)
from baryir_jax.evaluate.shapes import MULTIPLE, pad_to, round_up


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


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


PROG = "baryir-restore"


def main(argv=None) -> int:
    """``baryir-restore`` with ``argv``: its exit status (:mod:`baryir_jax.errors`; 2 also = stopped by a full
    disk)."""
    return cli.run_main(PROG, _main, argv)


def _main(argv=None) -> int:
    p = cli.ArgumentParser(
        prog=PROG,
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
    p.add_argument(
        "--config",
        default=None,
        help="config file FILE[:variant], only for a checkpoint without model_config.json; --config.KEY=VALUE "
        "overrides its fields",
    )
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="compute dtype override")
    overrides, rest = config_lib.split_overrides(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(rest)
    from baryir_jax.data.images import ImageProblem
    from baryir_jax.evaluate.checkpoint import load_restorer

    if overrides and not args.config:
        raise UsageError(f"{overrides[0]}: --config.KEY overrides need --config FILE")

    t0 = time.perf_counter()
    try:
        check_tiling(args.tile, args.overlap)
        if args.batch < 1:
            raise ValueError(f"--batch must be at least 1, got {args.batch}.")
        if not os.path.exists(args.input):
            raise ValueError(f"--input {args.input}: no such file or folder.")
        out_root = os.path.abspath(args.output)
        problem = check_output(args.output)
        if problem:
            raise ValueError(problem)
        inside = os.path.isdir(args.input) and _real(out_root).startswith(_real(args.input) + os.sep)
        exclude = out_root if inside else None
        inputs, ignored = find_inputs(args.input, exclude=exclude)
        if not inputs:
            raise ValueError(
                f"--input {args.input}: no image files found (looked for {', '.join(RESTORABLE_EXTENSIONS)})"
                + (f"; {len(ignored)} other file(s) ignored: {name_some(ignored)}" if ignored else "")
                + "."
            )
        plan, skipped = plan_destinations(inputs, out_root, input_tree_files(args.input, exclude))
        config = config_lib.load(args.config, overrides) if args.config else None
        restorer = load_restorer(args.checkpoint, config, args.dtype)
    except ValueError as e:  # an argument that cannot work (exit 1, as it always was); config problems: 2
        if isinstance(e, BaryIRError):
            raise
        raise InputError(str(e)) from None
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    done, renamed, stopped = 0, 0, None
    for i, (path, rel, dest, why) in enumerate(plan):
        try:
            rgb, alpha, gray, note = read_image(path)
        except ImageProblem as e:
            skipped.append(f"{path}: {e.message}")
            print(f"skipped {path}: {e.message}", file=sys.stderr)
            continue
        t = time.perf_counter()
        h, w = rgb.shape[:2]
        out = restore_image(restorer, rgb, args.tile, args.overlap, args.batch)
        notes = [note] if note else []
        icc = icc_profile(path)
        if icc is not None and not profile_fits(icc, gray):
            space = icc[16:20].decode("latin-1").strip()
            notes.append(f"its {space} colour profile dropped: the output is {'grayscale' if gray else 'RGB'}")
            icc = None
        elif icc is not None:
            notes.append("colour profile kept")
        try:
            write_image(dest, out, alpha, gray, icc)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                stopped = f"the disk is full: {dest} could not be written (no partial file was left)"
                not_attempted = len(plan) - i - 1
                break
            skipped.append(f"{path}: cannot write {dest} ({e.strerror or e})")
            print(f"skipped {path}: cannot write {dest} ({e.strerror or e})", file=sys.stderr)
            continue
        done += 1
        if why:
            renamed += 1
            notes.append(why)
        n_tiles = tile_count(h, w, args.tile, args.overlap)
        print(
            f"{rel}: {w}x{h}, {n_tiles} tile(s), {time.perf_counter() - t:.1f} s -> {dest}"
            + (f" ({'; '.join(notes)})" if notes else "")
        )
    if stopped:
        print(f"baryir-restore: stopped: {stopped}", file=sys.stderr)
    total = time.perf_counter() - t0
    print(
        f"restored {done} image(s), skipped {len(skipped)} (unreadable, corrupt, refused or not writable)"
        + (f", {renamed} renamed so that nothing is overwritten" if renamed else "")
        + (f", ignored {len(ignored)} non-image file(s): {name_some(ignored)}" if ignored else "")
        + (f"; STOPPED by a full disk, {not_attempted + 1} image(s) not written" if stopped else "")
        + f"; {len(restorer.shapes)} compiled shape(s) {sorted(s[1:3] for s in restorer.shapes)}; "
        f"{total:.1f} s in all; peak RSS {peak_rss_mib():.0f} MiB"
    )
    for line in skipped:
        print(f"  skipped: {line}")
    if stopped:
        return 2
    return 0 if done else 1


run = cli.console(PROG, _main)  # console-script entry point


if __name__ == "__main__":
    run()
