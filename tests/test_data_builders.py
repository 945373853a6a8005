"""TFDS builders from fake manual_dirs (real names and layouts, tiny images), read back through grain, and every
documented trap with its message."""

import hashlib
import json
import shutil
from pathlib import Path

import data_fakes as F
import grain
import numpy as np
import pytest
from PIL import Image

from baryir_jax.data import frozen, sources
from baryir_jax.data.prepare import main as prepare_main
from baryir_jax.data.prepare import prepare
from baryir_jax.data.report import DataError


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    return F.prepared_data(tmp_path_factory.getbasetemp())


def read_split(data_dir, dataset, split):
    """All records of a split through grain, as {name: record}."""
    ds = grain.MapDataset.source(sources.open_split(data_dir, dataset, split))
    out = {}
    for rec in ds:
        out[rec["name"].decode()] = rec
    return out


def quiet(*args, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("out", lambda s: None)
    return prepare(*args, **kwargs)


# (dataset, split) -> {stored name: (degraded file, clean file)} relative to the fake data/ tree
EXPECTED_PAIRS = {
    ("rain100l", "train"): {
        f"rain-{n}.png": (f"Train/Derain/rainy/rain-{n}.png", f"Train/Derain/gt/norain-{n}.png") for n in (1, 2, 3)
    },
    ("rain100l", "test"): {
        f"rain-{n:03d}.png": (
            f"test/derain/Rain100L/input/rain-{n:03d}.png",
            f"test/derain/Rain100L/target/norain-{n:03d}.png",
        )
        for n in (1, 2)
    },
    ("reside_ots", "train"): {
        "part1/0025_0.8_0.04.jpg": ("Train/Dehaze/synthetic/part1/0025_0.8_0.04.jpg", "Train/Dehaze/original/0025.jpg"),
        "part1/0025_1_0.2.jpg": ("Train/Dehaze/synthetic/part1/0025_1_0.2.jpg", "Train/Dehaze/original/0025.jpg"),
        "part2/0026_0.9_0.1.jpg": ("Train/Dehaze/synthetic/part2/0026_0.9_0.1.jpg", "Train/Dehaze/original/0026.jpg"),
    },
    ("sots_outdoor", "test"): {
        f"{s}_0.8_0.2.jpg": (f"test/dehaze/input/{s}_0.8_0.2.jpg", f"test/dehaze/target/{s}.png")
        for s in ("0001", "0002")
    },
    ("gopro", "train"): {
        n: (f"Train/Deblur/blur/{n}", f"Train/Deblur/sharp/{n}")
        for n in ("GOPR0372_07_00-000047.png", "GOPR0372_07_00-000048.png")
    },
    ("gopro", "test"): {
        "GOPR0384_11_00-000001.png": (
            "test/deblur/input/GOPR0384_11_00-000001.png",
            "test/deblur/target/GOPR0384_11_00-000001.png",
        )
    },
    ("lol_v1", "train"): {n: (f"Train/lowlight/low/{n}", f"Train/lowlight/high/{n}") for n in ("2.png", "5.png")},
    ("lol_v1", "eval15"): {"1.png": ("test/lowlight/eval15/low/1.png", "test/lowlight/eval15/high/1.png")},
}


@pytest.mark.parametrize("dataset,split", sorted(EXPECTED_PAIRS))
def test_paired_builders_read_back_exactly(prepared, dataset, split):
    tree = prepared["tree"]
    got = read_split(prepared["data_dir"], dataset, split)
    expected = EXPECTED_PAIRS[(dataset, split)]
    assert sorted(got) == sorted(expected)
    for name, (deg, clean) in expected.items():
        np.testing.assert_array_equal(got[name]["degraded"], F.read(tree / deg))
        np.testing.assert_array_equal(got[name]["clean"], F.read(tree / clean))


def test_denoise_train_recognises_prefixed_and_unprefixed_bsd400(prepared):
    got = read_split(prepared["data_dir"], "denoise_train", "train")
    assert sorted(got) == ["00001.bmp", "00002.bmp", "00003.bmp", "247012.jpg", "a100007.jpg"]
    assert "degraded" not in got["00001.bmp"]  # clean only
    np.testing.assert_array_equal(got["247012.jpg"]["clean"], F.read(prepared["tree"] / "Train/Denoise/247012.jpg"))
    report = prepared["results"]["denoise_train"].report
    assert any("without the `a` prefix" in n and "247012.jpg" in n for n in report.notes)
    assert any("BSD400: 2 images found, the set has 400" in w for w in report.warnings)
    assert report.count("missing") == 4744 - 3  # WED 00004..04744 listed as missing
    stored = json.loads((prepared["results"]["denoise_train"].path / "prepare_report.json").read_text())
    assert stored["counts"]["missing"] == 4741 and stored["written"] == {"train": 5}


def test_counts_are_compared_with_the_standard_sets(prepared):
    report = prepared["results"]["rain100l"].report
    assert report.expected == {"train": 200, "test": 100}
    assert any("train: 3 examples written, the standard set has 200 (197 fewer)" in w for w in report.warnings)
    text = report.render()
    assert "validation summary" in text and "missing files: 197" in text
    assert "listed in the official rainTrain index, not found" in text
    ots = prepared["results"]["reside_ots"].report
    assert any("OTS subset" in w and "35 hazy versions" in w for w in ots.warnings)


def test_cbsd68_frozen_noisy_inputs_and_manifest(prepared, tmp_path):
    data_dir, tree = prepared["data_dir"], prepared["tree"]
    for sigma in (15, 25, 50):
        got = read_split(data_dir, "cbsd68", f"sigma{sigma}")
        assert sorted(got) == ["0000.png", "0001.png", "0002.png"]
        for name, rec in got.items():
            clean = F.read(tree / "test/denoise/cbsd68" / name)
            np.testing.assert_array_equal(rec["clean"], clean)
            seed = int.from_bytes(hashlib.sha256(f"{name[:-4]}|sigma={sigma}".encode()).digest()[:8], "big")
            z = np.random.default_rng(seed).standard_normal(clean.shape)
            expected = np.floor(np.clip(clean + z * sigma, 0, 255)).astype(np.uint8)
            np.testing.assert_array_equal(rec["degraded"], expected)
    manifest = frozen.read_manifest(data_dir, "cbsd68")
    assert manifest["count"] == 9 and len(manifest["fingerprint"]) == 64
    assert frozen.verify_frozen_inputs(data_dir, "cbsd68") == []
    # a second, independent build (other data_dir) gives the same inputs and fingerprint
    other = tmp_path / "other"
    quiet("cbsd68", other, tree)
    assert frozen.read_manifest(other, "cbsd68")["fingerprint"] == manifest["fingerprint"]
    # tampering is detected
    path = frozen.manifest_path(other, "cbsd68")
    m = json.loads(path.read_text())
    m["entries"][0]["noisy_sha256"] = "0" * 64
    path.write_text(json.dumps(m))
    problems = frozen.verify_frozen_inputs(other, "cbsd68")
    assert len(problems) == 1 and "noisy image differs from the manifest" in problems[0]


def test_grayscale_bsd68_is_refused_with_the_set_to_get(tmp_path):
    d = tmp_path / "data/test/denoise/bsd68"
    for i in range(3):
        F.save(d / f"test{i:03d}.png", F.rand_image(i)[..., 0])  # grayscale PNGs, as DnCNN's BSD68
    with pytest.raises(DataError) as e:
        quiet("cbsd68", tmp_path / "out", tmp_path / "data")
    msg = str(e.value)
    assert "grayscale BSD68" in msg and "colour CBSD68" in msg and "test/denoise/cbsd68/" in msg
    assert not (tmp_path / "out/cbsd68").exists()  # nothing written


def test_unpaired_truncated_and_size_mismatch_are_left_out_and_listed(tmp_path):
    data = tmp_path / "data"
    for n in (1, 2, 3, 4):
        img = F.rand_image(n)
        F.save(data / f"Train/Derain/rainy/rain-{n}.png", img)
        if n != 2:
            F.save(data / f"Train/Derain/gt/norain-{n}.png", img if n != 4 else F.rand_image(n, 30, 30))
    full = (data / "Train/Derain/rainy/rain-3.png").read_bytes()
    (data / "Train/Derain/rainy/rain-3.png").write_bytes(full[: len(full) // 2])  # truncated
    (data / "Train/Derain/gt/notes.txt").write_text("not an image")
    r = quiet("rain100l", tmp_path / "out", data).report
    assert r.written["train"] == 1
    (unp,) = r.of_kind("unpaired")
    assert unp.path.endswith("rain-2.png") and "no clean partner" in unp.detail and "norain-2" in unp.detail
    (bad,) = r.of_kind("unreadable")
    assert bad.path.endswith("rain-3.png") and "truncated or corrupt" in bad.detail and "left out" in bad.detail
    (mis,) = r.of_kind("refused")
    assert mis.path.endswith("rain-4.png") and "differs from its clean image" in mis.detail
    (skip,) = r.of_kind("skipped")
    assert skip.path.endswith("notes.txt") and "not an image file" in skip.detail
    got = read_split(tmp_path / "out", "rain100l", "train")
    assert list(got) == ["rain-1.png"]


def test_grayscale_rgba_16bit_and_palette_are_converted_as_documented(tmp_path):
    src = tmp_path / "pairs"
    gray = F.rand_image(1)[..., 0]
    F.save(src / "target/gray.png", gray)
    F.save(src / "degraded/gray.png", gray)
    rgba = np.concatenate([F.rand_image(2), np.full((F.H, F.W, 1), 200, np.uint8)], -1)
    F.save(src / "target/rgba.png", rgba)
    F.save(src / "degraded/rgba.jpg", F.rand_image(2), quality=95)  # any extension pairs by stem
    img16 = np.random.default_rng(3).integers(0, 65536, (F.H, F.W, 3)).astype(np.uint16)
    F.write_png16_rgb(src / "target/deep.png", img16)
    F.write_png16_rgb(src / "degraded/deep.png", img16)
    g16 = np.random.default_rng(4).integers(0, 65536, (F.H, F.W)).astype(np.uint16)
    Image.fromarray(g16).save(src / "target/deepgray.png")
    F.save(src / "degraded/deepgray.png", F.rand_image(4))
    F.save(src / "target/pal.png", F.rand_image(5))
    Image.fromarray(F.rand_image(5)).convert("P").save(src / "degraded/pal.png")
    r = quiet("paired_folder", tmp_path / "out", src, name="mixed").report
    details = {Path(i.path).name + ":" + Path(i.path).parent.name: i.detail for i in r.of_kind("converted")}
    assert details["gray.png:target"] == "grayscale → RGB"
    assert details["rgba.png:target"].startswith("RGBA → RGB (alpha dropped, it had transparent pixels)")
    assert details["deep.png:target"] == "16-bit RGB → 8-bit (high byte)"
    assert details["deepgray.png:target"] == "16-bit grayscale → 8-bit RGB (high byte)"
    assert details["pal.png:degraded"] == "palette → RGB"
    got = read_split(tmp_path / "out", "paired_folder/mixed", "train")
    assert r.written["train"] == 5 and r.problem_count == 0
    np.testing.assert_array_equal(got["gray.png"]["clean"], np.repeat(gray[..., None], 3, -1))
    np.testing.assert_array_equal(got["deep.png"]["clean"], (img16 >> 8).astype(np.uint8))
    gray8 = (g16 >> 8).astype(np.uint8)
    np.testing.assert_array_equal(got["deepgray.png"]["clean"], np.repeat(gray8[..., None], 3, -1))
    np.testing.assert_array_equal(got["rgba.jpg"]["clean"], rgba[..., :3])  # stored under the degraded name


def test_sots_492_variant_gets_its_warning(tmp_path):
    data = tmp_path / "data"
    for i in range(1, 493):
        img = F.rand_image(i, 8, 8)
        F.save(data / f"test/dehaze/target/{i:04d}.png", img)
        F.save(data / f"test/dehaze/input/{i:04d}_0.9_0.2.png", img)
    r = quiet("sots_outdoor", tmp_path / "out", data).report
    assert r.written["test"] == 492
    assert any("492-image variant" in w and "500" in w for w in r.warnings)


def test_ots_hazy_without_original_is_unpaired(tmp_path):
    data = tmp_path / "data"
    F.save(data / "Train/Dehaze/original/0001.jpg", F.rand_image(1), quality=95)
    F.save(data / "Train/Dehaze/synthetic/part1/0001_0.8_0.04.jpg", F.rand_image(2), quality=95)
    F.save(data / "Train/Dehaze/synthetic/part1/0002_0.8_0.04.jpg", F.rand_image(3), quality=95)
    r = quiet("reside_ots", tmp_path / "out", data).report
    (u,) = r.of_kind("unpaired")
    assert u.path.endswith("0002_0.8_0.04.jpg") and "no clear image original/0002.*" in u.detail


def test_missing_subfolders_are_named_with_what_was_found(tmp_path):
    """A data set's folder without its degraded or clean subfolder: one DataError naming the folder, the
    subfolders it must contain and the ones it has (no TFDS write; cost: milliseconds)."""
    cases = {
        "rain100l": (
            "Train/Derain/rainy",
            r"rain100l train: .*Train/Derain must contain rainy/ .* and gt/ .*\['rainy'\]",
        ),
        "sots_outdoor": ("test/dehaze/input", r"sots_outdoor: .*test/dehaze must contain input/ \(hazy\) and target/"),
        "reside_ots": ("Train/Dehaze/original", r"reside_ots: .*Train/Dehaze must contain synthetic/ .*\['original'\]"),
    }
    for dataset, (only, pattern) in cases.items():
        data = tmp_path / dataset / "data"
        F.save(data / only / "1.png", F.rand_image(1))
        with pytest.raises(DataError, match=pattern):
            quiet(dataset, tmp_path / dataset / "out", data)
    data = tmp_path / "rain_test" / "data"
    F.save(data / "test/derain/Rain100L/target/norain-1.png", F.rand_image(1))
    with pytest.raises(DataError, match=r"rain100l test: .* must contain input/ and target/ \(the official tester's"):
        quiet("rain100l", tmp_path / "rain_test" / "out", data)


def test_missing_folder_and_dncnn_names_and_missing_bsd400(tmp_path):
    data = tmp_path / "data"
    (data / "Train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"Train/Derain"):
        quiet("rain100l", tmp_path / "out", data)
    with pytest.raises(DataError, match="does not exist"):
        quiet("gopro", tmp_path / "out", tmp_path / "nowhere")
    F.save(data / "Train/Denoise/00001.bmp", F.rand_image(1))
    F.save(data / "Train/Denoise/test_001.png", F.rand_image(2)[..., 0])
    r = quiet("denoise_train", tmp_path / "out", data).report
    (s,) = r.of_kind("skipped")
    assert "DnCNN" in s.detail and "Train400" in s.detail
    assert any("BSD400: none of the 400" in w and "WED only" in w for w in r.warnings)


def test_all_unusable_split_is_a_clean_refusal(tmp_path):
    src = tmp_path / "pairs"
    (src / "degraded").mkdir(parents=True)
    (src / "target").mkdir()
    (src / "degraded/x.png").write_bytes(b"not a png")
    F.save(src / "target/x.png", F.rand_image(0))
    with pytest.raises(DataError) as e:
        quiet("paired_folder", tmp_path / "out", src)
    assert "nothing was written" in str(e.value) and "NOTHING WRITTEN" in str(e.value)
    assert not list((tmp_path / "out").rglob("dataset_info.json"))


def test_paired_folder_splits_ambiguous_names_and_subfolders(tmp_path):
    src = tmp_path / "mine"
    for split in ("train", "test"):
        for i in range(2):
            img = F.rand_image(i)
            F.save(src / f"{split}/input/{i}.png", img)
            F.save(src / f"{split}/gt/{i}.jpg", img, quality=95)
    F.save(src / "train/input/sub/dup.png", F.rand_image(7))
    F.save(src / "train/input/sub/dup.jpg", F.rand_image(7), quality=95)
    F.save(src / "train/gt/sub/dup.png", F.rand_image(7))
    r = quiet("paired_folder", tmp_path / "out", src, name="my_task").report
    assert dict(r.written) == {"train": 2, "test": 2}
    refused = r.of_kind("refused")
    assert len(refused) == 2 and all("ambiguous" in i.detail for i in refused)
    assert (tmp_path / "out/paired_folder/my_task/1.0.0/dataset_info.json").exists()
    with pytest.raises(DataError, match="not valid"):
        quiet("paired_folder", tmp_path / "out", src, name="Bad Name")


def test_embedded_is_offline_small_and_split_into_held_out_photos(prepared):
    data_dir = prepared["data_dir"]
    r = prepared["results"]["embedded"].report
    assert r.count("skipped") == 6 and all("grayscale photograph" in i.detail for i in r.of_kind("skipped"))
    train_names = set(read_split(data_dir, "embedded", "train_clean"))
    test_names = set(read_split(data_dir, "embedded", "test_derain"))
    assert len(train_names) == 7 and test_names == {"chelsea.png", "coffee.png"}
    assert not {n[:-4] for n in train_names} & {n[:-4] for n in test_names}
    sizes = {
        s: sources.split_size(data_dir, "embedded", s)
        for s in ["train_derain", "train_dehaze", "train_deblur", "train_lowlight", "test_denoise_25", "test_jpeg_q20"]
    }
    assert sizes == {
        "train_derain": 14,
        "train_dehaze": 14,
        "train_deblur": 14,
        "train_lowlight": 14,
        "test_denoise_25": 2,
        "test_jpeg_q20": 2,
    }
    for rec in read_split(data_dir, "embedded", "train_dehaze").values():
        assert max(rec["clean"].shape[:2]) == 256 and rec["clean"].shape == rec["degraded"].shape
        assert not np.array_equal(rec["clean"], rec["degraded"])
    total = sum(p.stat().st_size for p in (data_dir / "embedded").rglob("*") if p.is_file())
    assert total < 25e6
    assert frozen.verify_frozen_inputs(data_dir, "embedded") == []


def test_cli_prints_the_summary_reuses_and_refuses(prepared, tmp_path, capsys):
    tree = prepared["tree"]
    rc = prepare_main(["--dataset", "lol_v1", "--manual_dir", str(tree), "--data_dir", str(tmp_path), "--no_progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "== lol_v1: validation summary ==" in out and "eval15" in out
    rc = prepare_main(["--dataset", "lol_v1", "--manual_dir", str(tree), "--data_dir", str(tmp_path)])
    assert rc == 0 and "already prepared" in capsys.readouterr().out
    rc = prepare_main(
        ["--dataset", "lol_v1", "--manual_dir", str(tree), "--data_dir", str(tmp_path), "--overwrite", "--no_progress"]
    )
    assert rc == 0 and "validation summary" in capsys.readouterr().out
    gray = tmp_path / "gray/test/denoise/cbsd68"
    for i in range(2):
        F.save(gray / f"{i}.png", F.rand_image(i)[..., 0])
    rc = prepare_main(["--dataset", "cbsd68", "--manual_dir", str(tmp_path / "gray"), "--data_dir", str(tmp_path)])
    assert rc == 1 and "grayscale BSD68" in capsys.readouterr().err
    rc = prepare_main(["--dataset", "cbsd68", "--data_dir", str(prepared["data_dir"]), "--verify"])
    assert rc == 0 and "fingerprint" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        prepare_main(["--dataset", "rain100l", "--data_dir", str(tmp_path)])  # --manual_dir required
    shutil.rmtree(tmp_path / "gray")


def test_file_name_stems_and_pixel_checksum():
    """The one `stem` (seeds of the frozen and unseen inputs), `drop_extension` (stored keys, folders kept) and
    `pixel_sha256` (manifests) every module uses; cost: microseconds."""
    from baryir_jax.data.images import drop_extension, pixel_sha256, stem

    assert stem("test/cbsd68/0001.png") == "0001" and stem("rain-1") == "rain-1" and stem("a.b/x") == "x"
    assert stem("x.tar.gz") == "x.tar"
    assert drop_extension("part1/0025_0.8_0.04.jpg") == "part1/0025_0.8_0.04" and drop_extension("a.b/x") == "a.b/x"
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert pixel_sha256(img) == hashlib.sha256(b"2x3x3:" + bytes(range(18))).hexdigest()
