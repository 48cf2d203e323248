r"""An invariant information term: Q reads the categorical code from a randomly transformed image.

Why. InfoGAN's bound L_I(c; G) = E[log Q(c | G(z, c))] + H(c) (Chen et al. 2016,
eq. 5) reaches its maximum H(c) for *any* partition of the samples into K groups that Q can read
back. On MNIST the released model settles, in most seeds, on partitions that put two similar
digits into one category and split another digit by its style (slant, width, position): matched
accuracy well below the paper's 95% (docs/lab/infogan.md).

The term. Let T be a random transformation drawn independently of (z, c) — here a small
rotation, scaling and shift of the image plane, resampled bilinearly — and compute the
categorical codes' term on T(G(z, c)) instead of G(z, c):

  L_I^T(c; G, Q) = E_{c, z, T}[log Q(c | T(G(z, c)))] + H(c)  <=  I(c; T(G(z, c)))  <=  I(c; G(z, c)).

The first inequality is Lemma 5.1 of the paper (any Q gives a lower bound on the mutual
information of c with the variable Q reads); the second is the data-processing inequality:
c -> G(z, c) -> T(G(z, c)) is a Markov chain, because T is drawn independently of c. So
L_I^T is still a lower bound on the information InfoGAN maximises, and maximising it still
maximises I(c; G) — but only through the part of the information that survives T. A code
that G expresses as slant, width or position is (partly) destroyed by T and can no longer be
decoded, so L_I^T rewards G for carrying c in what T keeps: the digit's shape.

Only the categorical codes use T: the continuous codes are meant to carry exactly the style
(rotation, width) that T scrambles, so their terms, and the GAN loss, stay on the clean images.
With the identity transformation (no rotation, scale 1, no shift) L_I^T is L_I exactly
(bilinear resampling at integer positions returns the pixels).

The transformation (per sample, a fresh draw; on device, inside the jitted step). With image
coordinates p = (row, column) measured from the image centre ((H - 1) / 2, (W - 1) / 2), an
angle theta ~ U[-r, r], a scale s ~ U[s_lo, s_hi] and a shift t ~ U[-d, d]^2 in pixels, the
output pixel at p takes the input's value at

  A^-1 (p - t),   A = s R(theta),

bilinearly interpolated from the four nearest pixels, with zeros (the MNIST background) outside
the image: the content is rotated by theta, scaled by s about the centre and moved by t.

Stroke thickness (optional, `max_thickness` = m > 0; applied before the affine map). The affine
map keeps a style that failing runs split categories by: how thick the strokes are (two
categories each holding 4s and 9s, one thin, one bold: docs/lab/infogan.md). With a ~ U[-m, m]
per sample, and the grey-level dilation D(x) (the 3x3 maximum) and erosion E(x) (the 3x3
minimum) of the image (Serra 1982, ch. 2; for a binary image they add or remove one pixel
around every stroke),

  x' = x + max(a, 0) (D(x) - x) + max(-a, 0) (E(x) - x),

a blend towards the thicker (a > 0) or the thinner (a < 0) digit. a is drawn independently of c,
so the chain c -> G(z, c) -> T(G(z, c)) and both inequalities above are unchanged.

Shear (optional, `max_shear` = k_max > 0). A digit's slant is a shear of its columns more than a
rotation: the classic MNIST deskewing, and the slant that `measures.py` reports, undo a shear
c -> c - k (r - r0). The failing run of the thickness table split 4s and 9s by slant, and
+-15 degrees of rotation only blur slants that far apart. With k ~ U[-k_max, k_max] per sample,
the affine map becomes A = s R(theta) S(k), with S(k) moving the content's column c to c + k r
(r, c measured from the centre, rows down): a vertical stroke gets the slant -atan(k). k is drawn
independently of c, so the bound is unchanged again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vqlatent.infogan.latents import Latents, LatentSpec, LatentSpecError
from vqlatent.infogan.objectives import Posterior, code_log_likelihoods


@dataclasses.dataclass(frozen=True)
class TransformRanges:
    """The ranges the random transformation is drawn from (validated; hashable for jit).

    Attributes:
      max_rotation_degrees: r, the angle is uniform on [-r, r] degrees.
      scale_range: (s_lo, s_hi), the scale is uniform on it; 0 < s_lo <= s_hi.
      max_shift_pixels: d, each coordinate of the shift is uniform on [-d, d] pixels.
      max_thickness: m in [0, 1], the stroke-thickness blend a is uniform on [-m, m] (0: off).
      max_shear: k_max in [0, 1], the horizontal shear k is uniform on [-k_max, k_max] (0: off).
    """

    max_rotation_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift_pixels: float = 2.0
    max_thickness: float = 0.0
    max_shear: float = 0.0

    def __post_init__(self):
        prefix = "info.augment"
        r, d = self.max_rotation_degrees, self.max_shift_pixels
        if not (math.isfinite(r) and 0 <= r <= 180):
            raise ValueError(
                f"{prefix}.max_rotation_degrees={r!r}: the angle is drawn from [-r, r], so r must be "
                f"in [0, 180] (0 for no rotation), e.g. 15.0."
            )
        if not (math.isfinite(d) and d >= 0):
            raise ValueError(
                f"{prefix}.max_shift_pixels={d!r}: the shift is drawn from [-d, d], so d must be >= 0 "
                f"(0 for no shift), e.g. 2.0."
            )
        m = self.max_thickness
        if not (math.isfinite(m) and 0 <= m <= 1):
            raise ValueError(
                f"{prefix}.max_thickness={m!r}: the blend towards the 3x3 dilation (a > 0) or erosion "
                f"(a < 0) is drawn from [-m, m], so m must be in [0, 1] (0 for none), e.g. 0.5."
            )
        k = self.max_shear
        if not (math.isfinite(k) and 0 <= k <= 1):
            raise ValueError(
                f"{prefix}.max_shear={k!r}: the horizontal shear (columns moved by k pixels per row from "
                f"the centre) is drawn from [-k, k], so k must be in [0, 1] (0 for none; 1 is a 45-degree "
                f"slant), e.g. 0.3."
            )
        if len(self.scale_range) != 2:
            raise ValueError(
                f"{prefix}.scale_range={self.scale_range!r} must be (low, high), e.g. (0.9, 1.1)."
            )
        low, high = self.scale_range
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError(
                f"{prefix}.scale_range={tuple(self.scale_range)!r} is empty or not positive: the scale is "
                f"drawn from [low, high] with 0 < low <= high, e.g. (0.9, 1.1) ((1.0, 1.0) for none)."
            )

    @property
    def is_identity(self) -> bool:
        return (
            self.max_rotation_degrees == 0
            and self.scale_range == (1.0, 1.0)
            and self.max_shift_pixels == 0
            and self.max_thickness == 0
            and self.max_shear == 0
        )


RANGE_FIELDS = tuple(field.name for field in dataclasses.fields(TransformRanges))
AUGMENT_FIELDS = ("enabled", *RANGE_FIELDS)


def augment_default_config() -> dict[str, Any]:
    """`config.info.augment` of every InfoGAN config (off; TransformRanges' defaults when turned on)."""
    return dict(enabled=False, **{name: getattr(TransformRanges, name) for name in RANGE_FIELDS})


def transform_ranges_from_config(cfg: Mapping[str, Any] | None, spec: LatentSpec) -> TransformRanges | None:
    """`config.info.augment` -> TransformRanges, or None when it is off (or absent)."""
    if cfg is None:
        return None
    unknown = sorted(set(cfg.keys()) - set(AUGMENT_FIELDS))
    if unknown:
        raise ValueError(f"Unknown field(s) {unknown} in info.augment; known: {list(AUGMENT_FIELDS)}.")
    value = {name: cfg.get(name, getattr(TransformRanges, name)) for name in RANGE_FIELDS}
    # Every range is a float but scale_range, a pair of them. Validated even when off: a bad range
    # is a mistake either way.
    ranges = TransformRanges(
        **{
            name: tuple(float(x) for x in v) if name == "scale_range" else float(v)
            for name, v in value.items()
        }
    )
    if not cfg.get("enabled", False):
        return None
    if spec.num_categorical == 0:
        raise LatentSpecError(
            "info.augment.enabled=True computes the categorical codes' information term on transformed "
            "images, but model.latent.categorical_sizes=() has no categorical code: add one (e.g. "
            "--config.model.latent.categorical_sizes='(10,)') or set --config.info.augment.enabled=False."
        )
    return ranges


def random_affine(rng: jax.Array, batch_size: int, ranges: TransformRanges) -> tuple[jax.Array, jax.Array]:
    """Per-sample (angle in radians, scale, shift (row, col) in pixels): (B,), (B,), (B, 2).

    One uniform draw of (B, 4) for all parameters (one random kernel for XLA:CPU to compile).
    """
    u = jax.random.uniform(rng, (batch_size, 4), jnp.float32, minval=-1.0, maxval=1.0)
    angle = u[:, 0] * math.radians(ranges.max_rotation_degrees)
    low, high = ranges.scale_range
    scale = (low + high) / 2 + u[:, 1] * ((high - low) / 2)
    shift = u[:, 2:] * ranges.max_shift_pixels
    return angle, scale, shift


def affine_transform(
    images: jax.Array,
    angle: jax.Array,
    scale: jax.Array,
    shift: jax.Array,
    shear: jax.Array | None = None,
) -> jax.Array:
    """Shears by `shear` (if given), rotates by `angle`, scales by `scale` about the centre and shifts by `shift`, bilinearly.

    Args:
      images: (B, H, W, C), any float dtype (kept); zero outside the image.
      angle: (B,) radians (counter-clockwise as displayed, rows pointing down).
      scale: (B,) > 0.
      shift: (B, 2) pixels (rows, columns).
      shear: (B,) k, or None for none: the content's columns move by k pixels per row below the centre.

    Returns the (B, H, W, C) images whose pixel p is the input at A^-1 (p - c - t) + c, with
    A = scale * R(angle) S(shear) and c the image centre (module docstring). Differentiable in `images`.
    """
    b, h, w, c = images.shape
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2,
        jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2,
        indexing="ij",
    )
    # p - t per sample: (B, H, W); then the inverse rotation and scaling.
    y = rows[None] - shift[:, 0, None, None]
    x = cols[None] - shift[:, 1, None, None]
    cos = (jnp.cos(angle) / scale)[:, None, None]
    sin = (jnp.sin(angle) / scale)[:, None, None]
    # R(theta) in (x, y-up) maps to rows-down as: [x'; y'] = [cos, sin; -sin, cos][x; y] forward,
    # so the inverse is its transpose.
    src_x = cos * x - sin * y
    src_y = sin * x + cos * y
    if shear is not None:  # S(k)^-1: (x, y) -> (x - k y, y).
        src_x = src_x - shear[:, None, None] * src_y
    return bilinear_sample(images, src_y + (h - 1) / 2, src_x + (w - 1) / 2)


