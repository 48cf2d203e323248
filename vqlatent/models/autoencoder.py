"""A trained VQ-VAE / VQ-VAE-2 (any number of levels, any quantizer) as an encoder and a decoder.

  model = vqlatent.load("pretrained:mnist_vqvae2")          # or an export directory, or a workdir
  codes = model.encode(images)        # uint8 [B, H, W, C] or float in [0, 1] -> {level: int32 maps}
  images = model.decode(codes)        # -> float32 [B, H, W, C] in [0, 1]
  recon = model.reconstruct(images)

The network is fully convolutional: it takes any image size whose height and width are multiples
of its total stride (the product of `model.strides`; 2**num_downsamples for the VQ-VAE), with the
channels it was trained on, and gives code maps of size (H/s_0, W/s_0), (H/(s_0 s_1), ...) per level.
Any batch size runs through a few compiled shapes (`batching`), jitted on the default backend.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from vqlatent.codes import layout
from vqlatent.data.device import images_to_float
from vqlatent.models import batching
from vqlatent.models.components import Component
from vqlatent.nets.levels import check_code_pyramid
from vqlatent.utils import errors


class ImageInputError(errors.UserError, ValueError):
    """Images of a shape, dtype or range the model does not take."""


def check_images(images: Any, channels: int, stride: int, trained_hw: tuple[int, int]) -> np.ndarray:
    """`images` as a numpy batch the model takes, or an `ImageInputError` saying what it takes."""
    images = np.asarray(images)
    accepted = (
        f"the model takes batches [B, H, W, {channels}] of uint8 images or floats in [0, 1], with H and W "
        f"multiples of {stride} (it was trained on {trained_hw[0]}x{trained_hw[1]})"
    )
    if images.ndim != 4:
        hint = " (one image: images[None])" if images.ndim == 3 else ""
        raise ImageInputError(f"Images of shape {images.shape}: {accepted}{hint}.")
    b, h, w, c = images.shape
    if b == 0:
        raise ImageInputError(f"An empty batch (shape {images.shape}): give at least one image.")
    if c != channels:
        raise ImageInputError(
            f"Images with {c} channels (shape {images.shape}): {accepted}. Convert them "
            f"({'to grayscale' if channels == 1 else 'to RGB'}) first."
        )
    if h % stride or w % stride:
        near = f"{max(stride, h // stride * stride)}x{max(stride, w // stride * stride)}"
        raise ImageInputError(f"Images of {h}x{w} pixels: {accepted}. Crop or resize them, e.g. to {near}.")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise ImageInputError(f"Images of dtype {images.dtype}: {accepted}.")
    lo, hi = float(np.min(images)), float(np.max(images))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ImageInputError(
            f"Float images with values in [{lo}, {hi}]: {accepted}. Divide 0-255 values by 255, or "
            f"pass uint8."
        )
    return images.astype(np.float32)


class Autoencoder:
    """encode / decode / reconstruct of a trained VQ-VAE(-2) (see the module docstring)."""

    family = "autoencoder"

    def __init__(self, component: Component, max_batch: int = batching.DEFAULT_MAX_BATCH):
        self.component = component
        self.task = component.task
        self.state = component.state
        self.max_batch = int(max_batch)
        model = self.task.model
        self.level_names: tuple[str, ...] = tuple(model.names)
        self.strides: tuple[int, ...] = tuple(int(s) for s in model.strides)
        self.total_stride = math.prod(self.strides)
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in component.spec.image_shape)
        self.num_codes = {n: int(self.task.num_codes[n]) for n in self.level_names}
        self._encode = jax.jit(lambda state, images: self.task.encode_codes(state, images_to_float(images)))
        self._decode = jax.jit(
            lambda state, codes: self.task.model.apply(
                self.task._variables(state),  # pylint: disable=protected-access
                dict(codes),
                method="decode_codes",
            )
        )

    # -- what the model takes ----------------------------------------------------------
    @property
    def code_levels(self) -> dict[str, layout.LevelSpec]:
        """{level: LevelSpec} at the training image size, bottom first."""
        return dict(self.task.code_levels)

    def code_shapes(self, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """{level: per-image code array shape} for images of height x width."""
        self.check_images(np.zeros((1, height, width, self.image_shape[-1]), np.uint8))
        out, h, w = {}, height, width
        for name, stride in zip(self.level_names, self.strides):
            h, w = h // stride, w // stride
            out[name] = (h, w, *self.code_levels[name].shape[2:])
        return out

    def check_images(self, images: Any) -> np.ndarray:
        return check_images(images, self.image_shape[-1], self.total_stride, self.image_shape[:2])

    def check_codes(self, codes: Any) -> dict[str, np.ndarray]:
        """`codes` as {level: int32 array} the decoder takes, or a `CodeShapeError` saying why not."""
        if not isinstance(codes, Mapping):
            if len(self.level_names) != 1:
                raise layout.CodeShapeError(
                    f"Codes given as one array, but the model has levels {list(self.level_names)}: pass a "
                    f"dict {{level: code map}} (what encode() returns)."
                )
            codes = {self.level_names[0]: codes}
        codes = {str(k): np.asarray(v) for k, v in codes.items()}
        trailing = {n: tuple(self.code_levels[n].shape[2:]) for n in self.level_names}
        for name in self.level_names:
            if name not in codes:
                continue
            c = codes[name]
            if not np.issubdtype(c.dtype, np.integer):
                raise layout.CodeShapeError(
                    f"Codes of level {name!r} have dtype {c.dtype}: give integer codes."
                )
            if c.ndim != 3 + len(trailing[name]) or tuple(c.shape[3:]) != trailing[name]:
                raise layout.CodeShapeError(
                    f"Codes of level {name!r} have shape {c.shape}; the model takes [B, h, w"
                    f"{''.join(f', {t}' for t in trailing[name])}] maps (at the training size: "
                    f"{self.code_levels[name].shape})."
                )
            k = self.num_codes[name]
            if c.size and (c.min() < 0 or c.max() >= k):
                raise layout.CodeShapeError(
                    f"Codes of level {name!r} in [{c.min()}, {c.max()}], but its codebook has K={k} "
                    f"codes (valid: 0..{k - 1}): these codes come from another model."
                )
        check_code_pyramid(codes, self.level_names, self.strides)
        if codes[self.level_names[0]].shape[0] == 0:
            raise layout.CodeShapeError("An empty batch of codes: give at least one code map.")
        return {n: codes[n].astype(np.int32) for n in self.level_names}

    # -- inference ---------------------------------------------------------------------
    def encode(self, images: Any) -> dict[str, np.ndarray]:
        """Images [B, H, W, C] (uint8, or float in [0, 1]) -> {level: int32 code maps}, bottom first."""
        images = self.check_images(images)
        return batching.run_bucketed(functools.partial(self._encode, self.state), images, self.max_batch)

    def decode(self, codes: Any, clip: bool = True) -> np.ndarray:
        """{level: code maps} -> float32 images [B, H, W, C], clipped to [0, 1] unless `clip=False`."""
        codes = self.check_codes(codes)
        images = batching.run_bucketed(functools.partial(self._decode, self.state), codes, self.max_batch)
        return np.clip(images, 0.0, 1.0) if clip else images

    def reconstruct(self, images: Any, clip: bool = True) -> np.ndarray:
        """decode(encode(images))."""
        return self.decode(self.encode(images), clip=clip)

    def __repr__(self) -> str:
        levels = ", ".join(
            f"{n} {'x'.join(map(str, s.shape))} K={s.num_codes}" for n, s in self.code_levels.items()
        )
        h, w, c = self.image_shape
        return f"Autoencoder({h}x{w}x{c}, stride {self.total_stride}, levels: {levels}; step {self.component.step})"
