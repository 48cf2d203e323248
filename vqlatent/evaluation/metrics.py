"""Reconstruction and codebook metrics, as pure functions of accumulated counts, and SSIM."""

from __future__ import annotations

import math

import dm_pix
import jax
import numpy as np

# SSIM (Wang et al. 2004): an 11x11 Gaussian window of std 1.5, K1 = 0.01, K2 = 0.03, on the [0, 1]
# scale, averaged over the valid window positions and the channels: scikit-image's
# `structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
# data_range=1, channel_axis=-1)` (tests/test_models.py checks the two agree).
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def ssim_window(height: int, width: int) -> tuple[int, float]:
    """(window size, Gaussian std) for images of height x width: 11 and 1.5, or for images smaller
    than 11 pixels the largest odd window that fits, its std scaled alike (1.5 * size / 11; 8x8
    digits: 7 and 0.95). scikit-image derives the same window from that std (radius int(3.5 std + 0.5))."""
    size = min(SSIM_WINDOW, height, width)
    size -= 1 - size % 2
    if size < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels; got {height}x{width}.")
    return size, SSIM_SIGMA * size / SSIM_WINDOW


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-image SSIM of two batches [B, H, W, C] on the [0, 1] scale (dm-pix), shape (B,)."""
    size, sigma = ssim_window(a.shape[1], a.shape[2])
    return dm_pix.ssim(
        a.astype(np.float32), b.astype(np.float32), max_val=1.0, filter_size=size, filter_sigma=sigma
    )


def psnr(mse: float, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on the [0, max_value] scale.

    +inf for mse = 0 (a perfect reconstruction); NaN for a NaN mse, -inf for an infinite one.
    """
    if math.isnan(mse) or math.isinf(mse):
        return float("nan") if math.isnan(mse) else float("-inf")
    return float(10.0 * math.log10(max_value**2 / mse)) if mse > 0 else float("inf")


def usage_from_counts(counts: np.ndarray) -> float:
    """Fraction of the codebook used at least once."""
    counts = np.asarray(counts)
    return float(np.count_nonzero(counts) / counts.size)


def compression_factor(
    image_shape: tuple[int, ...],
    code_shapes: list[tuple[int, ...]],
    num_codes: list[int],
    bits_per_pixel: int = 8,
) -> float:
    """Bits of the 8-bit image over bits of its code maps (log2 K bits per code).

    The paper's example: 128x128x3 at 8 bits -> 32x32 codes with K=512 is
    393216 / 9216 = 42.67x.
    """
    image_bits = float(np.prod(image_shape)) * bits_per_pixel
    code_bits = sum(float(np.prod(s)) * math.log2(k) for s, k in zip(code_shapes, num_codes))
    return image_bits / code_bits
