"""baryir-evaluate checks its arguments before the model loads: an --output that cannot receive the results and
a negative --max_shapes are one line and exit status 1, not a traceback after the compile.

Cost: under a second (nothing loads or compiles: the checkpoint named does not exist, so an argument checked
after the model would report the checkpoint instead)."""

from baryir_jax.evaluate import benchmark


def _args(tmp_path, *extra):
    return ["--checkpoint", str(tmp_path / "no_checkpoint"), "--data_dir", str(tmp_path), "--benchmark", "3d", *extra]


def test_an_output_that_is_a_file_is_one_line_before_the_model_loads(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    assert benchmark.main(_args(tmp_path, "--output", str(afile))) == 1
    err = capsys.readouterr().err
    assert f"--output {afile} exists and is not a folder" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_output_below_a_file_is_one_line_before_the_model_loads(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    assert benchmark.main(_args(tmp_path, "--output", str(afile / "sub"))) == 1
    err = capsys.readouterr().err
    assert f"{afile} is a file, not a folder" in err, err
    assert err.count("\n") == 1
    assert afile.read_bytes() == b""  # nothing written


def test_negative_max_shapes_is_one_line(tmp_path, capsys):
    assert benchmark.main(_args(tmp_path, "--output", str(tmp_path / "o"), "--max_shapes", "-1")) == 1
    err = capsys.readouterr().err
    assert "--max_shapes must be 0 (no bucketing) or more, got -1" in err, err
    assert not (tmp_path / "o").exists()
