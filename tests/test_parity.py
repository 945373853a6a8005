"""Our BaryNet/Potentials against the official PyTorch outputs stored in tests/fixtures/parity_official.npz.

The fixture (made by tests/fixtures/make_parity_fixture.py from the official code) holds no weights: the state
dict is rebuilt here from its key names and shapes with the documented pattern, converted with our converter,
and run through our model.
"""

import json
import os

import jax
import numpy as np
import pytest

from baryir_jax.convert.official import convert_barynet, convert_potentials
from baryir_jax.convert.pattern import pattern_state_dict
from baryir_jax.models import BaryNet, Potentials

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "parity_official.npz")
TOL = 1e-4


@pytest.fixture(scope="module")
def fixture():
    data = np.load(FIXTURE)
    meta = json.loads(str(data["meta"]))
    return data, meta


@pytest.fixture(scope="module")
def converted(fixture):
    _, meta = fixture
    sd = pattern_state_dict(meta["keys"]["barynet"])
    params, config, ignored = convert_barynet(sd)
    pots_sd = pattern_state_dict(meta["keys"]["potentials"])
    pots, pots_config = convert_potentials(pots_sd)
    return params, config, ignored, pots, pots_config


def test_fixture_is_small_and_weightless(fixture):
    data, meta = fixture
    assert os.path.getsize(FIXTURE) <= 5 * 1024 * 1024
    n_params = sum(int(np.prod(s)) for _, s in meta["keys"]["barynet"])
    stored = sum(data[k].size for k in data.files if k != "meta")
    assert stored < n_params / 4  # outputs and inputs only, no parameter tensors


def test_config_read_off_the_state_dict(converted, fixture):
    _, config, ignored, _, pots_config = converted
    _, meta = fixture
    assert config["dim"] == 48 and tuple(config["num_blocks"]) == (1, 1, 1, 1)
    assert config["num_refinement_blocks"] == 1 and config["bary_blocks"] == 1
    assert tuple(config["heads"]) == (1, 2, 4, 8) and config["ffn_expansion_factor"] == 2.66
    assert {k.split(".")[0] for k in ignored} == {
        "chnl_reduce1",
        "chnl_reduce2",
        "chnl_reduce3",
        "reduce_noise_channel_1",
        "reduce_noise_channel_2",
        "reduce_noise_channel_3",
    }
    assert pots_config == dict(num_potentials=3, channels=384, patch_size=64)


@pytest.mark.parametrize("field", ["restored", "z", "b", "r"])
def test_barynet_matches_official(converted, fixture, field):
    params, config, *_ = converted
    data, _ = fixture
    out = jax.jit(BaryNet(**config, conv_impl="shifted").apply)({"params": params}, data["x_main"])  # CPU kernel
    ours, ref = np.asarray(getattr(out, field)), data[field]
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= TOL, f"{field}: max |Δ| {np.max(np.abs(ours - ref))}"
    assert np.std(ref) > 1e-2  # the comparison is not between two near-constant tensors


def test_native_grouped_convolution_matches_official_too(converted, fixture):
    """The TPU/GPU kernel (XLA's grouped convolution), run here on the CPU."""
    params, config, *_ = converted
    data, _ = fixture
    out = jax.jit(BaryNet(**config, conv_impl="native").apply)({"params": params}, data["x_main"])
    assert np.max(np.abs(np.asarray(out.restored) - data["restored"])) <= TOL


def test_potentials_match_official(converted, fixture):
    params, config, _, pots, pots_config = converted
    data, _ = fixture
    b_sq = BaryNet(**config, conv_impl="shifted").apply({"params": params}, data["x_square"]).b
    assert np.max(np.abs(np.asarray(b_sq) - data["b_square"])) <= TOL
    values = Potentials(**pots_config).apply({"params": pots}, data["b_square"])
    assert values.shape == (2, 3)
    assert np.max(np.abs(np.asarray(values) - data["potentials"])) <= TOL
    # the heads differ from each other, so a mixed-up head order would be caught
    assert np.min(np.abs(np.diff(data["potentials"], axis=1))) > 1e-4
