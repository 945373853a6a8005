"""Image degradations in NumPy, deterministic given a seed or a `np.random.Generator`.

Every function takes and returns an `uint8` RGB image of shape (H, W, 3).

* `gaussian_noise` is the official BaryIR noise, bit for bit in its arithmetic: the float64 noise
  `N(0, 1) * sigma` is added to the uint8 image, the sum is clipped to [0, 255] and cast to uint8, and the
  cast **truncates** (100.9 becomes 100). Training adds it on the fly to 128² patches (degradation ids
  0, 1, 2 for sigma 15, 25, 50).
* `frozen_noisy` is the same noise with a generator seeded from the image name and sigma, so that every user
  evaluates on identical noisy inputs (see `frozen_noise_seed`).
* `rain_streaks`, `haze`, `motion_blur`, `low_light` synthesise the other four training degradations for
  the embedded data set; `jpeg` is an unseen degradation for the generalisation suite.

Parameters left as `None` are drawn from the generator in documented ranges; pass them explicitly to get a
fixed degradation.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from baryir_jax.data.images import decode_image

# Degradation ids used throughout the project (official numbering).
DEGRADATION_IDS = {
    "denoise_15": 0,
    "denoise_25": 1,
    "denoise_50": 2,
    "derain": 3,
    "dehaze": 4,
    "deblur": 5,
    "lowlight": 6,
}
NOISE_SIGMAS = {"denoise_15": 15.0, "denoise_25": 25.0, "denoise_50": 50.0}
FIRST_USER_ID = 7


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"{what} must be an uint8 RGB array of shape (H, W, 3); got dtype {image.dtype}, shape {image.shape}."
        )
    return image


def _rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(int(rng))


# ---------------------------------------------------------------------------------------------------------
# Gaussian noise (official)
# ---------------------------------------------------------------------------------------------------------
def gaussian_noise(clean: np.ndarray, sigma: float, rng: np.random.Generator | int) -> np.ndarray:
    """Official noise: `clip(clean + N(0,1)·sigma, 0, 255).astype(uint8)` (truncating cast), float64 noise."""
    clean = _check_image(clean, "clean")
    noise = _rng(rng).standard_normal(clean.shape)
    return np.clip(clean + noise * float(sigma), 0, 255).astype(np.uint8)


def frozen_noise_seed(name: str, sigma: float) -> int:
    """The seed of the frozen noise of one evaluation image: the first 8 bytes (big-endian) of
    `sha256(f'{name}|sigma={sigma:g}')`, with `name` the image file name without extension."""
    digest = hashlib.sha256(f"{name}|sigma={float(sigma):g}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def frozen_noisy(clean: np.ndarray, name: str, sigma: float) -> np.ndarray:
    """Deterministic official-style noisy image: generator `np.random.default_rng(frozen_noise_seed(name,
    sigma))` (PCG64), one `standard_normal(clean.shape)` draw, then `gaussian_noise`'s arithmetic."""
    return gaussian_noise(clean, sigma, np.random.default_rng(frozen_noise_seed(name, sigma)))


