"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), version 0.1 with the VGG16 trunk: VQGAN's perceptual reconstruction loss.

For images x, y in [0, 1] (grey images are repeated to three channels):

  1. map to [-1, 1] and scale per channel: (v - shift) / scale, shift = (-.030, -.088, -.188),
     scale = (.458, .448, .450) (the `lpips` package's ScalingLayer);
  2. VGG16's conv features after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (Simonyan &
     Zisserman 2015; 3x3 convolutions, 2x2 max pooling between the blocks);
  3. normalise every feature vector to unit length over the channels: f / (|f| + 1e-10);
  4. d(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (f_l(x) - f_l(y))_{hwc}^2        (eq. 1)

with the non-negative linear heads w_l of LPIPS v0.1, fitted to human similarity judgements.
Nothing here is trained: the weights come from one safetensors file written by
`scripts/convert_lpips.py` from torchvision's VGG16 weight file and the `lpips` package's
`weights/v0.1/vgg.pth` (`load_params`). The images must be at least 16x16 (four poolings).
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqlatent.utils.errors import UserError

# (block, convolutions) of VGG16's `features`: conv{block}_{i}, each 3x3 + ReLU, 2x2 max pool between blocks.
VGG16_BLOCKS = ((1, 64, 2), (2, 128, 2), (3, 256, 3), (4, 512, 3), (5, 512, 3))
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
FORMAT = "vqlatent-lpips-vgg16-v0.1"
CONVERT_HINT = (
    "LPIPS needs VGG16's ImageNet weights, which this project cannot download for you: get "
    "torchvision's file vgg16-397923af.pth (https://download.pytorch.org/models/vgg16-397923af.pth, "
    "528 MB; or ~/.cache/torch/hub/checkpoints/ after any torchvision.models.vgg16(weights='DEFAULT')), "
    "`pip install lpips` for the linear heads (lpips/weights/v0.1/vgg.pth), then convert both into one "
    "file with `python scripts/convert_lpips.py --vgg=vgg16-397923af.pth --out=lpips_vgg.safetensors` "
    "and pass it as --config.loss.perceptual_weights=lpips_vgg.safetensors (or set "
    "--config.loss.perceptual_weight=0 to train without the perceptual loss)."
)


def vgg16_layer_names() -> list[tuple[str, int, int]]:
    """[(name, in channels, out channels)] of VGG16's 13 convolutions, in order."""
    names, channels = [], 3
    for block, width, count in VGG16_BLOCKS:
        for i in range(1, count + 1):
            names.append((f"conv{block}_{i}", channels, width))
            channels = width
    return names


def torchvision_feature_index() -> dict[str, int]:
    """conv name -> its index in torchvision's `vgg16().features` (conv, ReLU, ..., max pool)."""
    index, out = 0, {}
    for block, _, count in VGG16_BLOCKS:
        for i in range(1, count + 1):
            out[f"conv{block}_{i}"] = index
            index += 2  # The conv and its ReLU.
        index += 1  # The max pool.
    return out


class VGG16Features(nn.Module):
    """Images in [0, 1] -> the five unit-normalised VGG16 feature maps of steps 1-3 (float32)."""

    dtype: Any = None

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        if images.shape[-1] == 1:
            images = jnp.repeat(images, 3, axis=-1)
        if images.shape[-1] != 3 or min(images.shape[1:3]) < 16:
            raise ValueError(
                f"LPIPS takes images of at least 16x16 with 1 or 3 channels; got {tuple(images.shape[1:])}."
            )
        h = ((2.0 * images.astype(jnp.float32) - 1.0) - SHIFT) / SCALE
        h = h.astype(self.dtype or jnp.float32)
        outputs = []
        for block, width, count in VGG16_BLOCKS:
            if block > 1:
                h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
            for i in range(1, count + 1):
                conv = nn.Conv(
                    width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=f"conv{block}_{i}"
                )
                h = nn.relu(conv(h))
            f = h.astype(jnp.float32)
            outputs.append(f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + 1e-10))
        return outputs


class LPIPS(nn.Module):
    """(x, y) images in [0, 1], (B, H, W, C) with C in {1, 3} -> LPIPS distance (B,) in float32.

    Parameters: `vgg16/conv{b}_{i}/{kernel (3, 3, Cin, Cout), bias}` and `lin{l}` (C_l,). Both
    images go through the trunk as one batch.
    """

    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        features = VGG16Features(self.dtype, name="vgg16")(jnp.concatenate([x, y], axis=0))
        batch = x.shape[0]
        distance = jnp.zeros((batch,), jnp.float32)
        for l, f in enumerate(features):
            weight = self.param(f"lin{l}", nn.initializers.ones_init(), (f.shape[-1],))
            diff = jnp.square(f[:batch] - f[batch:])
            distance = distance + jnp.mean(jnp.sum(diff * weight, axis=-1), axis=(1, 2))
        return distance


def param_shapes() -> dict[str, tuple[int, ...]]:
    """{'vgg16/conv1_1/kernel': (3, 3, 3, 64), ..., 'lpips/lin0': (64,), ...}: what the file holds."""
    shapes = {}
    for name, cin, cout in vgg16_layer_names():
        shapes[f"vgg16/{name}/kernel"] = (3, 3, cin, cout)
        shapes[f"vgg16/{name}/bias"] = (cout,)
    for l, (_, width, _) in enumerate(VGG16_BLOCKS):
        shapes[f"lin{l}"] = (width,)
    return shapes


def load_params(path: str) -> dict[str, Any]:
    """The LPIPS parameters (a Flax params tree of numpy float32 arrays) from the safetensors file
    of `scripts/convert_lpips.py`; clear errors for a missing file, a missing tensor and a tensor of
    the wrong shape (named)."""
    if not path:
        raise UserError(
            f"config.loss.perceptual_weight > 0 but config.loss.perceptual_weights is empty. {CONVERT_HINT}"
        )
    if not os.path.isfile(path):
        raise UserError(f"config.loss.perceptual_weights={path!r} does not exist. {CONVERT_HINT}")
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    try:
        tensors = load_file(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice.
        raise UserError(
            f"config.loss.perceptual_weights={path!r} is not a safetensors file ({type(e).__name__}: {e}). "
            f"{CONVERT_HINT}"
        ) from None
    expected = param_shapes()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise UserError(
            f"config.loss.perceptual_weights={path!r} lacks the tensor(s) {missing[:4]}"
            f"{' and more' if len(missing) > 4 else ''}: it was not written by scripts/convert_lpips.py. "
            f"{CONVERT_HINT}"
        )
    params: dict[str, Any] = {}
    for key, shape in expected.items():
        value = tensors[key]
        if tuple(value.shape) != shape:
            raise UserError(
                f"config.loss.perceptual_weights={path!r}: tensor {key!r} has shape {tuple(value.shape)}, "
                f"LPIPS-VGG16 needs {shape}. The file holds other weights than VGG16 and LPIPS v0.1's "
                f"linear heads; rewrite it with scripts/convert_lpips.py from torchvision's vgg16 file."
            )
        node = params
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = np.asarray(value, np.float32)
    return params
