"""A look at the barycenter space: pooled z, b and r of image crops, their 2-D projections, and how well each
separates the degradations.

BaryIR's claim is that b = LN(T(z)) is shared by all degradations (a barycenter) while r = z − b carries what
is specific to each one. ``separation`` puts a number on that for a set of labelled crops (between-class
spread over within-class spread of the pooled latents: high = the degradations form separate clusters), and
``pca_2d`` gives the coordinates to plot them.

    crops, labels = crops_by_task({'derain': [img, ...], 'dehaze': [...]}, size=64)
    full = latents(barynet, params, crops)                      # {'z','b','r': (N, size/8, size/8, C)}
    pooled = {k: v.mean(axis=(1, 2)) for k, v in full.items()}  # (N, C) each
    {k: separation(v, labels) for k, v in pooled.items()}       # r should separate more than b
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def crops_by_task(
    images: Mapping[str, Sequence[np.ndarray]], size: int, max_per_image: int = 16
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Non-overlapping ``size``² crops (float32 in [0, 1]) of every image: → (crops (N, size, size, 3),
    labels (N,) int, task names indexed by label). Images smaller than ``size`` are skipped."""
    if size < 8 or size % 8:
        raise ValueError(f"crop size must be a positive multiple of 8, got {size}")
    crops, labels, names = [], [], list(images)
    for label, task in enumerate(names):
        for img in images[task]:
            img = np.asarray(img)
            img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
            h, w = img.shape[:2]
            taken = 0
            for y in range(0, h - size + 1, size):
                for x in range(0, w - size + 1, size):
                    if taken == max_per_image:
                        break
                    crops.append(img[y : y + size, x : x + size, :3])
                    labels.append(label)
                    taken += 1
    if not crops:
        raise ValueError(f"no image is at least {size}x{size}: nothing to crop")
    return np.stack(crops), np.asarray(labels, np.int32), names


@functools.cache
def _latents_fn(barynet):
    def f(params, x):
        out = barynet.apply({"params": params}, x)
        return out.z, out.b, out.r

    return jax.jit(f)


def latents(barynet, params, crops: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """z, b and r of every crop, (N, h/8, w/8, C) each, float32."""
    fn = _latents_fn(barynet)
    parts = {"z": [], "b": [], "r": []}
    for i in range(0, len(crops), batch_size):
        z, b, r = fn(params, jnp.asarray(crops[i : i + batch_size]))
        for k, v in zip("zbr", (z, b, r)):
            parts[k].append(np.asarray(v, np.float32))
    return {k: np.concatenate(v) for k, v in parts.items()}


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of ``x`` (N, D) → (N, 2)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:2].T).astype(np.float32)


def separation(x: np.ndarray, labels: np.ndarray) -> float:
    """Between-class over within-class mean squared distance of the rows of ``x`` (N, D) grouped by ``labels``
    (a Fisher-style ratio; scale-free). 0 = the classes coincide; large = tight, separate clusters."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError("separation needs at least two classes")
    mean = x.mean(axis=0)
    between = sum((labels == c).sum() * np.sum((x[labels == c].mean(axis=0) - mean) ** 2) for c in classes)
    within = sum(np.sum((x[labels == c] - x[labels == c].mean(axis=0)) ** 2) for c in classes)
    return float(between / max(within, 1e-30))
