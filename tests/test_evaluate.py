"""baryir-evaluate on a generated miniature benchmark (official layout → baryir-prepare → evaluation), shape
buckets, expected counts, and the unseen suite."""

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from baryir_jax.evaluate import benchmark, shapes, unseen
from baryir_jax.evaluate.checkpoint import CheckpointError, load_restorer, numpy_init
from baryir_jax.models import BaryNet

TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
# (height, width) of the miniature sets; trimmed to multiples of 8 they give 5 distinct sizes.
MINI = {
    "sots": [(36, 45), (40, 44), (33, 47)],
    "rain": [(41, 35), (35, 41)],
    "cbsd": [(42, 34), (34, 42)],
    "gopro": [(48, 40)],
    "lol": [(40, 48)],
}
MINI_EXPECTED = "dehaze=3,derain=2,denoise_15=2,denoise_25=2,denoise_50=2,deblur=1,lowlight=1"


def _crop(photo, h, w, k):
    y, x = 17 * k % (photo.shape[0] - h), 29 * k % (photo.shape[1] - w)
    return np.ascontiguousarray(photo[y : y + h, x : x + w])


def _save(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path)


def make_official_layout(root, drop_sots_target=False):
    """A tiny data/ folder in the official layout, from real photographs with simple degradations."""
    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    rng = np.random.default_rng(0)
    noisy = lambda im: np.clip(im + rng.normal(0, 20, im.shape), 0, 255).astype(np.uint8)  # noqa: E731
    for k, (h, w) in enumerate(MINI["sots"]):
        clean = _crop(photos[k % 3], h, w, k)
        _save(f"{root}/test/dehaze/input/{k + 1:04d}_0.8_0.2.jpg", (0.6 * clean + 90).astype(np.uint8))
        if not (drop_sots_target and k == 1):
            _save(f"{root}/test/dehaze/target/{k + 1:04d}.png", clean)
    for k, (h, w) in enumerate(MINI["rain"]):
        clean = _crop(photos[k], h, w, k + 5)
        _save(f"{root}/test/derain/Rain100L/input/rain-{k + 1}.png", noisy(clean))
        _save(f"{root}/test/derain/Rain100L/target/norain-{k + 1}.png", clean)
    for k, (h, w) in enumerate(MINI["cbsd"]):
        _save(f"{root}/test/denoise/cbsd68/test{k:03d}.png", _crop(photos[2 - k], h, w, k + 9))
    for k, (h, w) in enumerate(MINI["gopro"]):
        clean = _crop(photos[1], h, w, 3)
        _save(f"{root}/test/deblur/input/{k:06d}.png", noisy(clean))
        _save(f"{root}/test/deblur/target/{k:06d}.png", clean)
    for k, (h, w) in enumerate(MINI["lol"]):
        clean = _crop(photos[0], h, w, 4)
        _save(f"{root}/test/lowlight/eval15/low/{k}.png", (clean // 6).astype(np.uint8))
        _save(f"{root}/test/lowlight/eval15/high/{k}.png", clean)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    from baryir_jax.data.prepare import prepare
    from baryir_jax.models.io import save_model_checkpoint

    root = tmp_path_factory.mktemp("mini")
    make_official_layout(root / "manual")
    data_dir = root / "data"
    for ds in ("sots_outdoor", "rain100l", "cbsd68", "gopro", "lol_v1"):
        prepare(ds, data_dir, root / "manual", progress=False, out=lambda s: None)
    ckpt = root / "ckpt"
    save_model_checkpoint(str(ckpt), numpy_init(BaryNet(**TINY), 0), TINY, extra={"step": 10})
    config = root / "eval_config.py"  # laid out like the training configs: top-level dtype, bary_blocks=-1
    config.write_text(
        "import ml_collections\n\ndef get_config(arg=None):\n  c = ml_collections.ConfigDict()\n"
        '  c.dtype = "float32"\n'
        f"  c.model = ml_collections.ConfigDict(dict(dim={TINY['dim']}, num_blocks=(1, 1, 1, 1), "
        "num_refinement_blocks=1, heads=(1, 1, 1, 1), ffn_expansion_factor=2.66, bary_blocks=-1, "
        "residual_scale=0.8))\n"
        f'  c.data = ml_collections.ConfigDict(dict(collection="benchmark", data_dir={str(data_dir)!r}))\n'
        "  return c\n"
    )
    return {"root": root, "data_dir": str(data_dir), "ckpt": str(ckpt), "config": str(config)}


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_standard_counts_are_804_and_1930():
    three = benchmark.expected_counts(benchmark.BENCHMARKS["3d"], "benchmark")
    five = benchmark.expected_counts(benchmark.BENCHMARKS["5d"], "benchmark")
    assert sum(three.values()) == 804 and sum(five.values()) == 1930
    # Table 2's five columns (the average) are 1,794 images; sigma 15/50 are outside the average
    in_avg = [c.task for c in benchmark.BENCHMARKS["5d"].columns if c.in_average]
    assert sum(five[t] for t in in_avg) == 1794
    assert sum(benchmark.expected_counts(benchmark.BENCHMARKS["unseen"], "benchmark").values()) == 7 * 68


def test_trim_is_bottom_right_and_pad_reflects():
    img = np.arange(13 * 10 * 3, dtype=np.uint8).reshape(13, 10, 3)
    t = shapes.trim(img)
    assert t.shape == (8, 8, 3) and np.array_equal(t, img[:8, :8])
    p = shapes.pad_to(img, 16, 16)
    assert p.shape == (16, 16, 3) and np.array_equal(p[:13, :10], img)
    assert np.array_equal(p[13, :10], img[11]) and np.array_equal(p[:13, 10], img[:, 8])  # mirror without the edge row


def test_bucket_plan():
    standard = [(320, 480)] * 68 + [(480, 320)] * 68 + [(408, 544)] * 500 + [(720, 1280)] * 1111 + [(400, 600)] * 15
    plan = shapes.plan_buckets(standard, max_shapes=8)
    assert all(plan[s] == s for s in plan)  # few sizes: no padding at all
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in rng.integers(50, 700, 2)) for _ in range(300)]
    plan = shapes.plan_buckets(sizes, max_shapes=6)
    assert len(set(plan.values())) <= 6
    for (h, w), (bh, bw) in plan.items():
        assert bh >= h and bw >= w and bh % 8 == 0 and bw % 8 == 0
    assert shapes.padding_overhead(sizes, plan) < 1.0
    # greedy merging puts near-identical sizes together rather than padding a small image to a large one
    plan = shapes.plan_buckets([(64, 64)] * 10 + [(64, 72)] * 10 + [(512, 512)] * 2, max_shapes=2)
    assert plan[(64, 64)] == (64, 72) and plan[(512, 512)] == (512, 512)
    assert len(set(shapes.plan_buckets(sizes, max_shapes=0).values())) == len(
        {(shapes.round_up(h, 8), shapes.round_up(w, 8)) for h, w in sizes}
    )


