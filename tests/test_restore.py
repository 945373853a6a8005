"""Tiled restoration: exact tiling/blending, tiled vs whole-image PSNR, the baryir-restore CLI on awkward files,
and a converted official checkpoint."""

import io
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as sk_psnr

from baryir_jax.evaluate import restore
from baryir_jax.evaluate.checkpoint import load_restorer, numpy_init
from baryir_jax.models import BaryNet

TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from baryir_jax.models.io import save_model_checkpoint

    d = tmp_path_factory.mktemp("restore") / "ckpt"
    save_model_checkpoint(str(d), numpy_init(BaryNet(**TINY), 0), TINY, extra={"step": 100})
    return str(d)


def test_tile_starts_cover_and_end_flush():
    assert restore.tile_starts(100, 128, 16) == [0]
    assert restore.tile_starts(128, 128, 16) == [0]
    s = restore.tile_starts(1000, 512, 32)
    assert s == [0, 480, 488]
    for size, tile, ov in [(4000, 512, 32), (3000, 512, 32), (97, 32, 8), (64, 32, 0)]:
        s = restore.tile_starts(size, tile, ov)
        covered = np.zeros(size, bool)
        for a in s:
            covered[a : a + tile] = True
        assert covered.all() and s[-1] == size - tile and all(b - a <= tile - ov for a, b in zip(s, s[1:]))
    first, last = restore.axis_weight(0, 512, 1000, 32), restore.axis_weight(488, 512, 1000, 32)
    assert first[0] == 1.0 and first[-1] < 0.01 and last[0] < 0.01 and last[-1] == 1.0  # ramps only towards neighbours
    assert min(first.min(), last.min()) > 0


@pytest.mark.parametrize(
    "shape,tile,overlap,batch",
    [((100, 70), 32, 8, 1), ((64, 200), 48, 16, 3), ((37, 29), 32, 8, 2), ((50, 50), 0, 0, 1)],
)
def test_identity_network_reconstructs_exactly_with_one_tile_shape(shape, tile, overlap, batch):
    img = np.random.default_rng(0).uniform(0, 1, shape + (3,)).astype(np.float32)
    seen = set()

    def net(x):  # an identity network that records the shapes it is given
        seen.add(x.shape)
        return x.copy()

    out = restore.restore_float(net, img, tile, overlap, batch)
    assert out.shape == img.shape
    np.testing.assert_allclose(out, img, atol=2e-6)
    assert len(seen) == 1
    ((n, h, w, c),) = seen
    assert h % 8 == 0 and w % 8 == 0 and n == (batch if tile and max(shape) > tile else 1)


def test_tiled_psnr_within_0_1_db_of_whole_image(ckpt):
    r = load_restorer(ckpt)
    clean = data.chelsea()[40:136, 100:212]  # 96 x 112
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    whole = restore.restore_image(r, noisy, tile=0)
    tiled = restore.restore_image(r, noisy, tile=48, overlap=16)
    assert r.shapes == {(1, 96, 112, 3), (1, 48, 48, 3)}
    p_whole, p_tiled = sk_psnr(clean, whole, data_range=255), sk_psnr(clean, tiled, data_range=255)
    assert abs(p_whole - p_tiled) <= 0.1, (p_whole, p_tiled)
    assert not np.array_equal(tiled, noisy)  # the network did run
    # hard tile seams (no overlap) are further from the whole-image result than blended ones
    hard = restore.restore_image(r, noisy, tile=48, overlap=0)
    assert sk_psnr(whole, tiled, data_range=255) > sk_psnr(whole, hard, data_range=255)


def _png_bytes(img, mode=None):
    buf = io.BytesIO()
    (Image.fromarray(img, mode) if mode else Image.fromarray(img)).save(buf, format="PNG")
    return buf.getvalue()


