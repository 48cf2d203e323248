"""Nearest-code search (no Flax): distances, argmin, the chunked scan, cosine codes.

Implements the assignment of the VQ-VAE bottleneck of van den Oord et al. (2017), "Neural Discrete
Representation Learning" (arXiv:1711.00937), eq. (1)-(2)::

  k = argmin_j |z_e(x) - e_j|_2,    z_q(x) = e_k

with the distance expanded as in Sonnet/Haiku, ``d_nk = |x_n|^2 - 2 x_n.e_k + |e_k|^2``. Inputs are
``(N, D)`` rows, the codebook is ``(K, D)`` (one code per row; Sonnet/Haiku store the transpose).
Distances and argmins are float32 whatever the input dtype.

Two hot paths have per-backend forms, chosen by a quantizer config field whose value ``'auto'`` is
resolved by `vqlatent.backend.resolve` (any other value forces that form on every backend):

* ``argmin_form``: ``'two_level'`` (`argmin_last_axis`: a vectorised ``min`` per block of ~sqrt(K)
  codes, then ``argmin`` over the block minima and inside the winning block; XLA:CPU's variadic
  argmin reduction is not vectorised and costs several times the distance matmul) or ``'plain'``
  (``jnp.argmin``; GPU/TPU reduce it natively, and the two-level reshape pads badly on TPU lanes).
  Both return exactly the same indices (ties to the lowest index) for NaN-free distances.
* ``distance_precision``: the ``precision`` of the ``x.e`` matmul. ``'highest'`` (true float32) on
  every backend by default: the default precision is TF32 on Ampere+ GPUs (10-bit mantissa) and one
  bf16 pass on TPUs (8-bit), which moves ``x.e`` by about ``1e-3 |x||e|`` -- enough to change which
  code is nearest for inputs between two codes, so indices (and the codes a checkpoint produces)
  would depend on the backend. ``'high'`` (bf16x3 on TPU, TF32x3 where supported) and ``'default'``
  are there to be measured, not defaults. On the CPU all three are the same float32 matmul.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from vqlatent import backend

Array = jax.Array

# The forms of the two hot paths; their per-backend defaults are in `vqlatent.backend.CHOICES`.
ARGMIN_FORMS = backend.CHOICES["argmin_form"].forms
DISTANCE_PRECISIONS = {
    "highest": lax.Precision.HIGHEST,
    "high": lax.Precision.HIGH,
    "default": lax.Precision.DEFAULT,
}
assert tuple(DISTANCE_PRECISIONS) == backend.CHOICES["distance_precision"].forms

# Added to the norm so that an all-zero row normalises to zero, not NaN.
_NORMALIZE_EPSILON = 1e-12


def resolve_argmin_form(value: str) -> str:
    """``argmin_form`` config value -> ``'two_level'`` or ``'plain'`` (``'auto'``: by backend)."""
    return backend.resolve("quantizer.argmin_form", value)


def resolve_distance_precision(value: str) -> str:
    """``distance_precision`` config value -> ``'highest'``, ``'high'`` or ``'default'``."""
    return backend.resolve("quantizer.distance_precision", value)


def validate_chunk_size(chunk_size: int | None) -> None:
    """Raises ValueError unless ``chunk_size`` is None or a positive integer."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")


def l2_normalize(x: Any, axis: int = -1) -> Array:
    """``x / |x|`` along ``axis`` in float32 (zero rows stay zero).

    Cosine-similarity codes (Yu et al. 2022, ViT-VQGAN, section 3.2: "l2-normalized codes"): on the
    unit sphere ``|x - e|^2 = 2 - 2 cos(x, e)``, so the nearest code is the most similar one.
    """
    x = jnp.asarray(x).astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, _NORMALIZE_EPSILON)


def _check_matrix_and_codebook(x: Array, codebook: Array) -> None:
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, D); got shape {x.shape}.")
    if codebook.ndim != 2:
        raise ValueError(f"codebook must have shape (K, D); got shape {codebook.shape}.")
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"x has D={x.shape[1]} but the codebook has D={codebook.shape[1]} "
            f"(x.shape={x.shape}, codebook.shape={codebook.shape})."
        )


def _squared_distances_f32(
    x_f32: Array, x_squared_norm: Array, codebook_f32: Array, precision: str = "highest"
) -> Array:
    """``|x|^2 - 2 x.e + |e|^2`` from float32 parts; shape (N, K)."""
    codebook_squared_norm = jnp.sum(jnp.square(codebook_f32), axis=-1)
    cross = jnp.matmul(x_f32, codebook_f32.T, precision=DISTANCE_PRECISIONS[precision])
    return x_squared_norm - 2.0 * cross + codebook_squared_norm[None, :]


def squared_distances(x: Any, codebook: Any, precision: str = "highest") -> Array:
    """Squared Euclidean distances ``d_nk = |x_n|^2 - 2 x_n.e_k + |e_k|^2`` (eq. 2), ``(N, K)`` float32.

    Computed in float32 whatever the input dtype (and, with ``precision='highest'``, with full
    float32 matmuls on accelerators) so the argmin is not decided by bf16/TF32 rounding.

    Args:
      x: ``(N, D)`` inputs (flattened encoder outputs ``z_e(x)``).
      codebook: ``(K, D)`` codebook, one code per row.
      precision: ``'highest'``, ``'high'`` or ``'default'`` (see the module docstring).
    """
    x = jnp.asarray(x)
    codebook = jnp.asarray(codebook)
    _check_matrix_and_codebook(x, codebook)
    x_f32 = x.astype(jnp.float32)
    x_squared_norm = jnp.sum(jnp.square(x_f32), axis=-1, keepdims=True)
    return _squared_distances_f32(x_f32, x_squared_norm, codebook.astype(jnp.float32), precision)


