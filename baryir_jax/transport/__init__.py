"""The max-min Wasserstein barycenter game, generic in the map and the potentials.

* `costs`: BaryIR's RMS cost and ½‖x − y‖², per sample.
* `congruence`: Σ_k λ_k f_k ≡ 0 by soft penalty or exact parametrisation; λ from counts; degradation id →
  potential index.
* `game`: map and potential objectives and `game_step` (inner map steps, two optax optimizers).
* `gaussian`: closed-form barycenters (Gaussian fixed point, 1-D quantiles), L2-UVP, BW2-UVP.
* `toy`: ``python -m baryir_jax.transport.toy``, the ground-truth check as a command.
"""

from baryir_jax.transport import congruence, costs, game, gaussian

__all__ = ["congruence", "costs", "game", "gaussian"]
