"""The PatchGAN discriminator of VQGAN (Esser et al. 2021), after pix2pix (Isola et al. 2017).

Taming-transformers' `NLayerDiscriminator`, `num_layers` = n, `channels` = C:

  4x4 conv C, stride 2, LeakyReLU(0.2)
  for k = 1 .. n-1:  4x4 conv C * min(2^k, 8), stride 2, norm, LeakyReLU(0.2)
  4x4 conv C * min(2^n, 8), stride 1, norm, LeakyReLU(0.2)
  4x4 conv 1, stride 1                                   -> one logit per patch

every convolution padded by 1, the normalised ones without bias. An image side s gives
floor(s / 2^n) - 2 logits per side (256 -> 30 with n = 3, taming's ImageNet model; 28 -> 5 with
n = 2; 8 -> 2 with n = 1); each logit judges one receptive field, a patch of the image. Kernels are
initialised N(0, 0.02^2) and normalisation scales N(1, 0.02^2), as taming's `weights_init`.

`norm`: 'batch' (taming's default; train-mode batch statistics, running averages in the
`batch_stats` collection), 'actnorm' (Kingma & Dhariwal 2018: a per-channel affine map whose offset
and scale start at the values that normalise the first training batch; taming's `use_actnorm`), or
'none'. ActNorm's data-dependent start is kept in the `actnorm_init` collection: the first call with
`train=True` records -mean and 1/std of its input per channel, and the learned `bias` and `scale`
(initialised 0 and 1) act on top of them, so the parameters stay ordinary trained parameters.
The stride-2 convolutions are `downsampling_layer(downsample, ...)` (the CPU's fast input gradient
by default, which the generator's GAN loss goes through).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.nets.downsample import downsampling_layer

NORMS = ("batch", "actnorm", "none")
KERNEL_INIT = nn.initializers.normal(0.02)
BATCH_NORM_MOMENTUM = 0.9  # PyTorch's momentum 0.1.
BATCH_NORM_EPSILON = 1e-5


def patch_grid_size(image_side: int, num_layers: int) -> int:
    """Logits per side of a `num_layers` discriminator on images of side `image_side`."""
    side = image_side
    for _ in range(num_layers):
        side = (side + 2 - 4) // 2 + 1
    return side - 2


def check_discriminator(image_shape: Sequence[int], num_layers: int, norm: str) -> None:
    """Clear errors for a layer count the images are too small for, and an unknown norm."""
    if norm not in NORMS:
        raise ValueError(f"model.discriminator.norm={norm!r}; choose one of {list(NORMS)}.")
    if num_layers < 1:
        raise ValueError(f"model.discriminator.num_layers={num_layers} must be >= 1.")
    sides = [patch_grid_size(s, num_layers) for s in image_shape[:2]]
    if min(sides) < 1:
        fits = max(
            (n for n in range(1, num_layers) if min(patch_grid_size(s, n) for s in image_shape[:2]) >= 1),
            default=0,
        )
        raise ValueError(
            f"model.discriminator.num_layers={num_layers} halves {image_shape[0]}x{image_shape[1]} images "
            f"{num_layers} times, which leaves no patch to judge ({sides[0]}x{sides[1]} logits): set "
            f"--config.model.discriminator.num_layers={fits}"
            + (" or fewer." if fits else " (the images are too small for any PatchGAN).")
        )


class ActNorm(nn.Module):
    """y = scale * s0 * (x + m0 + bias): (m0, s0) = (-mean, 1/std) of the first training batch."""

    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        bias = self.param("bias", nn.initializers.zeros_init(), (channels,))
        scale = self.param("scale", nn.initializers.ones_init(), (channels,))
        initialized = self.variable("actnorm_init", "initialized", lambda: jnp.zeros((), jnp.float32))
        offset = self.variable("actnorm_init", "offset", lambda: jnp.zeros((channels,), jnp.float32))
        gain = self.variable("actnorm_init", "gain", lambda: jnp.ones((channels,), jnp.float32))
        if train and not self.is_initializing():
            x32 = jax.lax.stop_gradient(x.astype(jnp.float32))
            mean = jnp.mean(x32, axis=(0, 1, 2))
            std = jnp.std(x32, axis=(0, 1, 2))
            first = initialized.value == 0
            offset.value = jnp.where(first, -mean, offset.value)
            gain.value = jnp.where(first, 1.0 / (std + 1e-6), gain.value)
            initialized.value = jnp.ones((), jnp.float32)
        y = (x.astype(jnp.float32) + offset.value + bias) * (gain.value * scale)
        return y.astype(self.dtype or x.dtype)


class PatchDiscriminator(nn.Module):
    """Images in [0, 1] (B, H, W, C) -> patch logits (B, h, w, 1) in float32.

    Attributes:
      num_layers: stride-2 convolutions (taming's n_layers, 3 for 256x256 images).
      channels: the first convolution's width (taming's ndf, 64).
      norm: 'batch', 'actnorm' or 'none'.
      downsample: the stride-2 convolutions' form ('auto', 'conv', 'phase_grad').
      dtype: compute dtype (parameters stay float32; normalisation statistics in float32).
    """

    num_layers: int = 3
    channels: int = 64
    norm: str = "batch"
    downsample: str = "auto"
    dtype: Any = None

    def _norm(self, h: jax.Array, train: bool, name: str) -> jax.Array:
        if self.norm == "batch":
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=BATCH_NORM_MOMENTUM,
                epsilon=BATCH_NORM_EPSILON,
                scale_init=lambda key, shape, dtype=jnp.float32: (
                    1.0 + 0.02 * jax.random.normal(key, shape, dtype)
                ),
                dtype=self.dtype,
                name=name,
            )(h)
        if self.norm == "actnorm":
            return ActNorm(dtype=self.dtype, name=name)(h, train)
        return h

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        check_discriminator(images.shape[1:], self.num_layers, self.norm)
        normalized = self.norm != "none"
        pad = ((1, 1), (1, 1))
        # Taming's discriminator sees images in [-1, 1].
        h = (2.0 * images - 1.0).astype(self.dtype or images.dtype)
        for k in range(self.num_layers):
            features = self.channels * min(2**k, 8)
            use_bias = k == 0 or not normalized
            conv = downsampling_layer(
                self.downsample, features, self.dtype, f"conv_{k}", pad, h.shape, use_bias, KERNEL_INIT
            )
            h = conv(h)
            if k > 0:
                h = self._norm(h, train, f"norm_{k}")
            h = nn.leaky_relu(h, 0.2)
        features = self.channels * min(2**self.num_layers, 8)
        h = nn.Conv(
            features,
            (4, 4),
            padding=pad,
            use_bias=not normalized,
            kernel_init=KERNEL_INIT,
            dtype=self.dtype,
            name=f"conv_{self.num_layers}",
        )(h)
        h = nn.leaky_relu(self._norm(h, train, f"norm_{self.num_layers}"), 0.2)
        logits = nn.Conv(1, (4, 4), padding=pad, kernel_init=KERNEL_INIT, dtype=self.dtype, name="logits")(h)
        return logits.astype(jnp.float32)
