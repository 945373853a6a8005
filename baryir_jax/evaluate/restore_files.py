"""The files of ``baryir-restore``: finding the input images (:func:`find_inputs`), planning every destination
before anything is written so that no input is overwritten and no two inputs share a name
(:func:`plan_destinations`), checking the output folder (:func:`check_output`), reading an image with its alpha,
EXIF orientation and ICC colour profile (:func:`read_image`, :func:`icc_profile`), and writing the PNG atomically
(:func:`write_image`, :func:`write_file_atomically`). The tiling and the command are in
:mod:`baryir_jax.evaluate.restore`, which re-exports these names."""

from __future__ import annotations

import collections
import io
import itertools
import os
import stat

import numpy as np
from PIL import Image

from baryir_jax import cli
from baryir_jax.data.images import IMAGE_EXTENSIONS

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


# Restored besides the training formats: a GIF (its first frame; the line of the image says so).
EXTRA_EXTENSIONS = (".gif",)
RESTORABLE_EXTENSIONS = IMAGE_EXTENSIONS + EXTRA_EXTENSIONS


def is_restorable(name: str) -> bool:
    """A file name ``baryir-restore`` takes: the training image formats (`baryir_jax.data.images`) and GIF."""
    from baryir_jax.data.images import is_image_file

    return is_image_file(name) or (name.lower().endswith(EXTRA_EXTENSIONS) and not name.startswith("."))


def find_inputs(path: str, exclude: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """[(file, relative path)] of the image files at `path` (a file or a folder, searched recursively, not into
    `exclude`) and the relative paths of the other files, which are ignored (hidden files are not listed). Image
    names that are not regular files are listed too: reading them is refused (a counted skip), see
    `baryir_jax.data.images.read_regular_file`."""
    if not os.path.isdir(path):
        return [(path, os.path.basename(path))], []
    skip = os.path.realpath(exclude) if exclude else None
    found, ignored = [], []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) != skip)
        for f in sorted(files):
            full = os.path.join(root, f)
            if is_restorable(f):
                found.append((full, os.path.relpath(full, path)))
            elif not f.startswith("."):
                ignored.append(os.path.relpath(full, path))
    return found, ignored


def name_some(names: list[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def input_tree_files(path: str, exclude: str | None = None) -> set[str]:
    """Real paths of every file under the input (or the input file itself), not under `exclude` (an output folder
    inside the input folder): destinations never land on one."""
    if not os.path.isdir(path):
        return {_real(path)}
    skip, found = os.path.realpath(exclude) if exclude else None, set()
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) != skip]
        found.update(_real(os.path.join(root, f)) for f in files)
    return found


def plan_destinations(
    inputs: list[tuple[str, str]], out_root: str, protected: set[str]
) -> tuple[list[tuple[str, str, str, str | None]], list[str]]:
    """Choose every destination before anything is written: → ([(input, rel, destination, why renamed or
    None)], [skip reasons]). An input's natural destination is ``<out_root>/<rel without extension>.png``; it is
    used when no other input maps to it and it is not a `protected` (input) file; otherwise the input gets
    ``<stem>_<ext>.png`` (then ``_2``, ``_3`` …), avoiding every input and every other destination. A destination
    that exists as something other than a file (a folder) is a skip."""
    natural = {path: os.path.join(out_root, os.path.splitext(rel)[0] + ".png") for path, rel in inputs}
    counts = collections.Counter(_real(d) for d in natural.values())
    taken = set(protected)
    plan: dict[str, tuple[str, str | None]] = {}
    for path, _ in inputs:
        dest = natural[path]
        if counts[_real(dest)] == 1 and _real(dest) not in protected:
            plan[path] = (dest, None)
            taken.add(_real(dest))
    for path, rel in inputs:
        if path in plan:
            continue
        dest = natural[path]
        why = "an input file has that name" if _real(dest) in protected else "another input restores to that name"
        stem, ext = os.path.splitext(rel)
        tag = ext[1:].lower() or "none"
        for n in itertools.count(1):
            cand = os.path.join(out_root, f"{stem}_{tag}{'' if n == 1 else f'_{n}'}.png")
            if _real(cand) not in taken:
                break
        plan[path] = (cand, f"not {os.path.basename(dest)}: {why}")
        taken.add(_real(cand))
    out, skipped = [], []
    for path, rel in inputs:
        dest, why = plan[path]
        try:
            st = os.lstat(dest)
        except OSError:
            st = None
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            from baryir_jax.data.images import file_kind

            skipped.append(f"{path}: the destination {dest} exists and is {file_kind(st.st_mode)}; move it away")
            continue
        out.append((path, rel, dest, why))
    return out, skipped


