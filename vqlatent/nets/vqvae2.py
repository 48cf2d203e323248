"""Hierarchical VQ-VAE-2 (Razavi et al. 2019, "Generating Diverse High-Fidelity
Images with VQ-VAE-2", Fig. 2a and Algorithm 1).

An image is encoded into a hierarchy of code maps. Levels are numbered from the
bottom (level 0, the finest map) to the top (level L-1, the coarsest);
`strides[l]` is the downsampling from level l-1 (the image, for l = 0) to level
l. The paper's 256x256 ImageNet model has `strides=(4, 2)`: a 64x64 bottom map
and a 32x32 top map; its FFHQ-1024 model has three levels, 128/64/32.

The structure follows the well-known PyTorch implementation of rosinality
(`vq-vae-2-pytorch`, `vqvae.py`), generalised to any number of levels:

  bottom-up:  h_0 = E_0(x),  h_l = E_l(h_{l-1})            (E_l downsamples by strides[l])
  top-down:   e_{L-1} = Q_{L-1}(conv1x1(h_{L-1}))
              e_l     = Q_l(conv1x1([C_l(above_l), h_l]))    for l = L-2, ..., 0
  decoder:    x_hat   = D([e_0, up(e_1), ..., up(e_{L-1})])  (everything upsampled to level 0)

where `above_l = [e_{l+1}, up(e_{l+2}), ...]` are the quantized latents of the
levels above l, upsampled to the resolution of level l+1, and C_l is a decoder
that brings them to the resolution of level l ("the top level is decoded and
used to condition the level below", in the encoder and in the decoder). With
two levels this is exactly rosinality's `enc_b`, `enc_t`, `quantize_conv_t`,
`dec_t`, `quantize_conv_b`, `upsample_t` and `dec`.

Every transposed convolution is a `SubpixelConvTranspose` (by default; see
`vqlatent.nets.layers`): the same function as `nn.ConvTranspose`, without
XLA:CPU's slow kernel gradient of strided transposed convolutions.

Each level has its own quantizer (any module of `vqlatent.quantizers`), whose
code dimension `embedding_dim` sets that level's latent width. The training
objective (VQ-VAE-2 eq. 2: reconstruction plus, for every level, the codebook
and commitment terms) is assembled in `vqlatent.trainers.vqvae2`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.codes.layout import CodeShapeError
from vqlatent.nets.vqvae import Decoder, Encoder, upsampling_layer


def level_names(num_levels: int) -> tuple[str, ...]:
    """Names of the levels, bottom first: ('bottom', 'top'), ('bottom', 'middle', 'top'), ...

    A single level is called 'top': it is the level whose prior is unconditional,
    which is what the prior trainers key on.
    """
    if num_levels < 1:
        raise ValueError(f"A VQ-VAE needs at least one level; got {num_levels}.")
    if num_levels == 1:
        return ("top",)
    if num_levels == 2:
        return ("bottom", "top")
    if num_levels == 3:
        return ("bottom", "middle", "top")
    return ("bottom", *(f"middle{i}" for i in range(1, num_levels - 1)), "top")


def num_halvings(stride: int, field: str = "model.strides") -> int:
    """log2(stride) for a stride that is a power of two >= 2 (each factor 2 is one 4x4 conv)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 2 or stride & (stride - 1):
        raise ValueError(
            f"{field} contains {stride!r}: every stride must be a power of two >= 2 "
            f"(each factor of 2 is one 4x4 stride-2 convolution)."
        )
    return stride.bit_length() - 1


def level_shapes(
    image_shape: Sequence[int], strides: Sequence[int], field: str = "model.strides"
) -> tuple[tuple[int, int], ...]:
    """The (h, w) of every level's code map, bottom first; clear error if a stride does not divide."""
    if not strides:
        raise ValueError(f"{field} is empty: give one stride per level, bottom first, e.g. (4, 2).")
    h, w = int(image_shape[0]), int(image_shape[1])
    shapes = []
    total = 1
    for l, stride in enumerate(strides):
        num_halvings(stride, field)
        total *= stride
        if h % stride or w % stride:
            raise ValueError(
                f"{field}={tuple(strides)} does not fit images of {image_shape[0]}x{image_shape[1]}: "
                f"level {l} ({level_names(len(strides))[l]}) would downsample {h}x{w} by {stride}, which "
                f"does not divide it (the product of the strides up to each level must divide the image "
                f"size). Choose other strides, or resize the images with --config.data.image_size."
            )
        h, w = h // stride, w // stride
        shapes.append((h, w))
    return tuple(shapes)