def test_embedded_collection_names_columns_by_degradation_not_benchmark_set(mini, tmp_path, capsys):
    from baryir_jax.data.prepare import prepare

    data_dir = tmp_path / "data"
    prepare("embedded", str(data_dir), progress=False, out=lambda s: None)
    out = tmp_path / "eval"
    rc = benchmark.main(
        [
            "--checkpoint",
            mini["ckpt"],
            "--data_dir",
            str(data_dir),
            "--benchmark",
            "5d",
            "--collection",
            "embedded",
            "--output",
            str(out),
            "--no_images",
            "--no_progress",
        ]
    )
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    table = json.loads((out / "table.json").read_text())
    assert {t: r["count"] for t, r in table["tasks"].items()} == {t: 2 for t in benchmark.BENCHMARKS["5d"].tasks}
    md = (out / "table.md").read_text()
    assert "| Method | haze | rain | noise σ25 | motion blur | low light | Average | noise σ15† | noise σ50† |" in md, (
        md
    )
    assert "embedded test photographs (chelsea, coffee)" in md
    for name in ("SOTS", "Rain100L", "BSD68", "GoPro", "LOL"):
        assert name not in md, name
    # the benchmark's own table keeps the data-set names
    assert [c.title for c in benchmark.for_collection(benchmark.BENCHMARKS["3d"], "benchmark").columns][:2] == [
        "SOTS",
        "Rain100L",
    ]