def check_output(out: str) -> str | None:
    """Why `out` cannot receive the restored images, or None; creates nothing (a probe file is written and
    removed, so permissions, a read-only file system and a full disk show here, also for root)."""
    if os.path.lexists(out) and not os.path.isdir(out):
        return f"--output {out} exists and is not a folder; choose a folder"
    return cli.output_write_problem(out, out, ".baryir-restore-probe-", "is a file, not a folder")


def icc_profile(path: str) -> bytes | None:
    """The ICC colour profile embedded in an image file (PNG iCCP, JPEG APP2, TIFF, WebP), or None."""
    from baryir_jax.data.images import read_regular_file

    try:
        with Image.open(io.BytesIO(read_regular_file(path))) as im:
            icc = im.info.get("icc_profile")
    except Exception:  # noqa: BLE001 - the image itself was read already; no profile then
        return None
    return icc if isinstance(icc, bytes) and len(icc) >= 128 else None


def profile_fits(icc: bytes, grayscale: bool) -> bool:
    """Whether an ICC profile's colour space (header bytes 16-19) is the output's: 'GRAY' or 'RGB '."""
    return icc[16:20] == (b"GRAY" if grayscale else b"RGB ")


def read_image(path: str):
    """→ (uint8 RGB (H, W, 3), alpha uint8 (H, W) or None, grayscale: bool, note or None). Raises
    `ImageProblem` for files that cannot be used (also for anything that is not a regular file)."""
    from baryir_jax.data.images import ImageProblem, load_image_bytes, read_regular_file

    raw = read_regular_file(path)
    loaded = load_image_bytes(raw)
    rgb = loaded.decode()
    alpha, orientation = None, 1
    try:
        with Image.open(io.BytesIO(raw)) as im:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
                alpha = np.asarray(im.convert("RGBA").getchannel("A"))
    except Exception as e:  # noqa: BLE001 - load_image_bytes already decoded it; a metadata problem is not fatal
        raise ImageProblem("unreadable", f"cannot read its metadata: {type(e).__name__}: {e}") from None
    notes = [loaded.conversion] if loaded.conversion else []
    if alpha is not None:  # the shared decoder drops alpha (training input); here it goes back into the output
        notes = [n.replace("alpha dropped", "alpha kept") for n in notes]
    if orientation in _ORIENT:
        rgb = np.asarray(Image.fromarray(rgb).transpose(_ORIENT[orientation]))
        if alpha is not None:
            alpha = np.asarray(Image.fromarray(alpha).transpose(_ORIENT[orientation]))
        notes.append(f"EXIF orientation {orientation} applied")
    return rgb, alpha, loaded.single_channel, "; ".join(notes) or None


def encode_image(rgb: np.ndarray, alpha: np.ndarray | None, grayscale: bool, icc: bytes | None = None) -> bytes:
    """PNG bytes of the restored image: grayscale as L/LA, colour as RGB/RGBA, with the ICC profile if given."""
    im = Image.fromarray(rgb)
    if grayscale:
        im = im.convert("LA") if alpha is not None else im.convert("L")
        if alpha is not None:
            im.putalpha(Image.fromarray(alpha))
    elif alpha is not None:
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(alpha))
    buf = io.BytesIO()
    im.save(buf, format="PNG", **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()


def write_file_atomically(path: str, data: bytes) -> None:
    """Write `data` to a hidden temporary file next to `path`, fsync it, then rename it onto `path`: `path` is
    never a partial file. On any error the temporary file (and any folder made for it) is removed and the error
    (OSError) raised."""
    folder = os.path.dirname(path) or "."
    created = []  # folders made here, innermost first, removed again if the write fails
    probe = os.path.abspath(folder)
    while not os.path.lexists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    base, tmp = os.path.basename(path), None
    try:
        os.makedirs(folder, exist_ok=True)
        for n in itertools.count():
            candidate = os.path.join(folder, f".{base}.{os.getpid()}.{n}.part")
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            tmp = candidate
            break
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        for d in created:
            try:
                os.rmdir(d)
            except OSError:
                break
        raise


def write_image(
    path: str, rgb: np.ndarray, alpha: np.ndarray | None, grayscale: bool, icc: bytes | None = None
) -> None:
    write_file_atomically(path, encode_image(rgb, alpha, grayscale, icc))
