"""BaryNet: a Restormer U-Net whose bottleneck latent is split into a barycenter part and a residual.

``z = LN(latent(x))`` is the source latent, ``b = LN(T_θ(z))`` its image under the shared barycenter map
T_θ (``bary_blocks`` transformer blocks; the same LayerNorm parameters normalise z and T_θ(z)), and
``r = z − b`` the degradation-specific residual. The main decoder restores from ``concat(b, r)``; a parallel
residual decoder decodes ``r`` and adds its features, scaled by ``residual_scale`` (0.8), to the encoder skips
at levels 3, 2 and 1.

Sizes default to the official ones. The official constructor hard-codes a few widths (``+192``, ``192*3``)
that are consistent only at dim 48; here they are the multiples of ``dim`` they equal at dim 48
(``dim*6``, ``dim*16``, ``dim*8``), so dim 48 is identical to the official network and other widths work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from baryir_jax.models.layers import Downsample, LayerNorm, TransformerBlock, Upsample, conv2d

Dtype = Any


class BaryNetOutput(NamedTuple):
    """What :class:`BaryNet` returns (NHWC): the restored image, the source latent z, the barycenter latent b
    and the residual r = z − b."""

    restored: jax.Array
    z: jax.Array
    b: jax.Array
    r: jax.Array


class OverlapPatchEmbed(nn.Module):
    embed_dim: int
    use_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return conv2d(x, self.embed_dim, 3, padding=1, use_bias=self.use_bias, dtype=self.dtype, name="proj")


class BaryNet(nn.Module):
    """The BaryIR restorer. ``apply({'params': p}, x)`` with x float32 NHWC in [0, 1] → :class:`BaryNetOutput`.

    Height and width must be multiples of 8 (three 2× downsamplings); pad or trim first
    (``baryir_jax.evaluate`` does this for whole images).
    """

    inp_channels: int = 3
    out_channels: int = 3
    dim: int = 48
    num_blocks: Sequence[int] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: Sequence[int] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    use_bias: bool = False
    layernorm_type: str = "WithBias"
    bary_blocks: int | None = None  # depth of T_θ; None = num_blocks[3], as in the official code
    residual_scale: float = 0.8
    dtype: Dtype = jnp.float32  # compute dtype; parameters are always float32
    # How the depthwise convolutions are computed: 'native' (XLA's grouped convolution: TPU, GPU) or 'shifted'
    # (shifted sums: XLA:CPU). Same function. Callers choose it for the devices they compile for
    # (models.layers.resolve_conv_impl); it is not part of the architecture and model_config.json omits it.
    conv_impl: str = "native"

    def _blocks(self, x, n, dim, heads, prefix):
        for i in range(n):
            x = TransformerBlock(
                dim,
                heads,
                self.ffn_expansion_factor,
                self.use_bias,
                self.layernorm_type == "WithBias",
                self.dtype,
                conv_impl=self.conv_impl,
                name=f"{prefix}_{i}",
            )(x)
        return x

    def _tb(self, x, dim, heads, name):
        return TransformerBlock(
            dim,
            heads,
            self.ffn_expansion_factor,
            self.use_bias,
            self.layernorm_type == "WithBias",
            self.dtype,
            conv_impl=self.conv_impl,
            name=name,
        )(x)

    def _conv1(self, x, features, name):
        return conv2d(x, features, 1, use_bias=self.use_bias, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x) -> BaryNetOutput:
        if self.layernorm_type not in ("WithBias", "BiasFree"):
            raise ValueError(f"layernorm_type must be 'WithBias' or 'BiasFree', got {self.layernorm_type!r}")
        if len(self.num_blocks) != 4 or len(self.heads) != 4:
            raise ValueError(f"num_blocks and heads need 4 entries, got {self.num_blocks} and {self.heads}")
        if x.ndim != 4 or x.shape[-1] != self.inp_channels:
            raise ValueError(
                f"BaryNet expects NHWC input with {self.inp_channels} channels, got shape {tuple(x.shape)}"
            )
        if x.shape[1] % 8 or x.shape[2] % 8:
            raise ValueError(
                f"BaryNet needs height and width divisible by 8, got {x.shape[1]}x{x.shape[2]}; pad or trim the "
                "image (baryir_jax.evaluate pads/trims whole images for you)"
            )
        d, nb, hd = self.dim, self.num_blocks, self.heads
        t_depth = nb[3] if self.bary_blocks is None else self.bary_blocks
        s = self.residual_scale
        inp = x.astype(jnp.float32)
        x = inp.astype(self.dtype)

        # Encoder.
        e1 = self._blocks(
            OverlapPatchEmbed(d, self.use_bias, self.dtype, name="patch_embed")(x), nb[0], d, hd[0], "encoder_level1"
        )
        e2 = self._blocks(Downsample(d, self.dtype, name="down1_2")(e1), nb[1], 2 * d, hd[1], "encoder_level2")
        e3 = self._blocks(Downsample(2 * d, self.dtype, name="down2_3")(e2), nb[2], 4 * d, hd[2], "encoder_level3")
        latent = self._blocks(Downsample(4 * d, self.dtype, name="down3_4")(e3), nb[3], 8 * d, hd[3], "latent")

        # Barycenter map at the bottleneck: one LayerNorm instance for both z and T_θ(z).
        ln = LayerNorm(self.layernorm_type == "WithBias", dtype=self.dtype, name="LN")
        z = ln(latent)
        b = ln(self._blocks(z, t_depth, 8 * d, hd[3], "barylatent"))
        r = z - b

        # Level 4 -> 3.
        main = self._tb(jnp.concatenate([b, r], axis=-1), 16 * d, hd[2], "noise_level3")
        main = self._conv1(main, 4 * d, "reduce_noise_level3")
        res = self._conv1(r, 8 * d, "resreduce_noise_level3")
        up = Upsample(4 * d, self.dtype, name="up4_3")(main)
        rho3 = Upsample(8 * d, self.dtype, name="resup4_3")(res)
        main = self._conv1(jnp.concatenate([up, e3 + s * rho3], axis=-1), 4 * d, "reduce_chan_level3")
        main = self._blocks(main, nb[2], 4 * d, hd[2], "decoder_level3")
        res = self._blocks(self._conv1(rho3, 4 * d, "resreduce_chan_level3"), nb[2], 4 * d, hd[2], "resdecoder_level3")
        main = self._conv1(self._tb(main, 4 * d, hd[2], "noise_level2"), 4 * d, "reduce_noise_level2")
        res = self._conv1(res, 4 * d, "resreduce_noise_level2")

        # Level 3 -> 2.
        up = Upsample(4 * d, self.dtype, name="up3_2")(main)
        rho2 = Upsample(4 * d, self.dtype, name="resup3_2")(res)
        main = self._conv1(jnp.concatenate([up, e2 + s * rho2], axis=-1), 2 * d, "reduce_chan_level2")
        main = self._blocks(main, nb[1], 2 * d, hd[1], "decoder_level2")
        res = self._blocks(self._conv1(rho2, 2 * d, "resreduce_chan_level2"), nb[1], 2 * d, hd[1], "resdecoder_level2")
        main = self._conv1(self._tb(main, 2 * d, hd[2], "noise_level1"), 2 * d, "reduce_noise_level1")
        res = self._conv1(res, 2 * d, "resreduce_noise_level1")

        # Level 2 -> 1, refinement, output.
        up = Upsample(2 * d, self.dtype, name="up2_1")(main)
        rho1 = Upsample(2 * d, self.dtype, name="resup2_1")(res)
        main = jnp.concatenate([up, e1 + s * rho1], axis=-1)
        main = self._blocks(main, nb[0], 2 * d, hd[0], "decoder_level1")
        main = self._blocks(main, self.num_refinement_blocks, 2 * d, hd[0], "refinement")
        out = conv2d(main, self.out_channels, 3, padding=1, use_bias=self.use_bias, dtype=self.dtype, name="output")
        restored = out.astype(jnp.float32) + inp
        return BaryNetOutput(restored, z, b, r)