def _argmin_block_size(num_codes: int) -> int:
    """A divisor of ``num_codes`` near ``sqrt(num_codes)`` (>= 8), or 0 for none."""
    if num_codes < 64:
        return 0
    root = int(math.isqrt(num_codes))
    for offset in range(root):
        for block in (root - offset, root + offset):
            if 8 <= block < num_codes and num_codes % block == 0:
                return block
    return 0


def argmin_last_axis(values: Array, form: str = "two_level") -> Array:
    """``jnp.argmin(values, axis=-1)`` as int32; ``form='two_level'`` computes it in two levels.

    Two levels: the last axis is split into blocks of ``B ~ sqrt(K)`` codes: a vectorised ``min``
    per block, ``argmin`` over the ``K / B`` block minima, then ``argmin`` inside the winning block
    (``O(N (K/B + B))`` variadic work instead of ``O(N K)``). For NaN-free values the result is
    exactly ``jnp.argmin``'s: the first block holding the minimum contains its lowest index, so ties
    still go to the lowest index. (With NaNs in a row, XLA:CPU's vectorised ``min`` may skip them,
    so that row's index is some valid index, not necessarily the first NaN's; its loss is NaN anyway.)
    """
    if form not in ARGMIN_FORMS:
        raise ValueError(f"Unknown argmin form {form!r}; choose one of {list(ARGMIN_FORMS)}.")
    num_codes = values.shape[-1]
    block = _argmin_block_size(num_codes) if form == "two_level" else 0
    if not block:
        return jnp.argmin(values, axis=-1).astype(jnp.int32)
    blocks = values.reshape(values.shape[:-1] + (num_codes // block, block))
    block_index = jnp.argmin(jnp.min(blocks, axis=-1), axis=-1).astype(jnp.int32)
    winning_block = jnp.take_along_axis(blocks, block_index[..., None, None], axis=-2)[..., 0, :]
    return block_index * block + jnp.argmin(winning_block, axis=-1).astype(jnp.int32)


def nearest_code(
    x: Any,
    codebook: Any,
    chunk_size: int | None = None,
    *,
    argmin_form: str = "two_level",
    precision: str = "highest",
) -> tuple[Array, Array]:
    """Nearest-neighbour code assignment, eq. (2): ``k = argmin_j |x - e_j|^2``.

    Ties resolve to the lowest code index (as ``jnp.argmin`` does). With ``chunk_size`` the codebook
    is scanned in chunks of ``chunk_size`` codes, keeping a running (min, argmin), so peak memory is
    ``O(N * chunk_size)`` instead of ``O(N * K)``. A chunk's winner replaces the running one only
    when strictly closer, so ties still go to the lowest index across chunk boundaries and the
    indices equal the unchunked ones. ``K`` need not be a multiple of ``chunk_size``: the last chunk
    is padded with ``+inf`` distances.

    Args:
      x: ``(N, D)`` inputs.
      codebook: ``(K, D)`` codebook.
      chunk_size: number of codes per chunk, or None for the full ``(N, K)`` distances at once.
      argmin_form: ``'two_level'`` or ``'plain'`` (`argmin_last_axis`; same indices).
      precision: of the distance matmul (`squared_distances`).

    Returns:
      ``(indices, min_distance)``: int32 ``(N,)`` code indices and the float32 ``(N,)`` squared
      distance to the chosen code.
    """
    validate_chunk_size(chunk_size)
    x = jnp.asarray(x)
    codebook = jnp.asarray(codebook)
    _check_matrix_and_codebook(x, codebook)
    num_codes, dim = codebook.shape
    x_f32 = x.astype(jnp.float32)
    x_squared_norm = jnp.sum(jnp.square(x_f32), axis=-1, keepdims=True)
    codebook_f32 = codebook.astype(jnp.float32)

    if chunk_size is None or chunk_size >= num_codes:
        distances = _squared_distances_f32(x_f32, x_squared_norm, codebook_f32, precision)
        indices = argmin_last_axis(distances, argmin_form)
        min_distance = jnp.take_along_axis(distances, indices[:, None], axis=-1)
        return indices, min_distance[:, 0]

    num_chunks = -(-num_codes // chunk_size)
    padding = num_chunks * chunk_size - num_codes
    chunks = jnp.pad(codebook_f32, ((0, padding), (0, 0)))
    chunks = chunks.reshape(num_chunks, chunk_size, dim)
    chunk_starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
    offsets_in_chunk = jnp.arange(chunk_size, dtype=jnp.int32)

    def scan_chunk(carry, chunk_and_start):
        best_distance, best_index = carry
        chunk, chunk_start = chunk_and_start
        distances = _squared_distances_f32(x_f32, x_squared_norm, chunk, precision)
        code_indices = chunk_start + offsets_in_chunk
        distances = jnp.where(code_indices[None, :] < num_codes, distances, jnp.inf)
        local_index = argmin_last_axis(distances, argmin_form)
        local_distance = jnp.take_along_axis(distances, local_index[:, None], axis=-1)[:, 0]
        # Strictly smaller: on ties the earlier chunk (lower index) wins.
        closer = local_distance < best_distance
        best_distance = jnp.where(closer, local_distance, best_distance)
        best_index = jnp.where(closer, chunk_start + local_index, best_index)
        return (best_distance, best_index), None

    num_inputs = x.shape[0]
    init = (jnp.full((num_inputs,), jnp.inf, jnp.float32), jnp.zeros((num_inputs,), jnp.int32))
    (min_distance, indices), _ = lax.scan(scan_chunk, init, (chunks, chunk_starts))
    return indices, min_distance
