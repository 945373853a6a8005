"""The grain training pipeline: official counts, crops and augmentation, noise, determinism, resume from an
orbax checkpoint, per-process shards, worker processes, the mesh helper and the evaluation reader."""

import data_fakes as F
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from baryir_jax.data import pipeline as pl
from baryir_jax.data import sources
from baryir_jax.data.images import augment
from baryir_jax.data.report import DataError
from baryir_jax.data.to_mesh import host_batch_to_global

THREE_D = ["derain", "dehaze", "denoise_15", "denoise_25", "denoise_50"]
FIVE_D = ["derain", "dehaze", "lowlight", "denoise_25", "deblur"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    return F.prepared_data(tmp_path_factory.getbasetemp())


def make(prepared, tasks, **kw):
    kw.setdefault("patch_size", 32)
    kw.setdefault("global_batch_size", 4)
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    kw.setdefault("read_threads", 2)
    kw.setdefault("prefetch_batches", 2)
    return pl.make_train_pipeline(prepared["data_dir"], tasks, **kw)


def take(ds_or_it, n):
    it = iter(ds_or_it) if not hasattr(ds_or_it, "__next__") else ds_or_it
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# ---------------------------------------------------------------------------------------------------------
# Counts (λ is computed from them)
# ---------------------------------------------------------------------------------------------------------
OFFICIAL_SIZES = {
    "denoise_15": 5144,
    "denoise_25": 5144,
    "denoise_50": 5144,
    "derain": 200,
    "dehaze": 72135,
    "deblur": 2103,
    "lowlight": 485,
}


def test_official_oversampled_counts_and_lambda():
    c3 = pl.oversampled_counts(THREE_D, OFFICIAL_SIZES)
    assert c3 == {"derain": 72000, "dehaze": 72135, "denoise_15": 25720, "denoise_25": 25720, "denoise_50": 25720}
    n = [c3["denoise_15"] + c3["denoise_25"] + c3["denoise_50"], c3["derain"], c3["dehaze"]]
    lam = (1 / np.array(n)) / (1 / np.array(n)).sum()
    np.testing.assert_allclose(lam, [0.3183, 0.3412, 0.3405], atol=1e-4)  # reference table, 3D
    c5 = pl.oversampled_counts(FIVE_D, OFFICIAL_SIZES, by="id")
    assert c5 == {1: 77160, 3: 72000, 4: 72135, 5: 73605, 6: 72750}  # sigma 25 alone is x15
    wed_only = pl.oversampled_counts(THREE_D, {**OFFICIAL_SIZES, **{k: 4744 for k in THREE_D[2:]}})
    assert sum(wed_only[k] for k in THREE_D[2:]) == 71160
    assert pl.oversampled_counts(["derain"], OFFICIAL_SIZES, multipliers={"derain": 2}) == {"derain": 400}
    assert pl.oversampled_counts(["derain", "dehaze"], OFFICIAL_SIZES, multipliers=[1, 3]) == {
        "derain": 200,
        "dehaze": 216405,
    }


def test_mixture_argument_errors():
    with pytest.raises(ValueError, match="unknown task"):
        pl.oversampled_counts(["desnow"], OFFICIAL_SIZES)
    with pytest.raises(ValueError, match="not in the mixture"):
        pl.oversampled_counts(["derain"], OFFICIAL_SIZES, multipliers={"dehaze": 2})
    with pytest.raises(ValueError, match="positive integer"):
        pl.oversampled_counts(["derain"], OFFICIAL_SIZES, multipliers={"derain": 0})
    with pytest.raises(ValueError, match="one per task"):
        pl.oversampled_counts(["derain"], OFFICIAL_SIZES, multipliers=[1, 2])
    with pytest.raises(ValueError, match="duplicates"):
        pl.oversampled_counts(["derain", "derain"], OFFICIAL_SIZES)


def test_user_sources_get_ids_from_seven():
    specs = sources.resolve_sources(["derain", "paired_folder:a", "single", "paired_folder:b"])
    assert [(s.task, s.dataset, s.degradation_id) for s in specs] == [
        ("derain", "rain100l", 3),
        ("paired_folder:a", "paired_folder/a", 7),
        ("paired_folder:default", "paired_folder/default", 8),
        ("paired_folder:b", "paired_folder/b", 9),
    ]
    specs = sources.resolve_sources(["paired_folder:a"], user_ids={"paired_folder:a": 12})
    assert specs[0].degradation_id == 12
    with pytest.raises(ValueError, match="collides"):
        sources.resolve_sources(["paired_folder:a"], user_ids={"paired_folder:a": 4})


def test_entry_counts_of_prepared_data(prepared):
    counts = pl.entry_counts(prepared["data_dir"], THREE_D)
    # fake tree: 3 Rain100L pairs x360, 3 OTS pairs x1, 5 denoising images x5 per sigma
    assert counts == {"derain": 1080, "dehaze": 3, "denoise_15": 25, "denoise_25": 25, "denoise_50": 25}
    assert pl.entry_counts(prepared["data_dir"], ["derain", "paired_folder:inv"], by="id") == {3: 1080, 7: 15}
    with pytest.raises(DataError, match="baryir-prepare --dataset paired_folder --manual_dir DIR"):
        pl.entry_counts(prepared["data_dir"], ["paired_folder:absent"])


# ---------------------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------------------
def test_batches_have_the_contract_shapes_and_ids(prepared):
    (b,) = take(make(prepared, THREE_D + ["deblur", "lowlight"], global_batch_size=8, seed=5), 1)
    assert set(b) == {"degraded", "clean", "degradation_id"}
    for k in ("degraded", "clean"):
        assert b[k].dtype == np.float32 and b[k].shape == (8, 32, 32, 3)
        assert b[k].min() >= 0 and b[k].max() <= 1
        np.testing.assert_allclose(b[k] * 255, np.round(b[k] * 255), atol=1e-3)  # 8-bit values
    assert b["degradation_id"].dtype == np.int32 and b["degradation_id"].shape == (8,)
    assert set(b["degradation_id"].tolist()) <= {0, 1, 2, 3, 4, 5, 6}
    # the spec the preflight compiles the step for, without data
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == pl.train_batch_spec(8, 32)


def test_degraded_and_clean_share_crop_and_augmentation(prepared):
    # user pairs with degraded = 255 - clean: any crop/flip mismatch would break degraded == 1 - clean
    batches = take(make(prepared, ["paired_folder:inv"], global_batch_size=8, seed=1, patch_size=16), 4)
    for b in batches:
        np.testing.assert_allclose(b["degraded"], 1.0 - b["clean"], atol=1e-6)
        assert (b["degradation_id"] == 7).all()
    # patch 48 > the 40-px fake images: padded, still aligned
    (b,) = take(make(prepared, ["paired_folder:inv"], seed=2, patch_size=48), 1)
    assert b["clean"].shape == (4, 48, 48, 3)
    np.testing.assert_allclose(b["degraded"], 1.0 - b["clean"], atol=1e-6)


def test_augmentation_draws_modes_one_to_seven_never_identity(prepared):
    # 32x32 pairs with patch 32: the crop is the whole image, so each output is one of the 8 modes of it
    imgs = [F.read(prepared["square"] / "target" / f"img_{i}.png") for i in range(2)]
    modes = []
    for b in take(make(prepared, ["paired_folder:square"], global_batch_size=8, seed=3), 10):
        for clean, degraded in zip(b["clean"], b["degraded"]):
            u8 = np.round(clean * 255).astype(np.uint8)
            hits = [(i, m) for i, img in enumerate(imgs) for m in range(8) if np.array_equal(augment(img, m), u8)]
            assert len(hits) == 1
            modes.append(hits[0][1])
            np.testing.assert_allclose(degraded, 1.0 - clean, atol=1e-6)
    assert 0 not in modes
    assert set(modes) == set(range(1, 8))


def test_denoising_sources_add_official_noise_on_the_fly(prepared):
    stds = {}
    for task, sigma in [("denoise_15", 15), ("denoise_50", 50)]:
        b = take(make(prepared, [task], global_batch_size=8, seed=4), 2)
        deg = np.concatenate([x["degraded"] for x in b]) * 255
        clean = np.concatenate([x["clean"] for x in b]) * 255
        inside = (clean > sigma * 2) & (clean < 255 - sigma * 2)  # mostly away from clipping
        resid = (deg - clean)[inside]
        assert resid.size > 5000
        # truncation lowers the mean by about 0.5; the std stays about sigma
        assert abs(resid.mean() + 0.5) < 0.05 * sigma
        stds[task] = resid.std()
        assert abs(stds[task] - sigma) < 0.1 * sigma
        assert set(np.concatenate([x["degradation_id"] for x in b]).tolist()) == {int(task[-2:] == "50") * 2}


def test_same_seed_same_batches_other_seed_other_batches(prepared):
    a = take(make(prepared, THREE_D, seed=7), 3)
    b = take(make(prepared, THREE_D, seed=7), 3)
    c = take(make(prepared, THREE_D, seed=8), 3)
    assert_same(a, b)
    assert not np.array_equal(a[0]["clean"], c[0]["clean"])


def test_resume_from_orbax_checkpoint_yields_the_same_batches(prepared, tmp_path):
    it = iter(make(prepared, THREE_D, seed=11, with_entry_index=True))
    take(it, 3)
    state = {"params": np.arange(4.0), "step": np.array(3, np.int32)}
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(create=True))
    mngr.save(
        3, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data_iter=grain.checkpoint.CheckpointSave(it))
    )
    mngr.wait_until_finished()
    expected = take(it, 4)  # the uninterrupted run goes on
    fresh = iter(make(prepared, THREE_D, seed=11, with_entry_index=True))
    restored = mngr.restore(
        mngr.latest_step(),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(state), data_iter=grain.checkpoint.CheckpointRestore(fresh)
        ),
    )
    np.testing.assert_array_equal(restored["state"]["params"], state["params"])
    assert_same(take(fresh, 4), expected)
    mngr.close()