class Upsampler(nn.Module):
    """Upsamples a quantized latent by `factor` with 4x4 stride-2 transposed convs (ReLU between).

    For factor 2 this is rosinality's `upsample_t` (one ConvTranspose2d(D, D, 4, 2, 1)).
    """

    features: int
    factor: int
    upsample: str = "subpixel"
    dtype: Any = None

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        k = num_halvings(self.factor)
        h = z
        for i in range(k):
            h = upsampling_layer(self.upsample, self.features, self.dtype, name=f"up_{i}")(h)
            if i < k - 1:
                h = nn.relu(h)
        return h


class VQVAE2(nn.Module):
    """Hierarchical VQ-VAE with top-down conditioning, any number of levels.

    Attributes:
      quantizers: one unbound quantizer module per level, keyed by level name
        (`level_names(len(strides))`); each defines its level's `embedding_dim`
        and `num_embeddings`.
      strides: downsampling per level, bottom first (powers of two >= 2).
      out_channels: image channels.
      num_hiddens: channels of every encoder/decoder (rosinality's `channel`).
      num_residual_layers, num_residual_hiddens: residual blocks per stack and their width.
      upsample: 'subpixel' (default) or 'conv_transpose' (the same function).
      dtype: compute dtype of the convolutions (quantizers choose their own).
    """

    quantizers: Mapping[str, nn.Module]
    strides: tuple[int, ...]
    out_channels: int
    num_hiddens: int = 128
    num_residual_layers: int = 2
    num_residual_hiddens: int = 32
    upsample: str = "subpixel"
    dtype: Any = None

    @property
    def names(self) -> tuple[str, ...]:
        return level_names(len(self.strides))

    def embedding_dim(self, name: str) -> int:
        return int(self.quantizers[name].embedding_dim)

    def setup(self):
        names = self.names
        if set(self.quantizers) != set(names):
            raise ValueError(
                f"VQVAE2 with strides {tuple(self.strides)} has levels {list(names)}, "
                f"but quantizers were given for {sorted(self.quantizers)}."
            )
        num_levels = len(names)
        res = dict(
            num_residual_layers=self.num_residual_layers,
            num_residual_hiddens=self.num_residual_hiddens,
            dtype=self.dtype,
        )
        # rosinality's level encoder: downsample by the stride; C/2 after a single conv.
        self.encoders = {
            n: Encoder(self.num_hiddens, num_downsamples=num_halvings(s), half_width_single=True, **res)
            for n, s in zip(names, self.strides)
        }
        self.pre_quantization = {n: nn.Conv(self.embedding_dim(n), (1, 1), dtype=self.dtype) for n in names}
        # C_l: the levels above l (at the resolution of l+1) -> the resolution of l.
        self.condition_decoders = {
            names[l]: Decoder(
                self.num_hiddens,
                self.num_residual_layers,
                self.num_residual_hiddens,
                num_halvings(self.strides[l + 1]),
                self.embedding_dim(names[l]),
                upsample=self.upsample,
                dtype=self.dtype,
            )
            for l in range(num_levels - 1)
        }
        # up(e_k) to level t, for every level t that is ever a target (every level but the top).
        self.upsamplers = {
            f"{names[k]}_to_{names[t]}": Upsampler(
                self.embedding_dim(names[k]), self._factor(t, k), self.upsample, self.dtype
            )
            for t in range(num_levels - 1)
            for k in range(t + 1, num_levels)
        }
        self.decoder = Decoder(
            self.num_hiddens,
            self.num_residual_layers,
            self.num_residual_hiddens,
            num_halvings(self.strides[0]),
            self.out_channels,
            upsample=self.upsample,
            dtype=self.dtype,
        )

    def _factor(self, target: int, source: int) -> int:
        factor = 1
        for stride in self.strides[target + 1 : source + 1]:
            factor *= stride
        return factor

    def _stack_from(self, quantized: Sequence[jax.Array], level: int) -> jax.Array:
        """[e_level, up(e_{level+1}), ..., up(e_top)] at the resolution of `level`."""
        names = self.names
        parts = [quantized[level]]
        for k in range(level + 1, len(names)):
            parts.append(self.upsamplers[f"{names[k]}_to_{names[level]}"](quantized[k]))
        return jnp.concatenate(parts, axis=-1)

    def bottom_up(self, images: jax.Array) -> list[jax.Array]:
        """Images in [0, 1] -> the encoder features h_l of every level, bottom first."""
        level_shapes(images.shape[1:], self.strides)
        h = images - 0.5
        features = []
        for name in self.names:
            h = self.encoders[name](h)
            features.append(h)
        return features

    def decode(self, quantized: Sequence[jax.Array]) -> jax.Array:
        """Quantized latents of every level (bottom first) -> images on the [0, 1] scale (float32)."""
        if len(quantized) != len(self.names):
            raise ValueError(
                f"decode needs {len(self.names)} quantized latents ({list(self.names)}), "
                f"got {len(quantized)}."
            )
        return self.decoder(self._stack_from(quantized, 0)).astype(jnp.float32) + 0.5

    def lookup(self, codes: Mapping[str, jax.Array]) -> list[jax.Array]:
        """Code indices per level -> the quantized latents, bottom first."""
        check_code_pyramid(codes, self.names, self.strides)
        return [self.quantizers[n].lookup(codes[n]) for n in self.names]

    def decode_codes(self, codes: Mapping[str, jax.Array]) -> jax.Array:
        """Codes of every level ({name: (B, h_l, w_l) int}) -> images: the path samplers use."""
        return self.decode(self.lookup(codes))

    def __call__(self, images: jax.Array, *, train: bool, mask: jax.Array | None = None) -> dict[str, Any]:
        """Encodes top-down, quantizes every level, decodes.

        Returns:
          {'reconstruction': (B, H, W, C) float32, 'vq': {name: the quantizer's
          output dict}, 'codes': {name: encoding indices}, 'quantized': [e_l],
          bottom first}.
        """
        features = self.bottom_up(images)
        names = self.names
        quantized: list[jax.Array | None] = [None] * len(names)
        vq = {}
        for l in reversed(range(len(names))):
            h = features[l]
            if l < len(names) - 1:
                condition = self.condition_decoders[names[l]](self._stack_from(quantized, l + 1))
                h = jnp.concatenate([condition.astype(h.dtype), h], axis=-1)
            z_e = self.pre_quantization[names[l]](h)
            vq[names[l]] = self.quantizers[names[l]](z_e, train=train, mask=mask)
            quantized[l] = vq[names[l]]["quantize"]
        return {
            "reconstruction": self.decode(quantized),
            "vq": vq,
            "codes": {n: vq[n]["encoding_indices"] for n in names},
            "quantized": quantized,
        }


def check_code_pyramid(codes: Mapping[str, Any], names: Sequence[str], strides: Sequence[int]) -> None:
    """Checks that `codes` has every level and that neighbouring levels differ by their stride."""
    if set(codes) != set(names):
        raise CodeShapeError(
            f"Codes for levels {sorted(codes)} given, but the model has levels "
            f"{list(names)}: pass one code map per level."
        )
    batch = {n: codes[n].shape[0] for n in names}
    if len(set(batch.values())) != 1:
        raise CodeShapeError(f"Code maps of different batch sizes: {batch}.")
    for l in range(1, len(names)):
        below, above = codes[names[l - 1]].shape[1:3], codes[names[l]].shape[1:3]
        if tuple(a * strides[l] for a in above) != tuple(below):
            raise CodeShapeError(
                f"Code map {names[l]} is {'x'.join(map(str, above))} and {names[l - 1]} is "
                f"{'x'.join(map(str, below))}, but the model's stride between them is {strides[l]} "
                f"(model.strides={tuple(strides)}): these codes come from another model."
            )
