r"""What a continuous code does to a digit, measured: slant and width from image moments.

The paper's Figure 2(c)(d) shows one continuous code of the MNIST InfoGAN rotating the digits
and the other changing their width. These functions measure both on generated images, so that
the claim becomes a number.

With the ink I(r, c) >= 0 of an image (its pixel values summed over channels; rows r point
down, columns c right), the centroid (r0, c0) and the central second moments

  mu_rr = sum I (r - r0)^2 / sum I,  mu_rc = sum I (r - r0)(c - c0) / sum I,  mu_cc = sum I (c - c0)^2 / sum I,

* **slant** = atan(-mu_rc / mu_rr), in degrees: the angle from the vertical of the line that the
  rows' centres of ink follow (the least-squares column as a function of the row has slope
  mu_rc / mu_rr; the classic MNIST deskewing shears by exactly that). Positive when the top leans
  to the right, like "/". A thin bar rotated by theta from the vertical has slant theta.
* **width** = sqrt(12 (mu_cc - mu_rc^2 / mu_rr)), in pixels: the spread of the ink along x after
  deskewing (the shear c -> c - (mu_rc / mu_rr)(r - r0) leaves the horizontal second moment
  mu_cc - mu_rc^2 / mu_rr), scaled so that a filled rectangle w pixels wide measures about w
  (the variance of a uniform on an interval of length w is w^2 / 12). Invariant to shearing.

For a sweep of one code over values v_1..v_V with everything else fixed (one row of a Figure 2
grid), the code's effect is summarised by the **within-sweep correlation** of the code value
with a measure: the Pearson correlation over all sweeps after removing each sweep's mean
(variation between sweeps, which comes from the other latents, is not the code's), together
with the slope (measure units per unit of code). `sweep_statistics` returns the sums, which
add up over batches; `sweep_summary` turns them into the correlation and slope.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent.infogan.latents import Latents, LatentSpec
from vqlatent.infogan.traversal import sweep_latents

MEASURES = ("slant", "width")
_TINY = 1e-6


def image_moments(images: jax.Array) -> dict[str, jax.Array]:
    """(B, H, W, C) images with non-negative ink -> centroid and central second moments, each (B,)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (batch, height, width, channels), got shape {images.shape}.")
    ink = jnp.sum(images.astype(jnp.float32), axis=-1)
    _, h, w = ink.shape
    rows = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    total = jnp.maximum(jnp.sum(ink, axis=(1, 2)), _TINY)

    def mean(x):
        return jnp.sum(ink * x, axis=(1, 2)) / total

    r0, c0 = mean(rows), mean(cols)
    dr, dc = rows - r0[:, None, None], cols - c0[:, None, None]
    return {
        "row": r0,
        "col": c0,
        "mu_rr": mean(dr * dr),
        "mu_rc": mean(dr * dc),
        "mu_cc": mean(dc * dc),
    }


def slant_degrees(images: jax.Array) -> jax.Array:
    """atan(-mu_rc / mu_rr) in degrees, (B,): positive when the top leans right (module docstring)."""
    m = image_moments(images)
    return jnp.degrees(jnp.arctan2(-m["mu_rc"], jnp.maximum(m["mu_rr"], _TINY)))


def width_pixels(images: jax.Array) -> jax.Array:
    """sqrt(12 (mu_cc - mu_rc^2 / mu_rr)), (B,): the deskewed width of the ink (module docstring)."""
    m = image_moments(images)
    deskewed = m["mu_cc"] - jnp.square(m["mu_rc"]) / jnp.maximum(m["mu_rr"], _TINY)
    return jnp.sqrt(12.0 * jnp.maximum(deskewed, 0.0))


def measure_images(images: jax.Array) -> dict[str, jax.Array]:
    """{'slant': (B,) degrees, 'width': (B,) pixels}."""
    return {"slant": slant_degrees(images), "width": width_pixels(images)}


def sweep_statistics(values: jax.Array, measures: jax.Array) -> dict[str, jax.Array]:
    """Additive sums for the within-sweep correlation of a code with a measure.

    Args:
      values: (V,) the code's values along every sweep.
      measures: (N, V) the measure of sweep n at value v.

    Returns {'sxy', 'sxx', 'syy': scalars, 'count': N, 'column_sum': (V,)}: with x and y the values
    and measures centred per sweep, sum x y, sum x^2, sum y^2 over all sweeps and values, and the
    measure summed per value (for its mean as a function of the code).
    """
    x = values.astype(jnp.float32) - jnp.mean(values.astype(jnp.float32))
    y = measures.astype(jnp.float32)
    y = y - jnp.mean(y, axis=1, keepdims=True)
    n = measures.shape[0]
    return {
        "sxy": jnp.sum(y * x[None, :]),
        "sxx": n * jnp.sum(x * x),
        "syy": jnp.sum(y * y),
        "count": jnp.asarray(n, jnp.float32),
        "column_sum": jnp.sum(measures.astype(jnp.float32), axis=0),
    }


def sweep_summary(stats: Mapping[str, np.ndarray]) -> dict[str, float | list[float]]:
    """Sums of `sweep_statistics` (added over batches) -> correlation, slope and per-value means."""
    sxy, sxx, syy = (float(stats[k]) for k in ("sxy", "sxx", "syy"))
    count = float(stats["count"])
    denominator = math.sqrt(sxx * syy)
    return {
        "correlation": sxy / denominator if denominator > 0 else 0.0,
        "slope": sxy / sxx if sxx > 0 else 0.0,
        "mean_per_value": (np.asarray(stats["column_sum"], np.float64) / max(count, 1.0)).tolist(),
    }


def class_kept(predictions: jax.Array) -> dict[str, jax.Array]:
    """How much a sweep keeps the digit class, from (N, V) predicted classes along N sweeps.

    Returns sums over the sweeps: 'kept' = number of sweeps whose V predictions are all equal, and
    'agree' = number of images predicted as their sweep's class at the middle value (V // 2).
    """
    middle = predictions[:, predictions.shape[1] // 2 : predictions.shape[1] // 2 + 1]
    return {
        "kept": jnp.sum(jnp.all(predictions == predictions[:, :1], axis=1).astype(jnp.float32)),
        "agree": jnp.sum((predictions == middle).astype(jnp.float32)),
    }


def code_measure_sums(
    generate: Callable[[Latents], jax.Array],
    spec: LatentSpec,
    rng: jax.Array,
    sweep: np.ndarray,
    rows: int,
    classify: Callable[[jax.Array], jax.Array] | None = None,
) -> dict[str, jax.Array]:
    """Slant and width along `rows` random sweeps of each continuous code over `sweep` (and, with
    `classify`: images -> predicted classes, how many sweeps keep the class): the sums of
    `sweep_statistics` (and `class_kept`) as 'cont<j>_<measure>_<sum>' (and 'cont<j>_class_<sum>')."""
    sums = {}
    for j in range(spec.num_continuous):  # The same rows for every code: one key.
        images = generate(sweep_latents(rng, spec, j, sweep, rows))
        for name, values in measure_images(images).items():
            stats = sweep_statistics(jnp.asarray(sweep), values.reshape(rows, len(sweep)))
            sums.update({f"cont{j}_{name}_{k}": v for k, v in stats.items()})
        if classify is not None:
            kept = class_kept(classify(images).reshape(rows, len(sweep)))
            sums.update({f"cont{j}_class_{k}": v for k, v in kept.items()})
    return sums
