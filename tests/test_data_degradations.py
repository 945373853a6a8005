"""Degradations: the official noise arithmetic, the frozen-noise protocol, and the synthetic degradations'
physics (checked against the formulas they document, not against their own output)."""

import hashlib

import numpy as np
import pytest

from baryir_jax.data import degradations as D
from baryir_jax.data.images import augment, crop_to_multiple


def smooth_image(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(x / 9.0)[..., None] * np.cos(y / 7.0)[..., None] + rng.normal(0, 3, (h, w, 3))
    return np.clip(base + np.array([0, 20, -20]), 0, 255).astype(np.uint8)


def test_official_noise_adds_clips_and_truncates():
    clean = np.full((16, 16, 3), 100, np.uint8)
    clean[0, :4] = np.array([250, 3, 128, 0])[:, None]  # values near both clipping ends
    out = D.gaussian_noise(clean, 25, np.random.default_rng(7))
    z = np.random.default_rng(7).standard_normal(clean.shape)  # float64, one draw of the image's shape
    v = np.clip(clean.astype(np.float64) + z * 25, 0, 255)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.floor(v).astype(np.uint8))  # v >= 0: truncation is floor
    assert np.any(np.rint(v) != np.floor(v)), "the check must be able to tell truncation from rounding"
    assert out.min() == 0 and out.max() == 255  # both clips happen at sigma 25 next to 3/0 and 250
    # an int seed is the same as default_rng(seed)
    np.testing.assert_array_equal(D.gaussian_noise(clean, 25, 7), out)


