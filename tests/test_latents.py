"""baryir_jax.evaluate.latents: crops, the 2-D projection and the separation score."""

import numpy as np
import pytest

from baryir_jax.evaluate.latents import crops_by_task, pca_2d, separation


def test_separation_orders_separate_and_mixed_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 50)
    centres = np.array([[0.0] * 8, [5.0] + [0.0] * 7, [0.0, 5.0] + [0.0] * 6])
    apart = centres[labels] + rng.normal(size=(150, 8))
    mixed = rng.normal(size=(150, 8))
    farther = 2.0 * centres[labels] + (apart - centres[labels])  # same spread, centres twice as far apart
    assert separation(apart, labels) > 1.0
    assert separation(farther, labels) > 3.0 * separation(apart, labels)
    assert separation(mixed, labels) < 0.05
    # Scale-free: the ratio does not change when the latents are rescaled.
    assert separation(3.0 * apart, labels) == pytest.approx(separation(apart, labels), rel=1e-9)
    with pytest.raises(ValueError, match="two classes"):
        separation(apart, np.zeros(150))


def test_pca_2d_keeps_the_directions_of_largest_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 6)) * np.array([10.0, 0.1, 0.1, 5.0, 0.1, 0.1])
    xy = pca_2d(x)
    assert xy.shape == (500, 2)
    # The projection carries (almost) all of the variance, which lies along axes 0 and 3.
    assert xy.var(axis=0).sum() / x.var(axis=0).sum() > 0.99
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99


def test_crops_by_task_labels_and_sizes():
    a = np.zeros((40, 70, 3), np.uint8)
    b = np.full((16, 16, 3), 255, np.uint8)
    small = np.zeros((8, 8, 3), np.uint8)
    crops, labels, names = crops_by_task({"x": [a], "y": [b, small]}, size=16)
    assert names == ["x", "y"]
    assert crops.shape == (2 * 4 + 1, 16, 16, 3) and crops.dtype == np.float32
    assert labels.tolist() == [0] * 8 + [1]
    assert crops[-1].min() == 1.0  # uint8 scaled to [0, 1]
    with pytest.raises(ValueError, match="multiple of 8"):
        crops_by_task({"x": [a]}, size=12)
