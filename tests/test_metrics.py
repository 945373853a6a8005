"""Metrics against scikit-image (the official evaluation's implementation) on random and real images."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from baryir_jax.evaluate import metrics, psnr, quantize, ssim

PSNR_TOL, SSIM_TOL = 1e-4, 1e-5


def _ref(a, b, y=False):
    if y:  # BT.601 luma in float64, written out here (not through the code under test)
        w = np.array([65.481, 128.553, 24.966])
        ya = 16.0 + a.astype(np.float64) @ w / 255.0
        yb = 16.0 + b.astype(np.float64) @ w / 255.0
        return sk_psnr(ya, yb, data_range=255), sk_ssim(ya, yb, data_range=255)
    return sk_psnr(a, b, data_range=255), sk_ssim(a, b, channel_axis=2, data_range=255)


def _jpeg(img, q):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_random_images_batched_match_skimage():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 33, 47, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    b[2] = rng.integers(0, 256, b[2].shape)  # one pair unrelated
    for y in (False, True):
        p, s = np.asarray(psnr(a, b, y_channel=y)), np.asarray(ssim(a, b, y_channel=y))
        assert p.shape == s.shape == (3,)
        for i in range(3):
            rp, rs = _ref(a[i], b[i], y)
            assert abs(p[i] - rp) <= PSNR_TOL, (i, y, p[i], rp)
            assert abs(s[i] - rs) <= SSIM_TOL, (i, y, s[i], rs)


@pytest.mark.parametrize(
    "case", ["astronaut_noise", "astronaut_jpeg", "chelsea_plus_one", "camera_gray_blur", "coffee_vs_dark"]
)
def test_real_images_match_skimage(case):
    rng = np.random.default_rng(1)
    if case.startswith("astronaut"):
        a = data.astronaut()
        b = np.clip(a + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8) if case.endswith("noise") else _jpeg(a, 30)
    elif case == "chelsea_plus_one":  # PSNR near 48 dB, SSIM near 1: the cancellation-prone regime
        a = data.chelsea()
        b = np.clip(a.astype(int) + 1, 0, 255).astype(np.uint8)
    elif case == "camera_gray_blur":
        g = data.camera()
        a = np.repeat(g[..., None], 3, axis=-1)
        blurred = np.asarray(Image.fromarray(g).resize((256, 256)).resize(g.shape[::-1], Image.Resampling.BICUBIC))
        b = np.repeat(blurred[..., None], 3, axis=-1)
    else:
        a = data.coffee()
        b = (a // 4).astype(np.uint8)
    for y in (False, True):
        p, s = float(psnr(a, b, y_channel=y)), float(ssim(a, b, y_channel=y))
        rp, rs = _ref(a, b, y)
        assert abs(p - rp) <= PSNR_TOL, (case, y, p, rp)
        assert abs(s - rs) <= SSIM_TOL, (case, y, s, rs)


@pytest.mark.filterwarnings("ignore:divide by zero")
def test_identical_images_inf_and_one_like_skimage():
    a = data.chelsea()[:64, :64]
    assert np.isinf(float(psnr(a, a))) and np.isinf(sk_psnr(a, a, data_range=255))
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-7)


def test_valid_region_scores_the_crop_and_jit_agrees():
    rng = np.random.default_rng(2)
    big_a = rng.integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    big_b = rng.integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    hw = np.array([[33, 41], [40, 20]])
    f = jax.jit(lambda a, b, hw: (psnr(a, b, valid_hw=hw), ssim(a, b, valid_hw=hw)))
    p, s = f(big_a, big_b, hw)
    for i, (h, w) in enumerate(hw):
        rp, rs = _ref(big_a[i, :h, :w], big_b[i, :h, :w])
        assert abs(float(p[i]) - rp) <= PSNR_TOL and abs(float(s[i]) - rs) <= SSIM_TOL


def test_quantize_matches_the_official_save_arithmetic():
    # every uint8 value survives the official float round trip v/255 -> uint8(clamp(x*255+0.5))
    v = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(quantize(v.astype(np.float32) / np.float32(255))), v)
    x = np.array([-0.3, 0.0, 0.5 / 255, 0.49 / 255, 1.5 / 255, 0.5, 254.5 / 255, 1.0, 1.7, np.nan], np.float32)
    # round half up, clamp, NaN -> 0 (the values torchvision's save_image gives, computed by hand)
    np.testing.assert_array_equal(np.asarray(quantize(x)), [0, 0, 1, 0, 2, 128, 255, 255, 255, 0])
    np.testing.assert_array_equal(metrics.quantize_np(x), np.asarray(quantize(x)))
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(3).uniform(-0.1, 1.1, 10000).astype(np.float32)
    ref = torch.from_numpy(r).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(np.asarray(quantize(r)), ref)


def test_bad_inputs_get_clear_errors():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(TypeError, match="uint8.*quantize"):
        psnr(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(a, np.zeros((16, 17, 3), np.uint8))
    with pytest.raises(ValueError, match="channels last"):
        psnr(np.zeros((3, 16, 16), np.uint8), np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(np.zeros((5, 9, 3), np.uint8), np.zeros((5, 9, 3), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        psnr(a, a, valid_hw=jnp.array([1, 2, 3]))