def test_noise_rejects_non_uint8_rgb():
    with pytest.raises(ValueError, match="uint8 RGB"):
        D.gaussian_noise(np.zeros((4, 4, 3), np.float32), 15, 0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        D.gaussian_noise(np.zeros((4, 4), np.uint8), 15, 0)


def test_frozen_noise_protocol_is_name_and_sigma_seeded():
    clean = smooth_image()
    expected_seed = int.from_bytes(hashlib.sha256(b"0000|sigma=25").digest()[:8], "big")
    assert D.frozen_noise_seed("0000", 25) == expected_seed
    assert D.frozen_noise_seed("0000", 25.0) == expected_seed
    z = np.random.default_rng(expected_seed).standard_normal(clean.shape)
    expected = np.floor(np.clip(clean + z * 25.0, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(D.frozen_noisy(clean, "0000", 25), expected)
    assert not np.array_equal(D.frozen_noisy(clean, "0001", 25), expected)
    assert not np.array_equal(D.frozen_noisy(clean, "0000", 15), D.frozen_noisy(clean, "0000", 25))


def test_haze_follows_the_scattering_model():
    clean = smooth_image()
    np.testing.assert_array_equal(D.haze(clean, 0, beta=0.0), clean)  # t = 1 everywhere
    depth = np.full(clean.shape[:2], 0.5)
    out = D.haze(clean, 0, beta=1.2, airlight=0.9, depth=depth)
    t = np.exp(-1.2 * 0.5)
    expected = np.clip(np.rint((clean / 255.0 * t + 0.9 * (1 - t)) * 255), 0, 255)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    thick = D.haze(clean, 0, beta=3.0, airlight=0.9, depth=depth)
    assert np.abs(thick / 255.0 - 0.9).mean() < np.abs(out / 255.0 - 0.9).mean()  # denser haze → closer to A
    with pytest.raises(ValueError, match="depth must have shape"):
        D.haze(clean, 0, depth=np.zeros((3, 3)))


def test_motion_blur_acts_along_its_direction_only():
    rows = np.repeat(np.linspace(0, 255, 40).astype(np.uint8)[:, None], 50, axis=1)
    img = np.repeat(rows[..., None], 3, axis=-1)  # constant along each row
    np.testing.assert_array_equal(D.motion_blur(img, 0, length=9, angle_deg=0), img)  # horizontal: no change
    vertical = D.motion_blur(img, 0, length=9, angle_deg=90)
    assert np.abs(vertical[5:-5].astype(int) - img[5:-5]).max() <= 1  # a linear ramp is kept by a symmetric blur
    step = np.zeros((40, 50, 3), np.uint8)
    step[20:] = 255
    blurred = D.motion_blur(step, 0, length=9, angle_deg=90)
    assert 0 < blurred[18, 25, 0] < 255 and 0 < blurred[21, 25, 0] < 255  # the edge is smeared vertically
    np.testing.assert_array_equal(D.motion_blur(step, 0, length=9, angle_deg=0), step)
    np.testing.assert_array_equal(D.motion_blur(img, 0, length=1, angle_deg=33), img)


def test_line_kernel_is_normalised_and_oriented():
    k = D.line_kernel(7, 0)
    assert k.shape[0] == 1 and k.shape[1] >= 7 and abs(k.sum() - 1) < 1e-12
    kv = D.line_kernel(7, 90)
    assert kv.shape[1] == 1 and kv.shape[0] >= 7


def test_rain_only_brightens_and_is_seeded():
    clean = smooth_image()
    a, b, c = D.rain_streaks(clean, 3), D.rain_streaks(clean, 3), D.rain_streaks(clean, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(a.astype(int) >= clean.astype(int) - 1)  # screen blend (±1 rounding)
    assert (a.astype(int) - clean > 10).mean() > 0.01  # visible streaks


def test_low_light_gamma_scale_and_noise():
    clean = smooth_image()
    out = D.low_light(clean, 0, gamma=1.5, scale=0.2, noise=0.0)
    expected = np.clip(np.rint(0.2 * np.power(clean / 255.0, 1.5) * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    noisy = D.low_light(clean, 1)
    assert noisy.mean() < 0.45 * clean.mean()


def test_jpeg_quality_orders_the_error():
    clean = smooth_image()

    def psnr(x):
        return 10 * np.log10(255**2 / np.mean((x.astype(float) - clean) ** 2))

    hi, lo = D.jpeg(clean, 95), D.jpeg(clean, 10)
    assert hi.shape == clean.shape and hi.dtype == np.uint8
    assert psnr(hi) > 35 and psnr(lo) < psnr(hi) - 5
    with pytest.raises(ValueError, match="quality"):
        D.jpeg(clean, 0)


def test_synthesize_is_deterministic_per_seed_and_rejects_unknown_tasks():
    clean = smooth_image()
    for task in ["derain", "dehaze", "deblur", "lowlight", "denoise_15", "denoise_25", "denoise_50"]:
        a, b = D.synthesize(task, clean, 11), D.synthesize(task, clean, 11)
        assert a.dtype == np.uint8 and a.shape == clean.shape
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, clean)
    with pytest.raises(ValueError, match="unknown degradation task"):
        D.synthesize("desnow", clean, 0)


def test_official_augmentation_modes():
    x = np.arange(6).reshape(2, 3, 1)
    expect = {
        0: x,
        1: x[::-1],
        2: np.rot90(x, 1),
        3: np.rot90(x, 1)[::-1],
        4: np.rot90(x, 2),
        5: np.rot90(x, 2)[::-1],
        6: np.rot90(x, 3),
        7: np.rot90(x, 3)[::-1],
    }
    for m, e in expect.items():
        np.testing.assert_array_equal(augment(x, m), e)
    # rot90 is counter-clockwise in the (H, W) plane: the top-right element goes to the top-left
    assert augment(x, 2)[0, 0, 0] == 2
    y = np.arange(12).reshape(3, 4, 1)
    outs = {(augment(y, m).shape, augment(y, m).tobytes()) for m in range(8)}
    assert len(outs) == 8
    with pytest.raises(ValueError):
        augment(x, 8)


def test_crop_to_multiple_matches_the_official_centre_crop():
    img = np.arange(37 * 50).reshape(37, 50, 1)
    out = crop_to_multiple(img, 16)
    assert out.shape[:2] == (32, 48)
    # rows: h % 16 = 5 → start 2, end 37 - 5 + 2 = 34; cols: 50 % 16 = 2 → start 1
    np.testing.assert_array_equal(out, img[2:34, 1:49])