def bilinear_sample(images: jax.Array, src_y: jax.Array, src_x: jax.Array) -> jax.Array:
    """images (B, H, W, C) read at the real positions (B, H', W') -> (B, H', W', C); zero outside."""
    b, h, w, c = images.shape
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    fy, fx = src_y - y0, src_x - x0
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    flat = images.reshape(b, h * w, c)
    # Sums in float32 at least (bfloat16 images), in the images' own precision above it.
    accumulate = jnp.promote_types(images.dtype, jnp.float32)
    out = jnp.zeros((*src_y.shape, c), accumulate)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            index = (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)).reshape(b, -1, 1)
            values = jnp.take_along_axis(flat, index, axis=1).reshape(*src_y.shape, c)
            weight = jnp.where(inside, wy * wx, 0.0)[..., None]
            out = out + weight * values.astype(accumulate)
    return out.astype(images.dtype)


def change_thickness(images: jax.Array, amount: jax.Array) -> jax.Array:
    """x + max(a, 0) (D(x) - x) + max(-a, 0) (E(x) - x) per image (module docstring).

    Args:
      images: (B, H, W, C), any float dtype (kept).
      amount: (B,) blend a in [-1, 1]: 1 the 3x3 dilation, -1 the 3x3 erosion, 0 the image.
    """
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    # Padding with the neutral element of each reduction: the image's border is not a stroke.
    dilated = jax.lax.reduce_window(images, -jnp.inf, jax.lax.max, window, strides, "SAME")
    eroded = jax.lax.reduce_window(images, jnp.inf, jax.lax.min, window, strides, "SAME")
    a = amount.astype(images.dtype)[:, None, None, None]
    return images + jnp.maximum(a, 0) * (dilated - images) + jnp.maximum(-a, 0) * (eroded - images)


