"""Transport costs c(x, y), one value per sample.

Both costs reduce over every axis but the first (the batch axis), so they work on flat feature vectors
(toy problems) and on image-shaped latents (BaryIR's bottleneck) alike.

* `rms_cost`: BaryIR's cost, the non-squared, dimension-normalised distance sqrt(mean((x - y)^2)).
* `half_sq_cost`: the quadratic cost 1/2 ||x - y||^2 (NOTB's `strong_cost`, summed over dimensions), for
    which the max-min game yields the W2 barycenter and the closed forms of `gaussian.py` apply.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Cost = Callable[[jax.Array, jax.Array], jax.Array]


def _per_sample_sq(x: jax.Array, y: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"cost: x and y must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim < 1:
        raise ValueError("cost: inputs need a leading batch axis")
    d = (x - y).reshape(x.shape[0], -1)
    return d * d


def half_sq_cost(x: jax.Array, y: jax.Array) -> jax.Array:
    """1/2 ||x - y||^2 summed over all non-batch axes; shape (B,)."""
    return 0.5 * jnp.sum(_per_sample_sq(x, y), axis=-1)


def rms_cost(x: jax.Array, y: jax.Array) -> jax.Array:
    """sqrt(mean((x - y)^2)) over all non-batch axes; shape (B,).

    The gradient at x == y is defined as 0 (the subgradient of a norm at its minimum) instead of NaN.
    """
    ms = jnp.mean(_per_sample_sq(x, y), axis=-1)
    positive = ms > 0
    safe = jnp.where(positive, ms, 1.0)
    return jnp.where(positive, jnp.sqrt(safe), 0.0)


COSTS: dict[str, Cost] = {"rms": rms_cost, "half_sq": half_sq_cost}


def get_cost(name: str) -> Cost:
    """Looks a cost up by name ('rms' or 'half_sq')."""
    try:
        return COSTS[name]
    except KeyError:
        raise ValueError(f"unknown cost {name!r}; known: {sorted(COSTS)}") from None
