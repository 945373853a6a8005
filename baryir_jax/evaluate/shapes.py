"""Image geometry for whole-image evaluation: the official trim, padding, and shape buckets.

JAX compiles the network once per input shape, and restoration test sets hold many sizes (481×321 and
321×481, 550×413, 1280×720, 600×400, ...). `plan_buckets` maps every image shape to one of at most
`max_shapes` bucket shapes; each image is padded (bottom/right) to its bucket, restored, and cropped back, and
the metrics are taken on the cropped region only. When a set has no more distinct shapes than `max_shapes`
(the standard benchmarks have a handful), every bucket is an image shape itself: no padding at all, the network
sees exactly the official input. Otherwise buckets are merged greedily, least added padding first.

Padding does change the result a little, not only near the border: the network's attention (MDTA) pools over
all pixels. `--max_shapes 0` turns bucketing off (one compilation per distinct shape).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np

MULTIPLE = 8  # BaryNet downsamples three times


def round_up(n: int, m: int) -> int:
    return int(math.ceil(n / m) * m)


def trim(image: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
    """The official preprocessing: drop rows at the bottom and columns at the right down to a multiple of 8."""
    h, w = image.shape[:2]
    return image[: h - h % multiple, : w - w % multiple]


def pad_to(image: np.ndarray, height: int, width: int, mode: str = "reflect") -> np.ndarray:
    """Pad (H, W, C) at the bottom and right to (height, width). 'reflect' mirrors without repeating the edge
    (falls back to 'edge' for a 1-pixel side); 'edge' repeats the last row/column."""
    h, w = image.shape[:2]
    if height < h or width < w:
        raise ValueError(f"cannot pad a {h}x{w} image to the smaller {height}x{width}.")
    if (height, width) == (h, w):
        return image
    if mode not in ("reflect", "edge"):
        raise ValueError(f"pad mode must be 'reflect' or 'edge', got {mode!r}.")
    if mode == "reflect" and min(h, w) < 2:
        mode = "edge"
    return np.pad(image, ((0, height - h), (0, width - w), (0, 0)), mode=mode)


def plan_buckets(
    shapes: Iterable[tuple[int, int]], max_shapes: int = 8, multiple: int = MULTIPLE
) -> dict[tuple[int, int], tuple[int, int]]:
    """Map each (H, W) to a bucket (Hb, Wb) with Hb ≥ H, Wb ≥ W, both multiples of `multiple`, using at most
    `max_shapes` distinct buckets (0: no limit, every shape rounded up to `multiple` is its own bucket).

    The buckets minimise the padded area greedily: shapes are first rounded to `multiple` (then, if there are
    more than 64 distinct ones, to a coarser grid), and the pair of buckets whose merge adds the fewest padded
    pixels (weighted by how many images use them) is merged until `max_shapes` remain."""
    counts = Counter((int(h), int(w)) for h, w in shapes)
    if not counts:
        return {}
    for h, w in counts:
        if h < 1 or w < 1:
            raise ValueError(f"image shape {h}x{w} is empty.")
    grid = multiple
    base = {s: (round_up(s[0], grid), round_up(s[1], grid)) for s in counts}
    if max_shapes <= 0 or len(set(base.values())) <= max_shapes:
        return base
    while len(set(base.values())) > 64:
        grid *= 2
        base = {s: (round_up(s[0], grid), round_up(s[1], grid)) for s in counts}
    weight: Counter = Counter()
    for s, n in counts.items():
        weight[base[s]] += n
    buckets = dict(weight)  # bucket -> number of images
    while len(buckets) > max_shapes:
        keys = list(buckets)
        best = None
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                a, b = keys[i], keys[j]
                u = (max(a[0], b[0]), max(a[1], b[1]))
                cost = buckets[a] * (u[0] * u[1] - a[0] * a[1]) + buckets[b] * (u[0] * u[1] - b[0] * b[1])
                if best is None or cost < best[0]:
                    best = (cost, a, b, u)
        _, a, b, u = best
        n = buckets.pop(a) + buckets.pop(b)
        buckets[u] = buckets.get(u, 0) + n
    out = {}
    for s in counts:
        fits = [bk for bk in buckets if bk[0] >= base[s][0] and bk[1] >= base[s][1]]
        out[s] = min(fits, key=lambda bk: bk[0] * bk[1])
    return out


def padding_overhead(shapes: Iterable[tuple[int, int]], plan: dict) -> float:
    """Padded pixels as a fraction of the image pixels."""
    img = pad = 0
    for s in shapes:
        b = plan[s]
        img += s[0] * s[1]
        pad += b[0] * b[1] - s[0] * s[1]
    return pad / img if img else 0.0
