"""The VQ-VAE family as one network: an N-level hierarchy of code maps (Razavi et al. 2019,
"Generating Diverse High-Fidelity Images with VQ-VAE-2", Fig. 2a and Algorithm 1), of which the
VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning") is one level.

Levels are numbered from the bottom (level 0, the finest map) to the top (level L-1, the coarsest);
`strides[l]` is the downsampling from level l-1 (the image, for l = 0) to level l, each factor 2
one 4x4 stride-2 convolution. The paper's 256x256 ImageNet model has `strides=(4, 2)` (64x64 and
32x32 maps), its FFHQ-1024 model three levels (128/64/32); the MNIST VQ-VAE of the first paper is
one level, `strides=(4,)` (28x28 -> 7x7).

The structure follows rosinality's PyTorch `vq-vae-2-pytorch` (`vqvae.py`), for any number of levels:

  bottom-up:  h_0 = E_0(x),  h_l = E_l(h_{l-1})            (E_l downsamples by strides[l])
  top-down:   e_{L-1} = Q_{L-1}(conv1x1(h_{L-1}))
              e_l     = Q_l(conv1x1([C_l(above_l), h_l]))    for l = L-2, ..., 0
  decoder:    x_hat   = D([e_0, up(e_1), ..., up(e_{L-1})])  (everything upsampled to level 0)

where `above_l = [e_{l+1}, up(e_{l+2}), ...]` are the quantized latents of the levels above l at
the resolution of level l+1, and C_l a decoder that brings them to the resolution of level l. With
two levels this is exactly rosinality's `enc_b`, `enc_t`, `quantize_conv_t`, `dec_t`,
`quantize_conv_b`, `upsample_t` and `dec`. With one level it is the VQ-VAE of section 4.1 (encoder,
1x1 conv to the code dimension, quantizer, decoder; the layout of the Sonnet/Haiku example).

`architecture` picks between the two papers' only differences:
  'vqvae2': rosinality's level encoder, whose single downsampling conv goes to C/2 channels;
    parameters per level (`encoders_<level>`, `pre_quantization_<level>`, `quantizers_<level>`, ...).
  'vqvae': one level, the first paper's encoder (the last downsampling conv goes to C), and the
    parameter names of the VQ-VAE model (`encoder`, `pre_quantization`, `quantizer`, `decoder`), so
    that its checkpoints restore.

Every transposed convolution is `vqlatent.nets.layers.upsampling_layer(upsample, ...)`: by default
(`'auto'`) a `SubpixelConvTranspose` on the CPU (the same function as `nn.ConvTranspose`, without
XLA:CPU's slow kernel gradient of strided transposed convolutions) and `nn.ConvTranspose` on GPU/TPU. The model sees images in [0, 1], centres them
(x - 0.5) like the Sonnet example, and returns reconstructions on the [0, 1] scale (no output
non-linearity). Each level's quantizer (any module of `vqlatent.quantizers`) sets that level's code
dimension. The training objective (VQ-VAE eq. 3, VQ-VAE-2 eq. 2) is in
`vqlatent.trainers.autoencoder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.nets.downsample import downsampling_layer
from vqlatent.nets.layers import UPSAMPLERS, ResidualStack, upsampling_layer  # noqa: F401
from vqlatent.nets.levels import (  # noqa: F401  (level_names, level_shapes: part of this module's API)
    check_code_pyramid,
    check_image_shape,
    level_names,
    level_shapes,
    num_halvings,
)

ARCHITECTURES = ("vqvae", "vqvae2")


class Encoder(nn.Module):
    """x -> h: strided convs, a 3x3 conv, a residual stack (VQ-VAE section 4.1).

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
    downsample: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        n = self.num_downsamples
        for i in range(n):
            full = i == n - 1 and not (n == 1 and self.half_width_single)
            features = self.num_hiddens if full else self.num_hiddens // 2
            pads = ((1, 1), (1, 1))  # 4x4 / stride 2 halves every even size.
            h = downsampling_layer(self.downsample, features, self.dtype, f"down_{i}", pads, h.shape)(h)
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
    upsample: str = "auto"
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


class Upsampler(nn.Module):
    """Upsamples a quantized latent by `factor` with 4x4 stride-2 transposed convs (ReLU between).

    For factor 2 this is rosinality's `upsample_t` (one ConvTranspose2d(D, D, 4, 2, 1)).
    """

    features: int
    factor: int
    upsample: str = "auto"
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


