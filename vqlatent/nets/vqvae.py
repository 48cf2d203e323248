"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

Encoder: `num_downsamples` strided 4x4 convolutions (stride 2), a 3x3 convolution
and a residual stack, then a 1x1 convolution to the code dimension D (section 4.1;
the layout of the Sonnet/Haiku example). Decoder: the mirror image, with the
upsampling transposed convolutions computed in sub-pixel form by default
(`upsample='subpixel'`, the same function as `nn.ConvTranspose`, see layers.py).

The model sees images in [0, 1], centres them (x - 0.5) like the Sonnet example,
and returns reconstructions on the [0, 1] scale (no output non-linearity).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.nets.layers import ResidualStack, SubpixelConvTranspose

UPSAMPLERS = ("subpixel", "conv_transpose")


def check_image_shape(
    image_shape: tuple[int, ...], num_downsamples: int, field: str = "model.num_downsamples"
) -> tuple[int, int]:
    """Returns the code-map size, or raises if the image cannot be downsampled evenly."""
    h, w = image_shape[:2]
    factor = 2**num_downsamples
    if num_downsamples < 1:
        raise ValueError(f"{field}={num_downsamples}: need at least one stride-2 downsampling.")
    if h % factor or w % factor:
        raise ValueError(
            f"Image size {h}x{w} cannot be downsampled evenly by {factor} ({field}={num_downsamples}): "
            f"choose {field} so that 2**{field.split('.')[-1]} divides both sides, or resize the images "
            f"with --config.data.image_size."
        )
    return h // factor, w // factor


def upsampling_layer(kind: str, features: int, dtype: Any, name: str) -> nn.Module:
    """A 4x4, stride-2 transposed convolution in the requested implementation."""
    if kind == "subpixel":
        return SubpixelConvTranspose(features, (4, 4), (2, 2), dtype=dtype, name=name)
    if kind == "conv_transpose":
        return nn.ConvTranspose(features, (4, 4), (2, 2), padding="SAME", dtype=dtype, name=name)
    raise ValueError(f"Unknown upsampling {kind!r} (config model.upsample); choose one of {UPSAMPLERS}.")


class Encoder(nn.Module):
    """x -> z_e(x): strided convs, a 3x3 conv, a residual stack (paper section 4.1).

    `num_downsamples` 4x4 stride-2 convs with ReLUs (to C/2, ..., C/2, C), then a
    3x3 conv to C and the residual stack (which ends with a ReLU). VQ-VAE-2's
    level encoders (rosinality's `Encoder`) are the same module with
    `half_width_single=True`: a single downsampling conv then goes to C/2, not C.
    """

    num_hiddens: int
    num_residual_layers: int
    num_residual_hiddens: int
    num_downsamples: int
    half_width_single: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        n = self.num_downsamples
        for i in range(n):
            full = i == n - 1 and not (n == 1 and self.half_width_single)
            features = self.num_hiddens if full else self.num_hiddens // 2
            h = nn.Conv(
                features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype, name=f"down_{i}"
            )(h)
            h = nn.relu(h)
        h = nn.Conv(self.num_hiddens, (3, 3), padding="SAME", dtype=self.dtype, name="conv3x3")(h)
        return ResidualStack(
            self.num_hiddens,
            self.num_residual_layers,
            self.num_residual_hiddens,
            dtype=self.dtype,
            name="residual_stack",
        )(h)


class Decoder(nn.Module):
    """z_q -> x_hat: a 3x3 conv, a residual stack, stride-2 upsampling convs."""

    num_hiddens: int
    num_residual_layers: int
    num_residual_hiddens: int
    num_upsamples: int
    out_channels: int
    upsample: str = "subpixel"
    dtype: Any = None

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = nn.Conv(self.num_hiddens, (3, 3), padding="SAME", dtype=self.dtype, name="conv3x3")(z)
        h = ResidualStack(
            self.num_hiddens,
            self.num_residual_layers,
            self.num_residual_hiddens,
            dtype=self.dtype,
            name="residual_stack",
        )(h)
        for i in range(self.num_upsamples):
            last = i == self.num_upsamples - 1
            features = self.out_channels if last else self.num_hiddens // 2
            h = upsampling_layer(self.upsample, features, self.dtype, name=f"up_{i}")(h)
            if not last:
                h = nn.relu(h)
        return h


class VQVAE(nn.Module):
    """The full model: encoder, 1x1 pre-quantization conv, quantizer, decoder.

    `quantizer` is any module of `vqlatent.quantizers` (built from the config);
    it returns the Sonnet-style dict (`quantize`, `loss`, `perplexity`,
    `encoding_indices`, ...). The training objective (paper eq. 3) is assembled
    in `vqlatent.trainers.vqvae`.
    """

    quantizer: nn.Module
    embedding_dim: int
    out_channels: int
    num_hiddens: int = 128
    num_residual_layers: int = 2
    num_residual_hiddens: int = 32
    num_downsamples: int = 2
    upsample: str = "subpixel"
    dtype: Any = None

    def setup(self):
        self.encoder = Encoder(
            self.num_hiddens,
            self.num_residual_layers,
            self.num_residual_hiddens,
            self.num_downsamples,
            dtype=self.dtype,
        )
        self.pre_quantization = nn.Conv(self.embedding_dim, (1, 1), dtype=self.dtype)
        self.decoder = Decoder(
            self.num_hiddens,
            self.num_residual_layers,
            self.num_residual_hiddens,
            self.num_downsamples,
            self.out_channels,
            upsample=self.upsample,
            dtype=self.dtype,
        )

    def encode(self, images: jax.Array) -> jax.Array:
        """Images in [0, 1], (B, H, W, C) -> z_e (B, h, w, D)."""
        check_image_shape(images.shape[1:], self.num_downsamples)
        return self.pre_quantization(self.encoder(images - 0.5))

    def decode(self, z_q: jax.Array) -> jax.Array:
        """Quantized latents (B, h, w, D) -> reconstructions on the [0, 1] scale (float32)."""
        return self.decoder(z_q).astype(jnp.float32) + 0.5

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """Code indices (B, h, w) -> images: the path samplers use."""
        return self.decode(self.quantizer.lookup(codes))

    def __call__(self, images: jax.Array, *, train: bool, mask: jax.Array | None = None) -> dict[str, Any]:
        z_e = self.encode(images)
        vq = self.quantizer(z_e, train=train, mask=mask)
        return {"reconstruction": self.decode(vq["quantize"]), "z_e": z_e, "vq": vq}