def seed_for(*parts: object) -> int:
    """A 64-bit seed from any parts (image name, task, variant...), stable across runs and platforms."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------
def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A normalised line (motion) kernel of the given length in pixels; angle 0 is horizontal, counter-clockwise.

    The line is sampled densely and splatted bilinearly, so non-integer lengths and any angle are smooth.
    Length <= 1 gives the identity kernel [[1]].
    """
    if length <= 1:
        return np.ones((1, 1), np.float64)
    size = int(math.ceil(length)) | 1  # odd
    kernel = np.zeros((size + 2, size + 2), np.float64)
    centre = (size + 1) / 2.0
    theta = math.radians(angle_deg)
    dx, dy = math.cos(theta), -math.sin(theta)  # image rows grow downwards
    for t in np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, int(4 * length) + 1):
        x, y = centre + t * dx, centre + t * dy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        kernel[y0, x0] += (1 - fx) * (1 - fy)
        kernel[y0, x0 + 1] += fx * (1 - fy)
        kernel[y0 + 1, x0] += (1 - fx) * fy
        kernel[y0 + 1, x0 + 1] += fx * fy
    rows = np.nonzero(kernel.sum(1))[0]
    cols = np.nonzero(kernel.sum(0))[0]
    kernel = kernel[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return kernel / kernel.sum()


def _convolve_rgb(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    out = np.empty(image.shape, np.float64)
    for c in range(image.shape[-1]):
        out[..., c] = ndimage.convolve(image[..., c], kernel, mode="reflect")
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Float in [0, 255] → uint8 with rounding (synthetic degradations; the official noise truncates)."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1]: a coarse random grid upsampled with cubic splines."""
    h, w = shape
    coarse = rng.random((cells, cells))
    field = ndimage.zoom(coarse, (h / cells, w / cells), order=3, mode="nearest", grid_mode=True)[:h, :w]
    field = field - field.min()
    return field / max(field.max(), 1e-8)


# ---------------------------------------------------------------------------------------------------------
# Synthetic degradations (embedded data, unseen suite)
# ---------------------------------------------------------------------------------------------------------
def rain_streaks(
    clean: np.ndarray,
    rng: np.random.Generator | int,
    *,
    density: float | None = None,
    length: float | None = None,
    angle_deg: float | None = None,
    intensity: float | None = None,
) -> np.ndarray:
    """Rain100L-like light rain: sparse drops smeared along one direction, added by a screen blend.

    density: fraction of pixels that seed a streak, default U(0.004, 0.012);
    length: streak length in pixels, default U(8, 20) scaled by the image size / 256;
    angle_deg: streak direction from the vertical, default U(-25, 25);
    intensity: streak brightness in [0, 1], default U(0.55, 0.85).
    The result is `1 - (1 - x)(1 - s)` per pixel (x the image, s the streak layer), so rain only brightens.
    """
    clean = _check_image(clean, "clean")
    rng = _rng(rng)
    h, w = clean.shape[:2]
    scale = max(min(h, w) / 256.0, 0.5)
    density = rng.uniform(0.004, 0.012) if density is None else density
    length = rng.uniform(8, 20) * scale if length is None else length
    angle_deg = rng.uniform(-25, 25) if angle_deg is None else angle_deg
    intensity = rng.uniform(0.55, 0.85) if intensity is None else intensity
    drops = (rng.random((h, w)) < density) * rng.uniform(0.6, 1.0, (h, w))
    drops = ndimage.gaussian_filter(drops, 0.5)  # drop width about one pixel
    streaks = ndimage.convolve(drops, line_kernel(length, 90.0 + angle_deg), mode="wrap")
    peak = np.percentile(streaks[streaks > 0], 99) if np.any(streaks > 0) else 1.0
    layer = np.clip(streaks / max(peak, 1e-8), 0, 1) * intensity
    x = clean.astype(np.float64) / 255.0
    out = 1.0 - (1.0 - x) * (1.0 - layer[..., None])
    return _to_uint8(out * 255.0)


def haze(
    clean: np.ndarray,
    rng: np.random.Generator | int,
    *,
    beta: float | None = None,
    airlight: float | np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """Atmospheric scattering model `I = J·t + A·(1 - t)`, transmission `t = exp(-beta·d)`.

    depth d in [0, 1] (H, W): default a vertical gradient (top far) blended with a smooth random field;
    beta: default U(0.8, 2.0) (t from 1 down to 0.45–0.14 at the farthest point);
    airlight A: default a near-white grey U(0.75, 0.95) per image, with a slight per-channel tint (±0.03).
    """
    clean = _check_image(clean, "clean")
    rng = _rng(rng)
    h, w = clean.shape[:2]
    beta = rng.uniform(0.8, 2.0) if beta is None else beta
    if airlight is None:
        airlight = rng.uniform(0.75, 0.95) + rng.uniform(-0.03, 0.03, 3)
    airlight = np.clip(np.broadcast_to(np.asarray(airlight, np.float64), (3,)), 0, 1)
    if depth is None:
        gradient = np.linspace(1.0, 0.0, h)[:, None] * np.ones((1, w))
        depth = 0.6 * gradient + 0.4 * _smooth_field((h, w), rng)
    depth = np.asarray(depth, np.float64)
    if depth.shape != (h, w):
        raise ValueError(f"depth must have shape {(h, w)}, got {depth.shape}.")
    t = np.exp(-beta * depth)[..., None]
    x = clean.astype(np.float64) / 255.0
    out = x * t + airlight * (1.0 - t)
    return _to_uint8(out * 255.0)


def motion_blur(
    clean: np.ndarray, rng: np.random.Generator | int, *, length: float | None = None, angle_deg: float | None = None
) -> np.ndarray:
    """Linear camera-shake blur: convolution with a line kernel (reflect borders).

    length: default U(7, 19) pixels scaled by the image size / 256; angle_deg: default U(0, 180).
    """
    clean = _check_image(clean, "clean")
    rng = _rng(rng)
    scale = max(min(clean.shape[:2]) / 256.0, 0.5)
    length = rng.uniform(7, 19) * scale if length is None else length
    angle_deg = rng.uniform(0, 180) if angle_deg is None else angle_deg
    return _to_uint8(_convolve_rgb(clean.astype(np.float64), line_kernel(length, angle_deg)))


def low_light(
    clean: np.ndarray,
    rng: np.random.Generator | int,
    *,
    gamma: float | None = None,
    scale: float | None = None,
    noise: float | None = None,
) -> np.ndarray:
    """Under-exposure: `y = scale · x^gamma` on [0, 1] values, plus signal-dependent sensor noise.

    gamma: default U(1.3, 2.0); scale: default U(0.12, 0.3); noise: read-noise std on [0, 1], default
    U(0.005, 0.015). The added Gaussian noise has std `sqrt(noise² + 0.002·y)` (read + shot noise);
    `noise=0` gives the noiseless darkening. Rounded to uint8.
    """
    clean = _check_image(clean, "clean")
    rng = _rng(rng)
    gamma = rng.uniform(1.3, 2.0) if gamma is None else gamma
    scale = rng.uniform(0.12, 0.3) if scale is None else scale
    noise = rng.uniform(0.005, 0.015) if noise is None else noise
    x = clean.astype(np.float64) / 255.0
    y = scale * np.power(x, gamma)
    if noise > 0:
        std = np.sqrt(noise**2 + 0.002 * y)
        y = y + rng.standard_normal(y.shape) * std
    return _to_uint8(y * 255.0)


def jpeg(clean: np.ndarray, quality: int) -> np.ndarray:
    """JPEG compression at `quality` (1–95) with Pillow's encoder (4:2:0 chroma subsampling), decoded back."""
    clean = _check_image(clean, "clean")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}.")
    buf = io.BytesIO()
    Image.fromarray(clean).save(buf, format="JPEG", quality=int(quality))
    return decode_image(buf.getvalue())


SYNTHESIZERS: dict[str, Callable[..., np.ndarray]] = {
    "derain": rain_streaks,
    "dehaze": haze,
    "deblur": motion_blur,
    "lowlight": low_light,
}


def synthesize(task: str, clean: np.ndarray, seed: int) -> np.ndarray:
    """Degrade `clean` for `task` ('derain', 'dehaze', 'deblur', 'lowlight', 'denoise_15/25/50') with a
    generator seeded by `seed`; all random parameters are drawn from it."""
    if task in NOISE_SIGMAS:
        return gaussian_noise(clean, NOISE_SIGMAS[task], np.random.default_rng(seed))
    if task not in SYNTHESIZERS:
        raise ValueError(
            f"unknown degradation task {task!r}; expected one of {sorted(SYNTHESIZERS) + sorted(NOISE_SIGMAS)}."
        )
    return SYNTHESIZERS[task](clean, np.random.default_rng(seed))
