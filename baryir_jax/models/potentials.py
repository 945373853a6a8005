"""The K potential networks f_k of the barycenter game, one per degradation source.

Each head (official ``Potentials._build_potentials``): grouped conv 4×4 stride 4 padding 1 (4 groups, no bias,
weights N(0, 0.02)) → LeakyReLU(0.2) → flatten in (C, H, W) order → Linear(F → F/4) → Linear(F/4 → 64) (no
activation between the two) → LeakyReLU(0.2) → Linear(64 → 1). Linear layers use PyTorch's default init
(weight and bias U(±1/√fan_in)).

Parameters are ``{'potential_0': …, …, 'potential_{K-1}': …}``, the layout ``baryir_jax.transport`` expects.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from baryir_jax.models.layers import conv2d, torch_default_bias_init, torch_default_kernel_init


def potential_features(channels: int, patch_size: int) -> int:
    """Flattened feature count F of one head for training patches of ``patch_size`` (latent ``patch_size/8``)."""
    side = patch_size // 8
    conv_side = (side + 2 - 4) // 4 + 1
    if conv_side < 1:
        raise ValueError(f"patch_size {patch_size} is too small for the potentials (needs at least 16)")
    return channels * conv_side * conv_side


class _Head(nn.Module):
    channels: int
    features: int

    @nn.compact
    def __call__(self, b):
        x = conv2d(
            b, self.channels, 4, stride=4, padding=1, groups=4, name="conv", kernel_init=nn.initializers.normal(0.02)
        )
        x = nn.leaky_relu(x, negative_slope=0.2)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # PyTorch's Flatten order (C, H, W)
        f = self.features

        def dense(x, out, name):
            fan_in = x.shape[-1]
            return nn.Dense(
                out, kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(fan_in), name=name
            )(x)

        x = dense(x, int(f / 4), "fc1")
        x = dense(x, 64, "fc2")
        x = nn.leaky_relu(x, negative_slope=0.2)
        return dense(x, 1, "fc3")[:, 0]


class Potentials(nn.Module):
    """``apply({'params': p}, b)`` with b (B, patch/8, patch/8, channels) → (B, K): every potential at every b_i.

    The official code calls the heads one sample at a time; with no normalisation layer inside, the batched call
    is the same function.
    """

    num_potentials: int
    channels: int = 384
    patch_size: int = 128

    @nn.compact
    def __call__(self, b) -> jax.Array:
        side = self.patch_size // 8
        if b.ndim != 4 or b.shape[1:] != (side, side, self.channels):
            raise ValueError(
                f"Potentials(channels={self.channels}, patch_size={self.patch_size}) expect barycenter latents of "
                f"shape (B, {side}, {side}, {self.channels}), got {tuple(b.shape)}; the potentials are tied to "
                "the training patch size: build them with the patch size of the crops you train on"
            )
        feats = potential_features(self.channels, self.patch_size)
        b = b.astype(jnp.float32)
        outs = [_Head(self.channels, feats, name=f"potential_{k}")(b) for k in range(self.num_potentials)]
        return jnp.stack(outs, axis=-1)
