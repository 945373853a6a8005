"""baryir_jax.models.io: where model checkpoints go (local paths made absolute, cloud paths kept) and a round trip."""

import os

import numpy as np

from baryir_jax.models.io import as_path, load_model_checkpoint, save_model_checkpoint


def test_cloud_paths_are_kept_and_local_paths_made_absolute(tmp_path, monkeypatch):
    assert os.fspath(as_path("gs://bucket/runs/3d") / "checkpoints") == "gs://bucket/runs/3d/checkpoints"
    monkeypatch.chdir(tmp_path)
    assert os.fspath(as_path("runs/demo")) == os.path.join(str(tmp_path), "runs", "demo")


def test_round_trip_through_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    written = save_model_checkpoint("out/model", params, {"dim": 8, "num_blocks": (1, 1, 1, 1)})
    assert written == os.path.join(str(tmp_path), "out", "model")
    _, got, pots, pot_params, meta = load_model_checkpoint("out/model")
    np.testing.assert_array_equal(got["w"], params["w"])
    assert pots is None and pot_params is None and meta["barynet"]["num_blocks"] == [1, 1, 1, 1]
