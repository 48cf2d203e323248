"""Records -> uint8 image batches: the target size and the centre crop-resize, on the host.

Images stay uint8 until they reach the device (`vqlatent.data.device`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from vqlatent.data.sources import DataError, DatasetSpec


def target_hw(image_size: Any) -> tuple[int, int] | None:
    """`data.image_size` (None, S or (H, W)) -> (H, W), or None for the native size."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        hw = (int(image_size), int(image_size))
    else:
        hw = tuple(int(s) for s in image_size)
    if len(hw) != 2 or min(hw) <= 0:
        raise DataError(f"image_size must be None, an int or (H, W); got {image_size!r}.")
    return hw  # type: ignore[return-value]


def center_crop_resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Centre-crops `image` (H, W, C) uint8 to the aspect of `hw`, resizes to it.

    The crop is the largest centred window with aspect ratio hw[0]:hw[1]
    (rounded to whole pixels); the resize is PIL bicubic (antialiased when
    downsampling, like `PIL.Image.resize` always is). `PIL.ImageOps.fit` does
    the same up to its crop box, which it keeps fractional (a resampling of
    other pixels), so this function stays the one definition of the crop.

    Args:
      image: uint8 array (H, W, C).
      hw: target (height, width).

    Returns:
      uint8 array (hw[0], hw[1], C).
    """
    h, w, c = image.shape
    th, tw = hw
    if (h, w) == (th, tw):
        return image
    if h * tw > w * th:  # Too tall: crop height.
        ch, cw = max(1, round(w * th / tw)), w
    else:  # Too wide (or exact aspect): crop width.
        ch, cw = h, max(1, round(h * tw / th))
    top, left = (h - ch) // 2, (w - cw) // 2
    image = image[top : top + ch, left : left + cw]
    if (ch, cw) == (th, tw):
        return np.ascontiguousarray(image)

    def resize(plane: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(np.ascontiguousarray(plane))
        return np.asarray(pil.resize((tw, th), Image.Resampling.BICUBIC))

    if c == 3:
        return resize(image)
    return np.stack([resize(image[..., i]) for i in range(c)], axis=-1)


@dataclasses.dataclass(frozen=True)
class ImageLayout:
    """Everything needed to turn records into examples."""

    spec: DatasetSpec
    image_key: str
    label_key: str | None  # None: no labels, fill zeros.
    target_hw: tuple[int, int] | None  # None: keep native size.


def example(record: Mapping[str, Any], layout: ImageLayout) -> tuple[np.ndarray, int]:
    """One record -> (uint8 image of `layout.spec.image_shape`, int label)."""
    image = np.asarray(record[layout.image_key])
    if image.ndim == 2:
        image = image[..., None]
    if layout.target_hw is not None:
        image = center_crop_resize(image, layout.target_hw)
    if image.shape != layout.spec.image_shape:
        raise DataError(
            f"Image of shape {image.shape}, expected {layout.spec.image_shape}; set data.image_size."
        )
    label = int(record[layout.label_key]) if layout.label_key else 0
    return image, label


def image_batch(records: Sequence[Mapping[str, Any]], layout: ImageLayout) -> dict[str, np.ndarray]:
    """Records -> {'image': uint8 (N, H, W, C), 'label': int32 (N,)}."""
    images = np.empty((len(records),) + layout.spec.image_shape, np.uint8)
    labels = np.empty((len(records),), np.int32)
    for i, record in enumerate(records):
        images[i], labels[i] = example(record, layout)
    return {"image": images, "label": labels}
