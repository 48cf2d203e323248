"""PNG grids: what a researcher looks at instead of a loss curve."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8 (values outside are clipped)."""
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def make_grid(
    images: np.ndarray, num_cols: int, padding: int = 1, pad_value: int = 255, upscale: int = 1
) -> np.ndarray:
    """(N, H, W, C) uint8 or [0,1] float -> one (rows*H', cols*W', C) uint8 image."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = to_uint8(images)
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, c = images.shape
    num_rows = -(-n // num_cols)
    grid = np.full(
        (num_rows * (h + padding) + padding, num_cols * (w + padding) + padding, c), pad_value, np.uint8
    )
    for i in range(n):
        r, col = divmod(i, num_cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def auto_upscale(height: int, target: int = 64) -> int:
    """Nearest-neighbour factor so that tiny images (8x8 digits) are visible."""
    return max(1, target // max(height, 1))


def save_png(path: str, image: np.ndarray) -> None:
    """Writes atomically (temporary file + rename): a reader never sees half a PNG."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".png.tmp")
    os.close(fd)
    try:
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def class_grid(images: np.ndarray, num_classes: int, per_class: int, num_cols: int) -> np.ndarray:
    """A PNG grid of class-major images (`per_class` of each class): one row per class, its first
    `num_cols` images."""
    rows = images.reshape(num_classes, per_class, *images.shape[1:])[:, :num_cols]
    rows = rows.reshape(-1, *images.shape[1:])
    return make_grid(rows, num_cols=min(num_cols, per_class), upscale=auto_upscale(images.shape[1]))
