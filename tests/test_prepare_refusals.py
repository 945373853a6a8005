"""baryir-prepare on awkward layouts and destinations: Rain100L folders whose input/ and target/ hold the same
names, a --data_dir that is a file, and refused builds (their summary says NOTHING WRITTEN and no folder is
left behind). Cost: about 15 s (two tiny Rain100L builds)."""

import os
from pathlib import Path

import data_fakes as F
import grain
import numpy as np
import pytest

from baryir_jax.data import sources
from baryir_jax.data.prepare import main as prepare_main
from baryir_jax.data.prepare import prepare
from baryir_jax.data.report import DataError


def quiet(*args, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("out", lambda s: None)
    return prepare(*args, **kwargs)


def _records(data_dir, dataset, split):
    ds = grain.MapDataset.source(sources.open_split(data_dir, dataset, split))
    return {rec["name"].decode(): rec for rec in ds}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(
    "names",
    [
        {"rain-001.png": "rain-001.png", "rain-002.png": "rain-002.png"},  # the same names on both sides
        {"norain-1.png": "norain-1.png", "norain-2.png": "norain-2.png"},
        {"1.png": "1.png", "2.png": "2.png"},
        {"rain-1.png": "rain-1.png", "rain-2.png": "norain-2.png"},  # mixed: equal names first, then the convention
    ],
)
def test_rain100l_test_pairs_equal_names_first_then_the_convention(tmp_path, names):
    d = tmp_path / "data/test/derain/Rain100L"
    clean = {}
    for i, (deg, cl) in enumerate(names.items()):
        img = F.rand_image(i)
        F.save(d / "input" / deg, 255 - img)
        F.save(d / "target" / cl, img)
        clean[deg] = img
    r = quiet("rain100l", tmp_path / "out", tmp_path / "data").report
    assert dict(r.written) == {"test": len(names)}
    assert r.count("unpaired") == 0 and r.count("skipped") == 0 and r.count("refused") == 0
    got = _records(tmp_path / "out", "rain100l", "test")
    assert sorted(got) == sorted(names)
    for deg, rec in got.items():
        assert rec["clean_name"].decode() == names[deg]
        np.testing.assert_array_equal(rec["clean"], clean[deg])
        np.testing.assert_array_equal(rec["degraded"], 255 - clean[deg])


def test_an_equal_name_and_a_conventional_partner_of_one_input_is_not_a_duplicate(tmp_path):
    d = tmp_path / "data/test/derain/Rain100L"
    img = F.rand_image(0)
    F.save(d / "input/rain-1.png", 255 - img)
    F.save(d / "target/rain-1.png", img)
    F.save(d / "input/rain-1.jpg", 255 - img, quality=95)  # a second input with the same stored stem
    F.save(d / "target/norain-1.png", img)
    r = quiet("rain100l", tmp_path / "out", tmp_path / "data").report
    assert dict(r.written) == {"test": 1}
    assert [i.path.endswith("rain-1.jpg") for i in r.of_kind("refused")] == [True]


def test_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    tree = F.make_official_tree(tmp_path / "src")
    (tmp_path / "afile").write_text("x")
    for data_dir in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        rc = prepare_main(["--dataset", "lol_v1", "--manual_dir", str(tree), "--data_dir", str(data_dir)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and "is not a folder" in err[0], err
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("when", ["scan", "generation"])
def test_a_refused_build_says_nothing_written_and_leaves_no_folder(tmp_path, capsys, when):
    src = tmp_path / "pairs"
    (src / "degraded").mkdir(parents=True)
    (src / "target").mkdir()
    if when == "scan":  # no pair at all: refused while scanning
        F.save(src / "degraded/x.png", F.rand_image(0))
        F.save(src / "target/y.png", F.rand_image(1))
    else:  # a pair whose degraded image is unreadable: refused while writing
        (src / "degraded/x.png").write_bytes(b"not a png")
        F.save(src / "target/x.png", F.rand_image(0))
    for data_dir in (tmp_path / "new/data", tmp_path / "existing"):
        if data_dir.name == "existing":
            data_dir.mkdir()
            (data_dir / "keep.txt").write_text("mine")
        before = _tree(data_dir)
        rc = prepare_main(["--dataset", "paired_folder", "--manual_dir", str(src), "--data_dir", str(data_dir)])
        err = capsys.readouterr().err
        result = [line for line in err.splitlines() if "result:" in line]
        assert rc == 1 and result == ["  result: NOTHING WRITTEN"], err
        assert "written with" not in err
        assert _tree(data_dir) == before
    assert not (tmp_path / "new").exists()
    with pytest.raises(DataError):
        quiet("paired_folder", tmp_path / "third", src)
    assert not os.path.exists(tmp_path / "third")