def test_miniature_5d_benchmark_table_csv_and_compile_count(mini, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = benchmark.main(
        [
            "--checkpoint",
            mini["ckpt"],
            "--config",
            mini["config"],
            "--benchmark",
            "5d",
            "--output",
            str(out),
            "--expected",
            MINI_EXPECTED,
            "--max_shapes",
            "1",
            "--no_progress",
        ]
    )
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "13 images in 5 distinct sizes -> 1 compiled shape(s)" in stdout
    assert "compiled shapes: 1" in stdout
    table = json.loads((out / "table.json").read_text())
    assert table["shapes"] == [[48, 48]]
    assert table["compiled_shapes"] == 1 and table["images"] == 13 and table["average_refused"] is None
    for task, n in [("dehaze", 3), ("derain", 2), ("denoise_25", 2), ("deblur", 1), ("lowlight", 1)]:
        assert table["tasks"][task]["count"] == table["tasks"][task]["expected"] == n
    md = (out / "table.md").read_text()
    assert "| Method | SOTS | Rain100L | BSD68 σ25 | GoPro | LOL-v1 | Average | BSD68 σ15† | BSD68 σ50† |" in md
    rows = _read_csv(out / "per_image.csv")
    assert list(rows[0]) == ["task", "name", "psnr", "ssim", "height", "width"] and len(rows) == 13
    # the average is the mean of the five Table-2 columns' means
    cols = ["dehaze", "derain", "denoise_25", "deblur", "lowlight"]
    means = [np.mean([float(r["psnr"]) for r in rows if r["task"] == t]) for t in cols]
    assert table["average"]["psnr"] == pytest.approx(np.mean(means), abs=1e-5)
    # every row re-scored independently: saved PNG vs the target trimmed at the bottom/right, with scikit-image
    from baryir_jax.data import sources

    targets = {}
    for task in table["tasks"]:
        for ex in sources.load_eval_task(mini["data_dir"], task):
            targets[task, ex.name] = ex.clean
    for r in rows:
        clean = targets[r["task"], r["name"]]
        h, w = int(r["height"]), int(r["width"])
        assert (h, w) == (clean.shape[0] // 8 * 8, clean.shape[1] // 8 * 8)
        saved = np.asarray(Image.open(out / "images" / r["task"] / (os.path.splitext(r["name"])[0] + ".png")))
        assert saved.shape == (h, w, 3)
        assert abs(float(r["psnr"]) - sk_psnr(clean[:h, :w], saved, data_range=255)) < 1e-4
        assert abs(float(r["ssim"]) - sk_ssim(clean[:h, :w], saved, channel_axis=2, data_range=255)) < 1e-5


def test_missing_image_refuses_the_average(mini, tmp_path, capsys):
    from baryir_jax.data.prepare import prepare

    manual = tmp_path / "manual"
    make_official_layout(manual, drop_sots_target=True)
    data_dir = tmp_path / "data"
    shutil.copytree(mini["data_dir"], data_dir)
    prepare("sots_outdoor", data_dir, manual, overwrite=True, progress=False, out=lambda s: None)
    out = tmp_path / "eval"
    rc = benchmark.main(
        [
            "--checkpoint",
            mini["ckpt"],
            "--data_dir",
            str(data_dir),
            "--benchmark",
            "3d",
            "--output",
            str(out),
            "--expected",
            MINI_EXPECTED,
            "--max_shapes",
            "1",
            "--no_progress",
            "--no_images",
            "--mode",
            "pad",
            "--name",
            "Mini BaryIR",
        ]
    )
    stdout = capsys.readouterr().out
    assert rc == 2
    table = json.loads((out / "table.json").read_text())
    assert table["average"] is None
    assert table["tasks"]["dehaze"]["count"] == 2 and table["tasks"]["dehaze"]["expected"] == 3
    assert table["average_refused"] == ["dehaze: 2/3 images (1 missing)"]
    md = (out / "table.md").read_text()
    assert md.count("| refused |") == 1 and "(2/3)" in md and "Average refused" in md and "| Mini BaryIR |" in md
    assert "Average refused" in stdout


def test_unseen_suite_is_deterministic_checksummed_and_verified(mini, tmp_path, capsys):
    out = tmp_path / "unseen"
    args = [
        "--checkpoint",
        mini["ckpt"],
        "--data_dir",
        mini["data_dir"],
        "--benchmark",
        "unseen",
        "--expected",
        "*=2",
        "--max_shapes",
        "1",
        "--no_progress",
        "--no_images",
        "--mode",
        "pad",
    ]
    assert benchmark.main(args + ["--output", str(out)]) == 0
    rows = _read_csv(out / "per_image.csv")
    assert {(r["height"], r["width"]) for r in rows} == {("42", "34"), ("34", "42")}  # pad mode scores every pixel
    manifest = json.loads((out / "unseen_manifest.json").read_text())
    assert manifest["count"] == 14 and len({e["task"] for e in manifest["entries"]}) == 7
    table = json.loads((out / "table.json").read_text())
    assert table["average"] is not None and table["tasks"]["jpeg_q10"]["count"] == 2
    # a second run reproduces the inputs bit for bit; a reference that differs in one image refuses the average
    ref = dict(manifest, entries=[dict(e) for e in manifest["entries"]])
    ref["entries"][3]["degraded_sha256"] = "0" * 64
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    capsys.readouterr()
    rc = benchmark.main(args + ["--output", str(tmp_path / "again"), "--unseen_manifest", str(tmp_path / "ref.json")])
    stdout = capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "unseen_manifest.json").read_text())
    assert again["fingerprint"] == manifest["fingerprint"]
    assert rc == 2 and "differ from" in stdout and "in 1 place(s)" in stdout