def random_transform(rng: jax.Array, images: jax.Array, ranges: TransformRanges) -> jax.Array:
    """T(images): a fresh random stroke thickness and shear (if on), rotation, scaling and shift per image.

    The rotation, scale and shift draw uses `rng` itself (the same draws with or without the
    thickness change and the shear); the thickness and the shear draws keys folded from it (1, 2).
    """
    if ranges.max_thickness > 0:
        amount = jax.random.uniform(
            jax.random.fold_in(rng, 1),
            (images.shape[0],),
            jnp.float32,
            -ranges.max_thickness,
            ranges.max_thickness,
        )
        images = change_thickness(images, amount)
    shear = None
    if ranges.max_shear > 0:
        shear = jax.random.uniform(
            jax.random.fold_in(rng, 2), (images.shape[0],), jnp.float32, -ranges.max_shear, ranges.max_shear
        )
    return affine_transform(images, *random_affine(rng, images.shape[0], ranges), shear=shear)


def invariant_log_likelihoods(
    spec: LatentSpec, clean: Posterior, transformed: Posterior, latents: Latents
) -> dict[str, jax.Array]:
    """log Q(c_i | .) per code: categorical codes read from T(G(z, c)), continuous from G(z, c).

    The per-example terms of L_I^T (module docstring) for the categorical codes and of the plain
    L_I (eq. 5) for the continuous ones; equal to `code_log_likelihoods(spec, clean, latents)` when
    the two posteriors are equal (T the identity).
    """
    out = code_log_likelihoods(spec, clean, latents)
    out.update(
        {k: v for k, v in code_log_likelihoods(spec, transformed, latents).items() if k.startswith("cat")}
    )
    return out