class Autoencoder(nn.Module):
    """Hierarchical VQ-VAE with top-down conditioning, any number of levels (one: the VQ-VAE).

    Attributes:
      quantizers: one unbound quantizer module per level, keyed by level name
        (`level_names(len(strides))`); each defines its level's `embedding_dim`.
      strides: downsampling per level, bottom first (powers of two >= 2).
      out_channels: image channels.
      num_hiddens: channels of every encoder/decoder (rosinality's `channel`).
      num_residual_layers, num_residual_hiddens: residual blocks per stack and their width.
      upsample: 'auto' (default: by backend), 'subpixel' or 'conv_transpose' (the same function).
      downsample: 'auto' (default: by backend), 'conv' or 'phase_grad' (the same function;
        `vqlatent.nets.downsample`).
      architecture: 'vqvae2' (default) or 'vqvae' (one level; see the module docstring).
      dtype: compute dtype of the convolutions (quantizers choose their own).
    """

    quantizers: Mapping[str, nn.Module]
    strides: tuple[int, ...]
    out_channels: int
    num_hiddens: int = 128
    num_residual_layers: int = 2
    num_residual_hiddens: int = 32
    upsample: str = "auto"
    downsample: str = "auto"
    architecture: str = "vqvae2"
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
                f"A VQ-VAE with strides {tuple(self.strides)} has levels {list(names)}, "
                f"but quantizers were given for {sorted(self.quantizers)}."
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"Unknown architecture {self.architecture!r}; choose one of {ARCHITECTURES}.")
        num_levels = len(names)
        res = dict(
            num_residual_layers=self.num_residual_layers,
            num_residual_hiddens=self.num_residual_hiddens,
            dtype=self.dtype,
        )
        encoders = {
            n: Encoder(
                self.num_hiddens,
                num_downsamples=num_halvings(s),
                half_width_single=self.architecture == "vqvae2",
                downsample=self.downsample,
                **res,
            )
            for n, s in zip(names, self.strides)
        }
        pre_quantization = {n: nn.Conv(self.embedding_dim(n), (1, 1), dtype=self.dtype) for n in names}
        if self.architecture == "vqvae":  # The VQ-VAE's parameter names (its checkpoints restore).
            if num_levels != 1:
                raise ValueError(f"architecture='vqvae' has one level; got strides {tuple(self.strides)}.")
            (top,) = names
            self.encoder = encoders[top]
            self.pre_quantization = pre_quantization[top]
            self.quantizer = self.quantizers[top].clone()
            self._encoders = {top: self.encoder}
            self._pre_quantization = {top: self.pre_quantization}
            self._quantizers = {top: self.quantizer}
        else:
            self.encoders = encoders
            self.pre_quantization = pre_quantization
            self._encoders, self._pre_quantization = self.encoders, self.pre_quantization
            self._quantizers = self.quantizers
        # C_l: the levels above l (at the resolution of l+1) -> the resolution of l.
        self.condition_decoders = {
            names[l]: Decoder(
                self.num_hiddens,
                num_upsamples=num_halvings(self.strides[l + 1]),
                out_channels=self.embedding_dim(names[l]),
                upsample=self.upsample,
                **res,
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
            num_upsamples=num_halvings(self.strides[0]),
            out_channels=self.out_channels,
            upsample=self.upsample,
            **res,
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
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)

    def check_images(self, images: jax.Array) -> None:
        """A clear error naming the config field if the strides do not divide the images."""
        if self.architecture == "vqvae":
            check_image_shape(images.shape[1:], num_halvings(self.strides[0]))
        else:
            level_shapes(images.shape[1:], self.strides)

    def bottom_up(self, images: jax.Array) -> list[jax.Array]:
        """Images in [0, 1] -> the encoder features h_l of every level, bottom first."""
        self.check_images(images)
        h = images - 0.5
        features = []
        for name in self.names:
            h = self._encoders[name](h)
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
        return [self._quantizers[n].lookup(codes[n]) for n in self.names]

    def decode_codes(self, codes: Mapping[str, jax.Array]) -> jax.Array:
        """Codes of every level ({name: (B, h_l, w_l) int}) -> images: the path samplers use."""
        return self.decode(self.lookup(codes))

    def __call__(self, images: jax.Array, *, train: bool, mask: jax.Array | None = None) -> dict[str, Any]:
        """Encodes top-down, quantizes every level, decodes.

        Returns:
          {'reconstruction': (B, H, W, C) float32, 'vq': {level: the quantizer's output dict},
          'codes': {level: encoding indices}, 'z_e': {level: the quantizer's input},
          'quantized': [e_l], bottom first}.
        """
        features = self.bottom_up(images)
        names = self.names
        quantized: list[jax.Array | None] = [None] * len(names)
        vq, z_e = {}, {}
        for l in reversed(range(len(names))):
            h = features[l]
            if l < len(names) - 1:
                condition = self.condition_decoders[names[l]](self._stack_from(quantized, l + 1))
                h = jnp.concatenate([condition.astype(h.dtype), h], axis=-1)
            z_e[names[l]] = self._pre_quantization[names[l]](h)
            vq[names[l]] = self._quantizers[names[l]](z_e[names[l]], train=train, mask=mask)
            quantized[l] = vq[names[l]]["quantize"]
        return {
            "reconstruction": self.decode(quantized),
            "vq": vq,
            "codes": {n: vq[n]["encoding_indices"] for n in names},
            "z_e": z_e,
            "quantized": quantized,
        }


def vqvae(
    quantizer: nn.Module,
    out_channels: int,
    num_downsamples: int = 2,
    num_hiddens: int = 128,
    num_residual_layers: int = 2,
    num_residual_hiddens: int = 32,
    upsample: str = "auto",
    downsample: str = "auto",
    dtype: Any = None,
) -> Autoencoder:
    """The VQ-VAE of van den Oord et al. (section 4.1): one level, `num_downsamples` halvings."""
    if num_downsamples < 1:
        raise ValueError(f"model.num_downsamples={num_downsamples}: need at least one stride-2 downsampling.")
    return Autoencoder(
        quantizers={"top": quantizer},
        strides=(2**num_downsamples,),
        out_channels=out_channels,
        num_hiddens=num_hiddens,
        num_residual_layers=num_residual_layers,
        num_residual_hiddens=num_residual_hiddens,
        upsample=upsample,
        downsample=downsample,
        architecture="vqvae",
        dtype=dtype,
    )
