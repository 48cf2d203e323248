"""Finite scalar quantisation (Mentzer et al. 2023, arXiv:2309.15505).

FSQ has no codebook and no auxiliary loss: each of ``d = len(levels)``
channels is bounded and rounded to one of ``L_i`` values, so the implied
codebook is the grid of ``prod_i L_i`` points (section 3, eq. 1)::

  bound(z)_i = tanh(z_i + shift_i) * h_i - offset_i,
      h_i = (L_i - 1)(1 - eps)/2,  offset_i = 0.5 if L_i even else 0,
      shift_i = tan(offset_i / h_i)            (bound(0) ~ 0)
  z_hat = round_ste(bound(z)) / floor(L_i / 2)  in [-1, 1]

with the straight-through rounding ``round_ste(x) = x + sg[round(x) - x]``.
The code index is the mixed-radix number of the per-channel digits
``(z_hat_i floor(L_i/2) + floor(L_i/2))`` with basis ``prod_{j<i} L_j``.
(``shift`` is computed with ``tan`` as in the paper's listing, appendix A.1.
``atanh`` would make ``bound(0)`` exactly 0 but is undefined for ``L_i = 2``,
where ``offset_i / h_i > 1``; for larger ``L_i`` the two differ by O(x^5).)

When ``embedding_dim != len(levels)`` the module projects the inputs to
``d`` channels and the quantised values back with learned Dense layers, as
the paper does for its MaskGIT/UViM encoders.

Recommended levels (paper, table 1) for a codebook of about ``2^b`` codes:
``FSQ_LEVELS_FOR_CODEBOOK_SIZE``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent.quantizers import base, statistics

Array = jax.Array

# Table 1 of Mentzer et al. (2023), keyed by the target codebook size; 64,
# 128, 512 and 2048 are our additions (exact products, for the K of the
# VQ-VAE configs).
FSQ_LEVELS_FOR_CODEBOOK_SIZE = {
    2**6: (4, 4, 4),
    2**7: (8, 4, 4),
    2**8: (8, 6, 5),
    2**9: (8, 8, 8),
    2**10: (8, 5, 5, 5),
    2**11: (8, 8, 6, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}

_BOUND_EPSILON = 1e-3


def levels_for_codebook_size(codebook_size: int) -> tuple[int, ...]:
    """The paper's recommended levels for a target codebook size."""
    if codebook_size not in FSQ_LEVELS_FOR_CODEBOOK_SIZE:
        raise ValueError(
            f"no recommended FSQ levels for a codebook of {codebook_size} codes; "
            f"choose one of {sorted(FSQ_LEVELS_FOR_CODEBOOK_SIZE)} or give the "
            f"quantizer field levels=(L1, L2, ...) explicitly."
        )
    return FSQ_LEVELS_FOR_CODEBOOK_SIZE[codebook_size]


def validate_levels(levels: Any) -> tuple[int, ...]:
    """``levels`` as a tuple of ints >= 2, or a ValueError naming the value."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise ValueError(f"FSQ levels must be a sequence of integers >= 2, got {levels!r}.")
    levels = tuple(levels)
    if not levels or any(
        isinstance(l, bool) or not isinstance(l, (int, np.integer)) or l < 2 for l in levels
    ):
        raise ValueError(
            f"FSQ levels must be a non-empty sequence of integers >= 2 (each "
            f"channel needs at least two values), got {levels!r}."
        )
    if math.prod(levels) >= 2**31:
        raise ValueError(
            f"FSQ levels {levels} imply {math.prod(levels)} codes, more than int32 indices can address."
        )
    return tuple(int(l) for l in levels)


def _as_arrays(levels: Sequence[int]):
    levels_f = jnp.asarray(levels, jnp.float32)
    half_width = jnp.asarray([l // 2 for l in levels], jnp.float32)
    basis = jnp.asarray(np.cumprod((1,) + tuple(levels[:-1])), jnp.int32)
    return levels_f, half_width, basis


def bound(z: Any, levels: Sequence[int]) -> Array:
    """``tanh(z + shift) h - offset``: channel i in ``(-L_i/2, L_i/2)``."""
    levels_f, _, _ = _as_arrays(levels)
    half_l = (levels_f - 1.0) * (1.0 - _BOUND_EPSILON) / 2.0
    offset = jnp.where(jnp.asarray(levels) % 2 == 1, 0.0, 0.5)
    shift = jnp.tan(offset / half_l)
    return jnp.tanh(jnp.asarray(z, jnp.float32) + shift) * half_l - offset


def round_ste(x: Array) -> Array:
    """``round(x)`` forward, identity gradient."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def quantize(z: Any, levels: Sequence[int]) -> Array:
    """FSQ of the last axis (``len(levels)`` channels): values in [-1, 1]."""
    _, half_width, _ = _as_arrays(levels)
    return round_ste(bound(z, levels)) / half_width