def test_cli_handles_gray_rgba_16bit_exif_and_corrupt_files(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photo = data.astronaut()
    rgb = photo[:56, :64]
    Image.fromarray(rgb).save(src / "rgb.png")
    Image.fromarray(data.camera()[:64, :56]).save(src / "gray.png")
    alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (56, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src / "sub" / "rgba.png")
    Image.fromarray(data.camera()[:56, :64].astype(np.uint16) * 257).save(src / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate: stored 56x64, displayed 64x56
    Image.fromarray(photo[100:156, :64]).save(src / "phone.jpg", exif=exif.tobytes(), quality=95)
    (src / "broken.png").write_bytes(_png_bytes(rgb)[:200])
    (src / "notes.txt").write_text("not an image")
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[::-1])]  # an animated GIF: its first frame is restored
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    rc = restore.main(
        [
            "--checkpoint",
            ckpt,
            "--input",
            str(src),
            "--output",
            str(out),
            "--tile",
            "48",
            "--overlap",
            "16",
            "--batch",
            "2",
        ]
    )
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "restored 6 image(s), skipped 1" in cap.out and "ignored 1 non-image file(s): notes.txt" in cap.out
    rgba_line = next(line for line in cap.out.splitlines() if line.startswith(os.path.join("sub", "rgba.png")))
    assert "alpha kept" in rgba_line and "dropped" not in rgba_line, rgba_line
    gif_line = next(line for line in cap.out.splitlines() if line.startswith("anim.gif"))
    assert "first of 2 frames used" in gif_line, gif_line
    assert "broken.png" in cap.err and "peak RSS" in cap.out
    assert "1 compiled shape(s) [(48, 48)]" in cap.out  # every image larger than a tile: one shape
    with Image.open(out / "rgb.png") as im:
        assert im.mode == "RGB" and im.size == (64, 56)
    with Image.open(out / "gray.png") as im:
        assert im.mode == "L" and im.size == (56, 64)
    with Image.open(out / "sub" / "rgba.png") as im:
        assert im.mode == "RGBA" and np.array_equal(np.asarray(im)[..., 3], alpha)
    with Image.open(out / "deep16.png") as im:
        assert im.mode == "L" and im.size == (64, 56)
    with Image.open(out / "phone.png") as im:
        assert im.size == (56, 64)  # EXIF orientation 6 applied: 64 wide stored, shown 56 wide
    assert not (out / "broken.png").exists()
    with Image.open(out / "anim.png") as im:
        assert im.mode == "RGB" and im.size == (64, 56)


def test_cli_errors_are_clear(ckpt, tmp_path, capsys):
    assert restore.main(["--checkpoint", ckpt, "--input", str(tmp_path / "none"), "--output", str(tmp_path)]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    assert (
        restore.main(
            ["--checkpoint", ckpt, "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o"), "--tile", "50"]
        )
        == 1
    )
    assert "multiple of 8" in capsys.readouterr().err
    assert (
        restore.main(
            [
                "--checkpoint",
                ckpt,
                "--input",
                str(tmp_path / "a.png"),
                "--output",
                str(tmp_path / "o"),
                "--tile",
                "64",
                "--overlap",
                "64",
            ]
        )
        == 1
    )
    assert "--overlap must be in [0, tile)" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    assert (
        restore.main(["--checkpoint", ckpt, "--input", str(tmp_path / "bad.png"), "--output", str(tmp_path / "o")]) == 1
    )
    assert "restored 0 image(s), skipped 1" in capsys.readouterr().out


def test_converted_official_checkpoint_restores(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="torch writes the official-format checkpoint")
    import json

    from baryir_jax.convert import cli as convert_cli
    from baryir_jax.convert.pattern import pattern_state_dict

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "parity_official.npz")
    keys = json.loads(str(np.load(fixture)["meta"]))["keys"]["barynet"]
    sd = pattern_state_dict(keys)
    path = tmp_path / "official.pth"
    torch.save({"BaryIR": {k: torch.from_numpy(v) for k, v in sd.items()}}, str(path))
    conv = tmp_path / "converted"
    assert convert_cli.main(["--checkpoint", str(path), "--output", str(conv)]) == 0
    img = data.coffee()[:40, :40]
    Image.fromarray(img).save(tmp_path / "small.png")
    out = tmp_path / "out"
    rc = restore.main(["--checkpoint", str(conv), "--input", str(tmp_path / "small.png"), "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "restored 1 image(s), skipped 0" in capsys.readouterr().out
    restored = np.asarray(Image.open(out / "small.png"))
    assert restored.shape == img.shape and not np.array_equal(restored, img)
