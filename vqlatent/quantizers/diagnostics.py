"""Codebook health at a glance: usage statistics and a usage histogram image.

`codebook_summary` turns accumulated ``(num_codebooks, K)`` code counts into
the numbers an evaluation reports (perplexity, usage, dead codes);
`usage_histogram` draws those counts as an RGB image with plain ``jnp`` (no
matplotlib; it runs inside ``jit``), one panel per codebook: codes sorted from
most to least used, one bar each (codes are binned when ``K`` exceeds the
width), heights proportional to the counts with every used code at least one
pixel tall, and the codes never used shaded red, so the red fraction of the
width is the dead fraction of the codebook.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent.quantizers import statistics

Array = jax.Array

_BAR_COLOUR = (0.16, 0.35, 0.70)
_DEAD_COLOUR = (0.98, 0.80, 0.80)
_BACKGROUND = (1.0, 1.0, 1.0)


def usage_histogram(counts: Any, height: int = 96, width: int = 512) -> Array:
    """``(S, K)`` (or ``(K,)``) code counts -> ``(S, height, W, 3)`` in [0, 1].

    ``W = width`` when ``K >= width``; otherwise ``K * (width // K)`` so that
    every code gets the same number of pixel columns.
    """
    counts = jnp.asarray(counts, jnp.float32)
    if counts.ndim == 1:
        counts = counts[None]
    num_codes = counts.shape[-1]
    columns_per_code = max(1, width // num_codes)
    image_width = num_codes * columns_per_code if num_codes < width else width
    ranked = -jnp.sort(-counts, axis=-1)  # Descending.
    code_of_column = (np.arange(image_width) * num_codes) // image_width
    column_counts = ranked[:, code_of_column]  # (S, W)
    peak = jnp.maximum(ranked[:, :1], 1.0)
    bar_pixels = jnp.where(
        column_counts > 0, jnp.maximum(jnp.ceil(column_counts / peak * (height - 1)), 1.0), 0.0
    )
    rows_from_bottom = jnp.arange(height, 0, -1, dtype=jnp.float32)[:, None]
    is_bar = rows_from_bottom[None] <= bar_pixels[:, None, :]  # (S, H, W)
    is_dead = jnp.broadcast_to((column_counts == 0)[:, None, :], is_bar.shape)
    bar = jnp.asarray(_BAR_COLOUR, jnp.float32)
    dead = jnp.asarray(_DEAD_COLOUR, jnp.float32)
    background = jnp.asarray(_BACKGROUND, jnp.float32)
    return jnp.where(is_bar[..., None], bar, jnp.where(is_dead[..., None], dead, background))


def codebook_summary(counts: Any) -> dict[str, Any]:
    """Host-side metrics of accumulated ``(S, K)`` (or ``(K,)``) code counts.

    Returns ``perplexity`` (mean over codebooks of ``exp(-sum p log p)``, as in
    Sonnet), ``codebook_usage`` (mean fraction of codes used at least once),
    ``codes_used`` / ``dead_codes`` (totals over codebooks) and, with several
    codebooks, the per-codebook lists ``perplexity_per_codebook`` and
    ``codebook_usage_per_codebook``.
    """
    counts = np.asarray(counts, np.float64)
    if counts.ndim == 1:
        counts = counts[None]
    perplexities = statistics.perplexity_of_counts(counts)
    usage = np.count_nonzero(counts, axis=-1) / counts.shape[-1]
    used = int(np.count_nonzero(counts))
    summary = {
        "perplexity": float(np.mean(perplexities)),
        "codebook_usage": float(np.mean(usage)),
        "codes_used": used,
        "dead_codes": int(counts.size - used),
    }
    if counts.shape[0] > 1:
        summary["perplexity_per_codebook"] = [float(p) for p in perplexities]
        summary["codebook_usage_per_codebook"] = [float(u) for u in usage]
    return summary
