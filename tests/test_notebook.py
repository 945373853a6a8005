"""colab/baryir_demo.ipynb: committed without outputs, and executed top to bottom on CPU in its quick mode."""

from __future__ import annotations

import json
import os
import re
import time

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "baryir_demo.ipynb")


def test_notebook_is_committed_without_outputs():
    with open(NOTEBOOK) as f:
        nb = json.load(f)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"code cell {i} has outputs"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    upload = tmp_path / "my photo.png"  # a user's image: a noisy gradient, to exercise step 7
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 96 * 80 * 3).reshape(80, 96, 3)
    Image.fromarray(np.clip(gradient + rng.normal(0, 20, gradient.shape), 0, 255).astype(np.uint8)).save(upload)
    monkeypatch.setenv("BARYIR_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("BARYIR_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("BARYIR_NOTEBOOK_UPLOAD", str(upload))
    monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device in the kernel, as a Colab CPU runtime has

    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    elapsed = time.perf_counter() - t0
    assert elapsed < 600, f"the notebook took {elapsed:.0f} s"

    outputs = [
        "".join(o.get("text", "") for o in c.get("outputs", []) if o.get("output_type") == "stream")
        for c in nb.cells
        if c.cell_type == "code"
    ]
    text = "\n".join(outputs)
    assert "backend: CPU" in text
    # Step 5: a PSNR row for every degradation the default (3D) demo trains, and none for the others.
    rows = {line.split()[0] for line in text.splitlines() if re.match(r"[a-z_0-9]+ +\d+ +\d+\.\d\d ", line)}
    assert rows == {"derain", "dehaze", "denoise_15", "denoise_25", "denoise_50"}, rows
    # Step 6: separation scores for z, b and r; step 7: the uploaded image restored and written.
    assert "Separation" in text and "b:" in text and "r:" in text
    restored = tmp_path / "my photo_restored.png"
    assert restored.exists()
    assert np.asarray(Image.open(restored)).shape == (80, 96, 3)
    images = sum(
        1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    )
    assert images >= 3, f"expected the restoration grid, the latent scatter and the upload figure; got {images}"