def codes_to_indices(z_hat: Any, levels: Sequence[int]) -> Array:
    """Quantised ``(..., d)`` values -> int32 mixed-radix indices ``(...)``."""
    _, half_width, basis = _as_arrays(levels)
    digits = jnp.round(jnp.asarray(z_hat, jnp.float32) * half_width + half_width).astype(jnp.int32)
    return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)


def indices_to_codes(indices: Any, levels: Sequence[int]) -> Array:
    """int indices ``(...)`` -> quantised float32 values ``(..., d)``."""
    _, half_width, basis = _as_arrays(levels)
    indices = jnp.asarray(indices, jnp.int32)[..., None]
    digits = (indices // basis) % jnp.asarray(levels, jnp.int32)
    return (digits.astype(jnp.float32) - half_width) / half_width


class LevelsCodebook:
    """The implied codebook of FSQ ``levels`` (FSQ and residual FSQ): ``code_dim = len(levels)``
    channels and ``prod(levels)`` codes. The module declares the ``levels`` field."""

    @property
    def code_dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    @property
    def num_embeddings(self) -> int:
        """The implied codebook size ``prod(levels)`` (as on the VQ modules)."""
        return self.codebook_size


class FSQ(LevelsCodebook, base.ProjectedQuantizer):
    """Finite scalar quantisation as a drop-in quantiser (no codebook, no loss).

    Attributes:
      levels: number of values per channel, e.g. ``(8, 5, 5, 5)`` (~1000
        codes); each >= 2.
      embedding_dim: input dimension D. If it differs from ``len(levels)``,
        Dense layers ``project_in`` / ``project_out`` (``'params'``) map to and
        from the ``len(levels)`` FSQ channels.
      dtype: dtype of ``quantize``; None means the inputs' dtype.

    Outputs (the keys every quantiser returns): ``quantize``, ``loss`` (0:
    FSQ needs no commitment or codebook term), ``perplexity`` (over the
    ``prod(levels)`` implied codes), ``encoding_indices`` (int32, mixed
    radix), and ``e_latent_loss`` = ``q_latent_loss`` = the mean squared
    rounding error ``|round(bound(z)) - bound(z)|^2 / floor(L/2)^2`` (logged,
    not part of the loss).
    """

    levels: Sequence[int]
    embedding_dim: int
    dtype: Any | None = None

    def __post_init__(self):
        object.__setattr__(self, "levels", validate_levels(self.levels))
        base.validate_int_at_least_one("embedding_dim", self.embedding_dim)
        super().__post_init__()

    def __call__(self, inputs: Array, *, train: bool, mask: Array | None = None) -> dict[str, Array]:
        """Quantises ``inputs`` of shape ``(..., D)``; ``train`` is unused."""
        del train
        inputs, flat_mask, z = self.prepare(inputs, mask)
        bounded = bound(z, self.levels)
        _, half_width, _ = _as_arrays(self.levels)
        z_hat = round_ste(bounded) / half_width
        indices = codes_to_indices(z_hat, self.levels)
        rounding_error = statistics.vq_losses(
            jax.lax.stop_gradient(bounded / half_width), jax.lax.stop_gradient(z_hat), flat_mask
        )["e_latent_loss"]
        output_dtype = self.output_dtype(inputs)
        quantized = self.from_codes(z_hat)
        return {
            "quantize": quantized.astype(output_dtype),
            "loss": jnp.zeros((), jnp.float32),
            "e_latent_loss": rounding_error,
            "q_latent_loss": rounding_error,
            "perplexity": statistics.perplexity(indices, self.codebook_size, flat_mask),
            "encoding_indices": indices,
        }

    def lookup(self, indices: Array) -> Array:
        """Indices -> vectors ``indices.shape + (D,)`` (inverse of the indices)."""
        values = indices_to_codes(indices, self.levels)
        values = self.from_codes(values)
        return values if self.dtype is None else values.astype(self.dtype)
