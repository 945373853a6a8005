"""baryir_jax.models.io: where model checkpoints go (local paths made absolute, cloud paths kept) and a round trip."""

import os

import numpy as np
import pytest

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


def test_loaded_models_compute_depthwise_convolutions_for_this_host(tmp_path):
    """conv_impl is where the model runs, not what was trained: never written to model_config.json, resolved from
    jax.devices() (CPU here) on load, whatever an older or hand-written model_config.json says."""
    import json

    from baryir_jax.evaluate.checkpoint import load_restorer, numpy_init
    from baryir_jax.models import BaryNet

    tiny = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
    d = tmp_path / "model"
    save_model_checkpoint(str(d), numpy_init(BaryNet(**tiny), 0), tiny)
    assert "conv_impl" not in json.loads((d / "model_config.json").read_text())["barynet"]
    assert load_model_checkpoint(str(d))[0].conv_impl == "shifted"
    assert load_model_checkpoint(str(d), conv_impl="native")[0].conv_impl == "native"
    assert load_restorer(str(d)).module.conv_impl == "shifted"
    meta = json.loads((d / "model_config.json").read_text())
    meta["barynet"]["conv_impl"] = "native"  # as a TPU run might have written it
    (d / "model_config.json").write_text(json.dumps(meta))
    assert load_model_checkpoint(str(d))[0].conv_impl == "shifted"


def test_init_from_a_checkpoint_of_other_sizes_names_each_differing_field(tmp_path):
    """config.train.init_from with another model size: one line naming each field that differs (not the module's
    multi-line repr). Cheap: a pattern-initialised tiny checkpoint, shapes only."""
    from baryir_jax.config import ConfigError
    from baryir_jax.evaluate.checkpoint import numpy_init
    from baryir_jax.models import BaryNet
    from baryir_jax.models.io import save_model_checkpoint
    from baryir_jax.train.experiment import load_restorer_params

    tiny = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
    ckpt = str(tmp_path / "ckpt")
    save_model_checkpoint(ckpt, numpy_init(BaryNet(**tiny), 0), tiny)
    with pytest.raises(ConfigError) as e:
        load_restorer_params(ckpt, BaryNet(**{**tiny, "dim": 16, "num_refinement_blocks": 2}))
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert "dim: checkpoint 8, config 16" in msg and "num_refinement_blocks: checkpoint 1, config 2" in msg, msg
    assert "heads" not in msg  # equal fields are not named
