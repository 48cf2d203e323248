"""Reconstruction and codebook metrics, as pure functions of accumulated counts."""

from __future__ import annotations

import math

import numpy as np


def psnr(mse: float, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on the [0, max_value] scale.

    +inf for mse = 0 (a perfect reconstruction); NaN for a NaN mse, -inf for an infinite one.
    """
    if math.isnan(mse) or math.isinf(mse):
        return float("nan") if math.isnan(mse) else float("-inf")
    return float(10.0 * math.log10(max_value**2 / mse)) if mse > 0 else float("inf")


def perplexity_from_counts(counts: np.ndarray) -> float:
    """exp(-sum p log(p + 1e-10)) with p the code frequencies (Sonnet's definition)."""
    counts = np.asarray(counts, np.float64)
    p = counts / max(counts.sum(), 1.0)
    return float(np.exp(-np.sum(p * np.log(p + 1e-10))))


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
