"""PSNR and SSIM on uint8 images, computed as the official evaluation computes them, in jnp (jit-able, batched).

The official BaryIR evaluation saves the restored image and the target as 8-bit files and scores them with
scikit-image:

* ``peak_signal_noise_ratio(target, output, data_range=255)``: ``10·log10(255² / MSE)``, the MSE over all
  pixels and channels (``inf`` for identical images, as scikit-image);
* ``structural_similarity(target, output, channel_axis=2, data_range=255)``: per channel, a 7×7 **uniform**
  window, sample covariance (``49/48``), ``K1 = 0.01``, ``K2 = 0.03``, the SSIM map cropped by 3 pixels on
  every side (the windows that lie wholly inside the image), averaged; then the mean over the 3 channels.

Here the window sums are computed **exactly in int32** from the uint8 pixels (a 7×7 sum of squares is at most
3.2·10⁶, and the numerators ``49·Σx² − (Σx)²`` and ``2·Σx·Σy`` stay below 2³¹), so the float32 arithmetic that
follows only rounds, it never cancels: the results agree with scikit-image's float64 ones to about 1e-6 dB and
1e-7 SSIM.

``y_channel=True`` scores the BT.601 luma instead, ``Y = 16 + (65.481·R + 128.553·G + 24.966·B) / 255`` on
0–255 values, kept unrounded (MATLAB's ``rgb2ycbcr`` / BasicSR's ``test_y_channel`` convention), with the same
PSNR and uniform-window SSIM (``data_range=255``) on that one channel. Single-task deraining papers report Y;
the all-in-one tables (and BaryIR) report RGB.

``valid_hw`` scores only the top-left ``h × w`` region of each image (padded inputs of a shape bucket): the
result is the metric of the cropped image, without a recompilation per image size.

Inputs are ``uint8`` arrays of shape ``(..., H, W, 3)``; leading axes are a batch and the result has their
shape. :func:`quantize` turns a float [0, 1] image into the uint8 image the official code would save
(``torchvision.utils.save_image``: ``uint8(clamp(x·255 + 0.5, 0, 255))``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

WINDOW = 7  # scikit-image's default win_size
K1, K2 = 0.01, 0.03
DATA_RANGE = 255.0
_NP = WINDOW * WINDOW  # 49
_PAD = (WINDOW - 1) // 2
# BT.601 luma on 0-255 values, as integers over 255000: Y = 16 + (65481 R + 128553 G + 24966 B) / 255000.
_Y_WEIGHTS = (65481, 128553, 24966)
_Y_DEN = 255000.0


def quantize(x: jax.Array) -> jax.Array:
    """Float image in [0, 1] → uint8 exactly as the official code saves it: ``uint8(clamp(x·255 + 0.5, 0, 255))``
    (round half up; the float32 arithmetic is the same as torchvision's). NaN becomes 0."""
    x = jnp.asarray(x, jnp.float32)
    v = jnp.clip(x * jnp.float32(255.0) + jnp.float32(0.5), 0.0, 255.0)
    v = jnp.where(jnp.isnan(v), 0.0, v)
    return jnp.floor(v).astype(jnp.uint8)


def quantize_np(x: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`quantize` (same float32 arithmetic), for host-side images."""
    x = np.asarray(x, np.float32)
    v = np.clip(x * np.float32(255.0) + np.float32(0.5), 0.0, 255.0)
    v = np.where(np.isnan(v), 0.0, v)
    return np.floor(v).astype(np.uint8)


def _check_pair(a, b, fn: str):
    a, b = jnp.asarray(a), jnp.asarray(b)
    for name, x in (("a", a), ("b", b)):
        if x.dtype != jnp.uint8:
            raise TypeError(
                f"{fn}: {name} must be a uint8 image (H, W, 3) with values 0-255, got dtype {x.dtype}; "
                "turn a float [0, 1] image into the uint8 image the official evaluation scores with "
                "baryir_jax.evaluate.metrics.quantize first."
            )
        if x.ndim < 3 or x.shape[-1] != 3:
            raise ValueError(f"{fn}: {name} must have shape (..., H, W, 3) (RGB, channels last), got {tuple(x.shape)}.")
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: the two images differ in shape, {tuple(a.shape)} vs {tuple(b.shape)}; score a "
            "restored image against the target of the same size (trim or crop both alike)."
        )
    return a, b


def _flat(a):
    """(..., H, W, C) → (N, H, W, C) and the batch shape."""
    batch = a.shape[:-3]
    return a.reshape((-1,) + a.shape[-3:]), batch


def _valid_hw(valid_hw, batch, h, w):
    if valid_hw is None:
        return jnp.broadcast_to(jnp.array([h, w], jnp.int32), batch + (2,)).reshape(-1, 2)
    v = jnp.asarray(valid_hw, jnp.int32)
    if v.shape[-1:] != (2,):
        raise ValueError(f"valid_hw must be (height, width) pairs with shape (..., 2), got {tuple(v.shape)}.")
    return jnp.broadcast_to(v, batch + (2,)).reshape(-1, 2)


def _masked_mean(values, hw, offset: int):
    """Mean of values (N, H', W', C) over rows < h - offset and columns < w - offset of each image.

    Summed per row first (at most a few thousand terms), then over rows, to keep float32 rounding small."""
    n, hh, ww, c = values.shape
    rows = jnp.arange(hh)[None, :] < (hw[:, :1] - offset)  # (N, H')
    cols = jnp.arange(ww)[None, :] < (hw[:, 1:] - offset)  # (N, W')
    mask = (rows[:, :, None] & cols[:, None, :])[..., None]
    row_sums = jnp.sum(jnp.where(mask, values, 0.0), axis=(2, 3))  # (N, H')
    total = jnp.sum(row_sums, axis=1)
    count = (jnp.maximum(hw[:, 0] - offset, 0) * jnp.maximum(hw[:, 1] - offset, 0) * c).astype(jnp.float32)
    return total / count


def _luma_times_255000(x):
    """uint8 RGB (..., 3) → int32 (..., 1): 65481 R + 128553 G + 24966 B (the luma without its offset, × 255000)."""
    x = x.astype(jnp.int32)
    return (_Y_WEIGHTS[0] * x[..., 0] + _Y_WEIGHTS[1] * x[..., 1] + _Y_WEIGHTS[2] * x[..., 2])[..., None]


def psnr(a, b, *, y_channel: bool = False, valid_hw=None) -> jax.Array:
    """PSNR in dB of uint8 images ``(..., H, W, 3)``, as ``skimage.metrics.peak_signal_noise_ratio(a, b,
    data_range=255)``; symmetric in a and b. ``inf`` for identical images."""
    a, b = _check_pair(a, b, "psnr")
    a, batch = _flat(a)
    b, _ = _flat(b)
    hw = _valid_hw(valid_hw, batch, a.shape[1], a.shape[2])
    if y_channel:
        d = (_luma_times_255000(a) - _luma_times_255000(b)).astype(jnp.float32) / jnp.float32(_Y_DEN)
        sq = d * d
    else:
        d = a.astype(jnp.int32) - b.astype(jnp.int32)
        sq = (d * d).astype(jnp.float32)  # exact: at most 65025
    mse = _masked_mean(sq, hw, 0)
    return (10.0 * jnp.log10(jnp.float32(DATA_RANGE**2) / mse)).reshape(batch)


def _box_sum(x):
    """'valid' 7×7 window sums over axes 1, 2 of (N, H, W, C), separable (exact for int32)."""
    zero = jnp.array(0, x.dtype)
    x = jax.lax.reduce_window(x, zero, jax.lax.add, (1, WINDOW, 1, 1), (1, 1, 1, 1), "VALID")
    return jax.lax.reduce_window(x, zero, jax.lax.add, (1, 1, WINDOW, 1), (1, 1, 1, 1), "VALID")


def _ssim_map_exact(a, b):
    """SSIM map of the valid windows from exact int32 window sums of uint8 images (N, H, W, C)."""
    x, y = a.astype(jnp.int32), b.astype(jnp.int32)
    sx, sy = _box_sum(x), _box_sum(y)
    sxx, syy, sxy = _box_sum(x * x), _box_sum(y * y), _box_sum(x * y)
    f = lambda v: v.astype(jnp.float32)  # noqa: E731
    n2 = jnp.float32(_NP * _NP)  # means are S/49: products of two means are S·S/2401
    cov = jnp.float32(_NP * (_NP - 1))  # sample (co)variance: (49·Σxy − Σx·Σy) / (49·48)
    c1 = jnp.float32((K1 * DATA_RANGE) ** 2)
    c2 = jnp.float32((K2 * DATA_RANGE) ** 2)
    a1 = f(2 * sx * sy) / n2 + c1
    a2 = 2.0 * f(_NP * sxy - sx * sy) / cov + c2
    b1 = f(sx * sx + sy * sy) / n2 + c1
    b2 = f(_NP * sxx - sx * sx + _NP * syy - sy * sy) / cov + c2
    return (a1 * a2) / (b1 * b2)


def _ssim_map_float(x, y):
    """SSIM map of the valid windows for float32 single-channel images (N, H, W, 1) (the luma). The values are
    centred on 128 before the window sums to keep the variance cancellation small."""
    x = x - 128.0
    y = y - 128.0
    sx, sy = _box_sum(x), _box_sum(y)
    sxx, syy, sxy = _box_sum(x * x), _box_sum(y * y), _box_sum(x * y)
    ux, uy = sx / _NP + 128.0, sy / _NP + 128.0
    cov_norm = _NP / (_NP - 1.0)
    vx = cov_norm * (_NP * sxx - sx * sx) / (_NP * _NP)
    vy = cov_norm * (_NP * syy - sy * sy) / (_NP * _NP)
    vxy = cov_norm * (_NP * sxy - sx * sy) / (_NP * _NP)
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(a, b, *, y_channel: bool = False, valid_hw=None) -> jax.Array:
    """Mean SSIM of uint8 images ``(..., H, W, 3)``, as ``skimage.metrics.structural_similarity(a, b,
    channel_axis=2, data_range=255)`` (7×7 uniform window, sample covariance, mean over channels)."""
    a, b = _check_pair(a, b, "ssim")
    a, batch = _flat(a)
    b, _ = _flat(b)
    h, w = a.shape[1], a.shape[2]
    if h < WINDOW or w < WINDOW:
        raise ValueError(
            f"ssim: images must be at least {WINDOW}x{WINDOW} pixels (the 7x7 window of scikit-image), got {h}x{w}."
        )
    hw = _valid_hw(valid_hw, batch, h, w)
    if y_channel:
        ya = 16.0 + _luma_times_255000(a).astype(jnp.float32) / jnp.float32(_Y_DEN)
        yb = 16.0 + _luma_times_255000(b).astype(jnp.float32) / jnp.float32(_Y_DEN)
        smap = _ssim_map_float(ya, yb)
    else:
        smap = _ssim_map_exact(a, b)
    return _masked_mean(smap, hw, 2 * _PAD).reshape(batch)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """NumPy float64 BT.601 luma of a uint8 RGB image (H, W, 3) → (H, W), on 0–255 values (unrounded)."""
    x = np.asarray(image, np.float64)
    return 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0