def test_unseen_degradations_are_what_they_say():
    clean = data.chelsea()[:64, :80]
    buf = io.BytesIO()
    Image.fromarray(clean).save(buf, format="JPEG", quality=20)
    np.testing.assert_array_equal(
        unseen.degrade("jpeg_q20", clean, "x.png"), np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    )
    a = unseen.degrade("haze_noise", clean, "img1.png")
    assert np.array_equal(a, unseen.degrade("haze_noise", clean, "img1.png"))  # deterministic per name
    assert not np.array_equal(a, unseen.degrade("haze_noise", clean, "img2.png"))  # seeded by the name
    assert a.mean() > clean.mean() + 20  # hazier: brighter
    dark = unseen.degrade("lowlight_noise", clean, "img1.png")
    assert dark.mean() < clean.mean() / 2
    with pytest.raises(ValueError, match="unknown unseen task"):
        unseen.degrade("rain", clean, "x")


def test_bad_arguments_and_missing_data_are_clear(mini, tmp_path, capsys):
    assert (
        benchmark.main(["--checkpoint", str(tmp_path / "nope"), "--data_dir", mini["data_dir"], "--benchmark", "3d"])
        == 1
    )
    assert "no such directory" in capsys.readouterr().err
    assert benchmark.main(["--checkpoint", mini["ckpt"], "--benchmark", "3d"]) == 1
    assert "--data_dir" in capsys.readouterr().err
    # an empty data directory: nothing evaluated, each task says how to prepare it
    rc = benchmark.main(
        [
            "--checkpoint",
            mini["ckpt"],
            "--data_dir",
            str(tmp_path / "empty"),
            "--benchmark",
            "3d",
            "--output",
            str(tmp_path / "o"),
            "--no_progress",
        ]
    )
    assert rc == 1 and "baryir-prepare --dataset sots_outdoor" in capsys.readouterr().out
    # a config whose network differs from the checkpoint's: named field by field
    bad = tmp_path / "bad_config.py"
    bad.write_text(
        "from baryir_jax.config import base_config\n"
        "def get_config():\n  c = base_config()\n  c.model.dim = 48\n  return c\n"
    )
    args = ["--checkpoint", mini["ckpt"], "--config", str(bad), "--data_dir", mini["data_dir"], "--benchmark", "3d"]
    assert benchmark.main(args) == 1
    assert "dim: checkpoint 8, config 48" in capsys.readouterr().err
    # a config file whose get_config() returns something else: a config error (exit 2), the type named
    bad.write_text('def get_config():\n  class C: pass\n  c = C(); c.model = {"dim": 48}\n  return c\n')
    assert benchmark.main(args) == 2
    assert "returned C, not an ml_collections.ConfigDict" in capsys.readouterr().err
    assert (
        benchmark.main(
            [
                "--checkpoint",
                mini["ckpt"],
                "--data_dir",
                mini["data_dir"],
                "--benchmark",
                "3d",
                "--expected",
                "nosuch=3",
            ]
        )
        == 1
    )
    assert "not a task" in capsys.readouterr().err


def test_checkpoint_variants(mini, tmp_path):
    # params without model_config.json: the config gives the network
    bare = tmp_path / "bare"
    shutil.copytree(mini["ckpt"], bare)
    os.remove(bare / "model_config.json")
    with pytest.raises(CheckpointError, match="--config"):
        load_restorer(str(bare))
    import ml_collections

    cfg = ml_collections.ConfigDict({"model": dict(TINY, dtype="bfloat16")})
    r = load_restorer(str(bare), cfg)
    assert r.module.dim == 8 and str(np.dtype(r.module.dtype)) == "bfloat16"
    # a model_config.json with the dtype as a string (training's export) is accepted
    meta = json.loads(open(os.path.join(mini["ckpt"], "model_config.json")).read())
    strdt = tmp_path / "strdt"
    shutil.copytree(mini["ckpt"], strdt)
    meta["barynet"]["dtype"] = "bfloat16"
    (strdt / "model_config.json").write_text(json.dumps(meta))
    assert str(np.dtype(load_restorer(str(strdt)).module.dtype)) == "bfloat16"
    # parameters of another network: a clear error, not a shape error from inside JAX
    meta["barynet"]["dim"] = 16
    (strdt / "model_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit BaryNet"):
        load_restorer(str(strdt))
