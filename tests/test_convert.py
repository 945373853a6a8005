"""The converter: safe loading, the official whole-module format, state dicts, errors, and the CLI."""

import json
import os
import pickle
import subprocess
import sys
import types
import zipfile

import jax
import numpy as np
import pytest

from baryir_jax.convert import ConversionError, UnsafeCheckpointError, torch_to_flax
from baryir_jax.convert.official import convert_barynet, convert_potentials
from baryir_jax.convert.pattern import pattern_state_dict
from baryir_jax.convert.torch_pickle import CheckpointFormatError, load_torch_checkpoint

torch = pytest.importorskip("torch", reason="torch (the convert extra) writes the checkpoints under test")
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "parity_official.npz")


@pytest.fixture(scope="module")
def keys():
    return json.loads(str(np.load(FIXTURE)["meta"]))["keys"]


def _torch_zip_with_pickle(path, payload: bytes):
    """A file laid out exactly like torch.save's zip, with the given data.pkl."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_calling_os_system_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _torch_zip_with_pickle(path, pickle.dumps({"BaryIR": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError) as e:
        torch_to_flax(str(path))
    assert "system" in str(e.value) and ("posix" in str(e.value) or "os." in str(e.value))
    assert not marker.exists()
    # the same through the CLI: an error message, exit status 1, nothing run
    r = subprocess.run(
        [sys.executable, "-m", "baryir_jax.convert.cli", "--checkpoint", str(path), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "refusing to load the global" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("global_name", [("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load")])
def test_other_globals_off_the_allow_list_are_refused(tmp_path, global_name):
    mod, name = global_name
    payload = b"\x80\x02c" + f"{mod}\n{name}\n".encode() + b"X\x01\x00\x00\x001\x85R."
    path = tmp_path / "x.pth"
    _torch_zip_with_pickle(path, payload)
    with pytest.raises(UnsafeCheckpointError, match=f"'{mod}.{name}'"):
        load_torch_checkpoint(str(path))


def test_non_zip_file_is_a_clear_error(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointFormatError, match="not a zip archive"):
        load_torch_checkpoint(str(path))


def _module_trees(*state_dicts):
    """Whole nn.Module trees with the official layout, whose classes live in a module `model_bary`."""
    fake = types.ModuleType("model_bary")
    for name in ("BaryNet", "Potentials", "TransformerBlock"):
        setattr(fake, name, type(name, (torch.nn.Module,), {"__module__": "model_bary"}))
    sys.modules["model_bary"] = fake
    roots = []
    for state_dict, root_cls in zip(state_dicts, ("BaryNet", "Potentials")):
        root = getattr(fake, root_cls)()
        for key, value in state_dict.items():
            *path, leaf = key.split(".")
            m = root
            for i, tok in enumerate(path):
                if not hasattr(m, tok) or getattr(m, tok) is None:
                    nxt_is_digit = i + 1 < len(path) and path[i + 1].isdigit()
                    m.add_module(tok, torch.nn.Sequential() if nxt_is_digit else fake.TransformerBlock())
                m = getattr(m, tok)
            m.register_parameter(leaf, torch.nn.Parameter(torch.from_numpy(value.copy())))
        roots.append(root)
    return roots


def test_official_whole_module_checkpoint(tmp_path, keys, capsys):
    sd = pattern_state_dict(keys["barynet"])
    psd = pattern_state_dict(keys["potentials"])
    barynet, pots = _module_trees(sd, psd)
    path = tmp_path / "model_allBaryNet128__56_1.0.pth"
    torch.save({"epoch": 56, "BaryIR": barynet, "Pots": pots}, str(path))
    del sys.modules["model_bary"]  # the user does not have the official module

    out = torch_to_flax(str(path))
    assert "model_bary" not in sys.modules
    ref, _, _ = convert_barynet(sd)
    ref_p, _ = convert_potentials(psd)
    assert jax.tree.all(jax.tree.map(np.array_equal, out["barynet"], ref))
    assert jax.tree.all(jax.tree.map(np.array_equal, out["potentials"], ref_p))
    lines = [line for line in capsys.readouterr().out.splitlines() if "unused" in line]
    assert len(lines) == 1 and "chnl_reduce1" in lines[0] and "reduce_noise_channel_3" in lines[0]


def test_state_dict_file_with_ddp_prefix(tmp_path, keys):
    sd = pattern_state_dict(keys["barynet"])
    path = tmp_path / "sd.pth"
    torch.save({"module." + k: torch.from_numpy(v) for k, v in sd.items()}, str(path))
    out = torch_to_flax(str(path), report=None)
    assert out["potentials"] is None
    ref, _, _ = convert_barynet(sd)
    assert jax.tree.all(jax.tree.map(np.array_equal, out["barynet"], ref))


def test_mis_shaped_and_missing_parameters_name_the_key(keys):
    sd = pattern_state_dict(keys["barynet"])
    bad = dict(sd)
    bad["latent.0.attn.qkv.weight"] = np.zeros((1152, 384, 3, 3), np.float32)
    with pytest.raises(ConversionError) as e:
        convert_barynet(bad)
    assert "latent.0.attn.qkv.weight" in str(e.value)
    assert "(1152, 384, 3, 3)" in str(e.value) and "(1152, 384, 1, 1)" in str(e.value)
    missing = {k: v for k, v in sd.items() if k != "decoder_level2.0.ffn.dwconv.weight"}
    with pytest.raises(ConversionError, match="missing parameter for decoder_level2_0/ffn/dwconv/kernel"):
        convert_barynet(missing)


def test_cli_writes_a_checkpoint_the_package_loads(tmp_path, keys):
    from baryir_jax.models.io import load_model_checkpoint

    sd = pattern_state_dict(keys["barynet"])
    psd = pattern_state_dict(keys["potentials"])
    path = tmp_path / "ckpt.pth"
    torch.save(
        {
            "BaryIR": {k: torch.from_numpy(v) for k, v in sd.items()},
            "Pots": {k: torch.from_numpy(v) for k, v in psd.items()},
        },
        str(path),
    )
    out_dir = tmp_path / "converted"
    r = subprocess.run(
        [sys.executable, "-m", "baryir_jax.convert.cli", "--checkpoint", str(path), "--output", str(out_dir)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "3 potentials (patch 64)" in r.stdout
    model, params, pots, pots_params, meta = load_model_checkpoint(str(out_dir))
    ref, _, _ = convert_barynet(sd)
    assert jax.tree.all(jax.tree.map(np.array_equal, params, ref))
    assert pots is not None and pots.num_potentials == 3
    x = np.random.default_rng(0).uniform(0, 1, (1, 16, 24, 3)).astype(np.float32)
    assert model.apply({"params": params}, x).restored.shape == (1, 16, 24, 3)