def test_start_index_resumes_whatever_the_worker_and_process_counts(prepared):
    """The portable data position (examples consumed): one process with 2 workers, or two processes, started
    at example 8 give the batches that follow the first two of an uninterrupted single-process stream."""
    kw = dict(seed=11, with_entry_index=True, global_batch_size=4)
    expected = take(make(prepared, THREE_D, **kw), 4)[2:]
    it = iter(make(prepared, THREE_D, start_index=8, worker_count=2, worker_buffer_size=1, **kw))
    try:
        assert_same(take(it, 2), expected)
    finally:
        it.close()
    halves = [take(make(prepared, THREE_D, start_index=8, process_index=p, process_count=2, **kw), 2) for p in (0, 1)]
    for j, batch in enumerate(expected):  # process p holds the global batch's positions p, p + 2, …
        for p in (0, 1):
            assert_same([halves[p][j]], [{k: v[p::2] for k, v in batch.items()}])
    with pytest.raises(ValueError, match="start_index must be a non-negative integer"):
        make(prepared, THREE_D, start_index=-1)


def test_two_processes_read_disjoint_shards_that_cover_the_epoch(prepared):
    tasks = ["dehaze", "paired_folder:inv", "lowlight"]
    total = sum(pl.entry_counts(prepared["data_dir"], tasks).values())  # 3 + 15 + 2*150 = 318
    assert total % 2 == 0
    seen = []
    for p in (0, 1):
        ds = make(
            prepared,
            tasks,
            seed=13,
            global_batch_size=6,
            process_index=p,
            process_count=2,
            with_entry_index=True,
            patch_size=16,
        )
        entries = np.concatenate([b["entry"] for b in take(ds, total // 2 // 3)])
        assert len(entries) == total // 2 and len(set(entries.tolist())) == total // 2  # no repeats in the epoch
        seen.append(set(entries.tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(total))
    with pytest.raises(ValueError, match="not divisible by process_count"):
        make(prepared, tasks, global_batch_size=5, process_index=0, process_count=2)


def test_worker_processes_give_the_same_batches(prepared):
    ds0 = make(prepared, THREE_D, seed=17, worker_count=0)
    ds2 = make(prepared, THREE_D, seed=17, worker_count=2, worker_buffer_size=1)
    it2 = iter(ds2)
    try:
        assert_same(take(ds0, 3), take(it2, 3))
    finally:
        it2.close()


def test_embedded_three_task_mixture_at_patch_128(prepared):
    (b,) = take(make(prepared, THREE_D, collection="embedded", patch_size=128, global_batch_size=4, seed=0), 1)
    assert b["degraded"].shape == (4, 128, 128, 3)
    assert pl.entry_counts(prepared["data_dir"], THREE_D, collection="embedded") == {
        "derain": 14,
        "dehaze": 14,
        "denoise_15": 7,
        "denoise_25": 7,
        "denoise_50": 7,
    }


# ---------------------------------------------------------------------------------------------------------
# Mesh and evaluation
# ---------------------------------------------------------------------------------------------------------
def test_host_batch_to_global_on_eight_cpu_devices(prepared):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    (b,) = take(make(prepared, THREE_D, global_batch_size=8, seed=19), 1)
    g = host_batch_to_global(b, mesh)
    assert g["degraded"].shape == (8, 32, 32, 3) and g["degradation_id"].dtype == np.int32
    assert g["clean"].sharding == NamedSharding(mesh, P("data"))
    for shard in g["clean"].addressable_shards:
        assert shard.data.shape == (1, 32, 32, 3)
        np.testing.assert_array_equal(np.asarray(shard.data), b["clean"][shard.index])
    np.testing.assert_array_equal(np.asarray(g["degradation_id"]), b["degradation_id"])
    with pytest.raises(ValueError, match="not divisible"):
        host_batch_to_global({"x": np.zeros((6, 2))}, mesh)
    with pytest.raises(TypeError, match="only numeric arrays"):
        host_batch_to_global({"name": np.array(["a"] * 8)}, mesh)
    with pytest.raises(ValueError, match="no axis"):
        host_batch_to_global(b, mesh, axis="batch")


def test_eval_reader_yields_whole_pairs_in_name_order(prepared):
    tree = prepared["tree"]
    exs = list(sources.load_eval_split(prepared["data_dir"], "rain100l", "test"))
    assert [e.name for e in exs] == ["rain-001.png", "rain-002.png"]
    for e in exs:
        assert e.degraded.dtype == np.uint8 and e.degraded.shape == (F.H, F.W, 3)
        np.testing.assert_array_equal(e.degraded, F.read(tree / "test/derain/Rain100L/input" / e.name))
        np.testing.assert_array_equal(e.clean, F.read(tree / "test/derain/Rain100L/target" / ("no" + e.name)))
    names = [e.name for e in sources.load_eval_task(prepared["data_dir"], "denoise_25")]
    assert names == ["0000.png", "0001.png", "0002.png"]
    for task in sources.EVAL_TASKS["embedded"]:
        exs = list(sources.load_eval_task(prepared["data_dir"], task, "embedded"))
        assert [e.name for e in exs] == ["chelsea.png", "coffee.png"]
    with pytest.raises(DataError, match="clean images only"):
        sources.load_eval_split(prepared["data_dir"], "denoise_train", "train")
    with pytest.raises(DataError, match="has no split 'val'; it has eval15, train"):
        sources.load_eval_split(prepared["data_dir"], "lol_v1", "val")
    with pytest.raises(DataError, match="not prepared"):
        sources.load_eval_split(prepared["root"] / "empty", "gopro", "test")


def test_input_pipeline_bench_prints_one_json_line(prepared, capsys):
    import json

    from baryir_jax.bench.input_pipeline import main as bench_main

    rc = bench_main(
        ["--data_dir", str(prepared["data_dir"]), "--workers", "0", "--batches", "2", "--warmup", "1", "--patch", "32"]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 1
    line = json.loads(lines[0])
    assert line["mixture"] == "3D" and line["patch"] == 32 and line["images_per_s"]["0"] > 0
