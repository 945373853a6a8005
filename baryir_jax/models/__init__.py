"""Flax Linen models: the BaryNet restorer and the K potentials."""

from baryir_jax.models.barynet import BaryNet, BaryNetOutput
from baryir_jax.models.layers import GDFN, MDTA, LayerNorm, TransformerBlock, pixel_shuffle, pixel_unshuffle
from baryir_jax.models.potentials import Potentials, potential_features

__all__ = [
    "BaryNet",
    "BaryNetOutput",
    "Potentials",
    "potential_features",
    "LayerNorm",
    "MDTA",
    "GDFN",
    "TransformerBlock",
    "pixel_shuffle",
    "pixel_unshuffle",
]
