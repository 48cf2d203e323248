"""Pure-function core of vector quantisation (no Flax).

Implements the pieces of the VQ-VAE bottleneck of van den Oord et al. (2017),
"Neural Discrete Representation Learning" (arXiv:1711.00937):

* nearest-neighbour code assignment, eq. (1)-(2):
  ``k = argmin_j |z_e(x) - e_j|_2`` and ``z_q(x) = e_k``;
* the straight-through gradient estimator and the codebook / commitment terms
  of the training objective, eq. (3):
  ``L = log p(x|z_q(x)) + |sg[z_e(x)] - e|^2 + beta |z_e(x) - sg[e]|^2``;
* the exponential-moving-average codebook update of appendix A.1, eq. (6)-(8),
  with the zero-debiasing and Laplace smoothing of the reference
  implementations (Sonnet ``VectorQuantizerEMA`` / Haiku
  ``hk.nets.VectorQuantizerEMA``).

Conventions: ``x`` holds encoder outputs flattened to ``(N, D)``; the codebook
``E`` is stored as ``(K, D)`` (one code per row; Sonnet/Haiku store the
transpose, ``(D, K)``). Distances, argmins and EMA statistics are always
computed in float32, whatever the input dtype.

Everything here is jit/vmap/grad friendly. Statistics are computed with
segment sums rather than an ``(N, K)`` one-hot matrix. Under plain ``jax.jit``
with sharded inputs (GSPMD) every sum is already global; inside ``shard_map``
or ``pmap`` pass ``axis_name`` to the functions that accept it so that the
per-shard statistics are ``psum``-ed over that axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
ArrayLike = Any
AxisName = Any

# Keys of the EMA state (the variable names of the 'vq_ema' collection).
CODEBOOK = "codebook"
EMA_CLUSTER_SIZE_HIDDEN = "ema_cluster_size_hidden"
EMA_DW_HIDDEN = "ema_dw_hidden"
COUNTER = "counter"
EMA_STATE_KEYS = (CODEBOOK, EMA_CLUSTER_SIZE_HIDDEN, EMA_DW_HIDDEN, COUNTER)

# Added inside the log of the perplexity, as in Sonnet/Haiku.
_PERPLEXITY_LOG_EPSILON = 1e-10


def validate_chunk_size(chunk_size: int | None) -> None:
    """Raises ValueError unless ``chunk_size`` is None or a positive integer."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")


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


def _squared_distances_f32(x_f32: Array, x_squared_norm: Array, codebook_f32: Array) -> Array:
    """``|x|^2 - 2 x.e + |e|^2`` from float32 parts; shape (N, K)."""
    codebook_squared_norm = jnp.sum(jnp.square(codebook_f32), axis=-1)
    cross = jnp.matmul(x_f32, codebook_f32.T, precision=lax.Precision.HIGHEST)
    return x_squared_norm - 2.0 * cross + codebook_squared_norm[None, :]


def squared_distances(x: ArrayLike, codebook: ArrayLike) -> Array:
    """Squared Euclidean distances between inputs and codes.

    The distance of eq. (2) of van den Oord et al. (2017), expanded as in
    Sonnet/Haiku: ``d_nk = |x_n|^2 - 2 x_n.e_k + |e_k|^2``. Computed in float32
    (and with full-precision matmuls on accelerators) whatever the input dtype,
    so that the argmin is not decided by bfloat16 rounding.

    Args:
      x: ``(N, D)`` inputs (flattened encoder outputs ``z_e(x)``).
      codebook: ``(K, D)`` codebook, one code per row.

    Returns:
      ``(N, K)`` float32 squared distances.
    """
    x = jnp.asarray(x)
    codebook = jnp.asarray(codebook)
    _check_matrix_and_codebook(x, codebook)
    x_f32 = x.astype(jnp.float32)
    x_squared_norm = jnp.sum(jnp.square(x_f32), axis=-1, keepdims=True)
    return _squared_distances_f32(x_f32, x_squared_norm, codebook.astype(jnp.float32))


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


def argmin_last_axis(values: Array) -> Array:
    """``jnp.argmin(values, axis=-1)`` as int32, computed in two levels.

    XLA:CPU lowers ``argmin`` to a variadic (value, index) reduction that is not
    vectorised, about 5x slower than a plain ``min``; on an ``(N, K)`` distance
    matrix it costs several times the distance matmul itself. Here the last
    axis is split into blocks of ``B ~ sqrt(K)`` codes: a vectorised ``min``
    per block, ``argmin`` over the ``K / B`` block minima, then ``argmin``
    inside the winning block (``O(N (K/B + B))`` variadic work instead of
    ``O(N K)``). For NaN-free values the result is exactly ``jnp.argmin``'s:
    the first block holding the minimum contains its lowest index, so ties
    still go to the lowest index. (With NaNs in a row, XLA:CPU's vectorised
    ``min`` may skip them, so that row's index is some valid index, not
    necessarily the first NaN's; its loss is NaN anyway.)
    """
    num_codes = values.shape[-1]
    block = _argmin_block_size(num_codes)
    if not block:
        return jnp.argmin(values, axis=-1).astype(jnp.int32)
    blocks = values.reshape(values.shape[:-1] + (num_codes // block, block))
    block_index = jnp.argmin(jnp.min(blocks, axis=-1), axis=-1).astype(jnp.int32)
    winning_block = jnp.take_along_axis(blocks, block_index[..., None, None], axis=-2)[..., 0, :]
    return block_index * block + jnp.argmin(winning_block, axis=-1).astype(jnp.int32)


def nearest_code(x: ArrayLike, codebook: ArrayLike, chunk_size: int | None = None) -> tuple[Array, Array]:
    """Nearest-neighbour code assignment, eq. (2): ``k = argmin_j |x - e_j|^2``.

    Ties resolve to the lowest code index (as ``jnp.argmin`` does). With
    ``chunk_size`` the codebook is scanned in chunks of ``chunk_size`` codes,
    keeping a running (min, argmin), so peak memory is ``O(N * chunk_size)``
    instead of ``O(N * K)``. A chunk's winner replaces the running one only when
    strictly closer, so ties still go to the lowest index across chunk
    boundaries and the indices equal the unchunked ones. ``K`` need not be a
    multiple of ``chunk_size``: the last chunk is padded with ``+inf`` distances.

    Args:
      x: ``(N, D)`` inputs.
      codebook: ``(K, D)`` codebook.
      chunk_size: number of codes per chunk, or None to compute the full
        ``(N, K)`` distance matrix at once.

    Returns:
      ``(indices, min_distance)``: int32 ``(N,)`` code indices and the float32
      ``(N,)`` squared distance to the chosen code.

    Raises:
      ValueError: if ``chunk_size`` is not None or a positive integer, or the
        shapes do not match.
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
        distances = _squared_distances_f32(x_f32, x_squared_norm, codebook_f32)
        indices = argmin_last_axis(distances)
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
        distances = _squared_distances_f32(x_f32, x_squared_norm, chunk)
        code_indices = chunk_start + offsets_in_chunk
        distances = jnp.where(code_indices[None, :] < num_codes, distances, jnp.inf)
        local_index = argmin_last_axis(distances)
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


@jax.custom_vjp
def _straight_through(x: Array, q: Array) -> Array:
    del x
    return q


def _straight_through_fwd(x: Array, q: Array):
    del x
    return q, None


def _straight_through_bwd(residuals, cotangent):
    del residuals
    return cotangent, jnp.zeros_like(cotangent)


_straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def straight_through(x: ArrayLike, q: ArrayLike) -> Array:
    """Straight-through estimator of eq. (3)'s first term.

    In the forward pass this is ``z_q(x) = q`` (written ``x + sg[q - x]`` in the
    reference implementations, but returned exactly as ``q``). In the backward
    pass the decoder's gradient ``dL/dz_q`` is copied unchanged to the encoder
    output ``z_e(x) = x`` ("we approximate the gradient similar to the
    straight-through estimator and just copy gradients from decoder input
    z_q(x) to encoder output z_e(x)") and ``q`` receives a zero cotangent: the
    codebook learns only from the codebook term of eq. (3) (or the EMA update).

    Args:
      x: encoder outputs.
      q: quantised vectors, same shape as ``x``; cast to ``x.dtype``.

    Returns:
      ``q`` with the dtype of ``x``, differentiable only w.r.t. ``x``.
    """
    x = jnp.asarray(x)
    q = jnp.asarray(q)
    if x.shape != q.shape:
        raise ValueError(f"straight_through needs x and q of the same shape; got {x.shape} and {q.shape}.")
    return _straight_through(x, q.astype(x.dtype))


def _flatten_mask(mask: ArrayLike | None, num_rows: int) -> Array | None:
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.size != num_rows:
        raise ValueError(f"mask must have one entry per input vector ({num_rows}); got shape {mask.shape}.")
    return mask.reshape(num_rows).astype(jnp.float32)


def vq_losses(x: ArrayLike, q: ArrayLike, mask: ArrayLike | None = None) -> dict[str, Array]:
    """The codebook and commitment terms of eq. (3).

    ``e_latent_loss = mean((sg[q] - x)^2)`` is the commitment loss (third term of
    eq. (3), to be weighted by beta) and ``q_latent_loss = mean((q - sg[x])^2)``
    the codebook loss (second term). Means are over all ``N * D`` elements (as
    in Sonnet/Haiku); with ``mask`` over the ``D`` elements of every unmasked
    vector. Computed in float32.

    Args:
      x: ``(..., D)`` encoder outputs ``z_e(x)``.
      q: ``(..., D)`` selected codes ``e_k``.
      mask: optional ``x.shape[:-1]`` (or flattened ``(N,)``) weights, 1 for
        real vectors and 0 for padding.

    Returns:
      Dict with float32 scalars ``e_latent_loss`` and ``q_latent_loss``.
    """
    x = jnp.asarray(x).astype(jnp.float32)
    q = jnp.asarray(q).astype(jnp.float32)
    if x.shape != q.shape:
        raise ValueError(f"vq_losses needs x and q of the same shape; got {x.shape} and {q.shape}.")
    commitment_sq = jnp.square(lax.stop_gradient(q) - x)
    codebook_sq = jnp.square(q - lax.stop_gradient(x))
    if mask is None:
        return {
            "e_latent_loss": jnp.mean(commitment_sq),
            "q_latent_loss": jnp.mean(codebook_sq),
        }
    dim = x.shape[-1] if x.ndim else 1
    num_rows = x.size // max(dim, 1)
    weights = _flatten_mask(mask, num_rows)
    denominator = jnp.maximum(jnp.sum(weights), 1.0) * dim

    def masked_mean(squared):
        return jnp.sum(squared.reshape(num_rows, dim) * weights[:, None]) / (denominator)

    return {
        "e_latent_loss": masked_mean(commitment_sq),
        "q_latent_loss": masked_mean(codebook_sq),
    }


def code_counts(
    encoding_indices: ArrayLike,
    num_codes: int,
    mask: ArrayLike | None = None,
    axis_name: AxisName | None = None,
) -> Array:
    """float32 ``(K,)`` (masked) usage counts of every code, ``sum_n onehot``."""
    encoding_indices = jnp.asarray(encoding_indices).reshape(-1)
    num_rows = encoding_indices.shape[0]
    weights = _flatten_mask(mask, num_rows)
    if weights is None:
        weights = jnp.ones((num_rows,), jnp.float32)
    counts = jax.ops.segment_sum(weights, encoding_indices, num_segments=num_codes)
    if axis_name is not None:
        counts = lax.psum(counts, axis_name)
    return counts


def perplexity(
    encoding_indices: ArrayLike,
    num_codes: int,
    mask: ArrayLike | None = None,
    axis_name: AxisName | None = None,
) -> Array:
    """Codebook perplexity ``exp(-sum_k p_k log(p_k + 1e-10))``.

    ``p_k`` is the fraction of (unmasked) inputs assigned to code ``k`` (the
    mean of the one-hot encodings in Sonnet/Haiku), computed with a segment sum
    so no ``(N, K)`` one-hot is built. Equals ``K`` for uniform code usage and 1
    when a single code is used (or when every input is masked).

    Args:
      encoding_indices: integer code indices of any shape.
      num_codes: codebook size ``K``.
      mask: optional weights with one entry per index (same number of elements).
      axis_name: if given, counts are ``psum``-ed over this mapped axis
        (``shard_map``/``pmap``). Not needed under ``jit`` with sharded inputs.

    Returns:
      float32 scalar perplexity.
    """
    counts = code_counts(encoding_indices, num_codes, mask, axis_name)
    total = jnp.maximum(jnp.sum(counts), 1.0)
    probabilities = counts / total
    return jnp.exp(-jnp.sum(probabilities * jnp.log(probabilities + _PERPLEXITY_LOG_EPSILON)))


def init_ema_state(codebook: ArrayLike) -> dict[str, Array]:
    """A fresh EMA state for ``codebook``: zero hidden states, counter 0.

    Each entry is its own freshly allocated array (no two share a buffer, which
    would break ``donate_argnums``).

    Args:
      codebook: ``(K, D)`` initial codebook.

    Returns:
      Dict with ``codebook`` (float32 copy), ``ema_cluster_size_hidden`` ``(K,)``,
      ``ema_dw_hidden`` ``(K, D)`` and int32 scalar ``counter``.
    """
    codebook = jnp.array(codebook, dtype=jnp.float32, copy=True)
    num_codes, dim = codebook.shape
    return {
        CODEBOOK: codebook,
        EMA_CLUSTER_SIZE_HIDDEN: jnp.zeros((num_codes,), jnp.float32),
        EMA_DW_HIDDEN: jnp.zeros((num_codes, dim), jnp.float32),
        COUNTER: jnp.zeros((), jnp.int32),
    }


def ema_update(
    ema_state: Mapping[str, Array],
    x: ArrayLike,
    encoding_indices: ArrayLike,
    *,
    decay: float,
    epsilon: float,
    num_codes: int,
    mask: ArrayLike | None = None,
    axis_name: AxisName | None = None,
) -> dict[str, Array]:
    """One EMA codebook update, appendix A.1 (eq. 6-8), as in Sonnet/Haiku.

    With ``g = decay``, ``t`` the update count (1 on the first update) and the
    hidden states starting at zero::

      n     = sum_n onehot_n                    (K,)   cluster sizes, eq. (6)
      dw    = sum_n onehot_n x_n                (K, D) (Sonnet: x^T onehot, D x K)
      h_N   = g h_N + (1 - g) n;   N_hat = h_N / (1 - g^t)        (debiased)
      h_m   = g h_m + (1 - g) dw;  m_hat = h_m / (1 - g^t)        eq. (7)
      tot   = sum_k N_hat
      N_smooth = (N_hat + eps) / (tot + K eps) * tot              (Laplace)
      e_k   = m_hat_k / N_smooth_k                                eq. (8)

    ``n`` and ``dw`` are segment sums in float32 (no ``(N, K)`` one-hot). Only
    the hidden states, the counter and the new codebook are stored; the caller
    must look ``q`` up in the codebook *before* calling this.

    Distribution: under plain ``jax.jit`` with sharded ``x`` (GSPMD) the segment
    sums are already global, so leave ``axis_name`` as None. Inside
    ``shard_map``/``pmap``, where ``x`` is the local shard, pass the mapped axis
    name to ``psum`` ``n`` and ``dw`` over it (the state must be replicated).

    With ``mask``, masked inputs contribute nothing to ``n`` and ``dw``; if the
    (global) batch has no unmasked input at all the state is returned unchanged
    (the counter is not advanced).

    Args:
      ema_state: mapping with keys ``codebook`` (K, D),
        ``ema_cluster_size_hidden`` (K,), ``ema_dw_hidden`` (K, D) and
        ``counter`` (int32 scalar).
      x: ``(N, D)`` encoder outputs (any float dtype; used in float32).
      encoding_indices: ``(N,)`` code indices of ``x`` (any shape with N
        elements).
      decay: EMA decay ``g`` in ``[0, 1)``.
      epsilon: Laplace smoothing constant (> 0).
      num_codes: codebook size ``K``.
      mask: optional ``(N,)`` weights (1 real, 0 padding).
      axis_name: optional mapped axis name to ``psum`` the statistics over.

    Returns:
      The new EMA state (a new dict with the same keys).
    """
    x = jnp.asarray(x).astype(jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, D); got shape {x.shape}.")
    num_rows = x.shape[0]
    encoding_indices = jnp.asarray(encoding_indices).reshape(-1)
    if encoding_indices.shape[0] != num_rows:
        raise ValueError(
            f"encoding_indices has {encoding_indices.shape[0]} entries but x has {num_rows} rows."
        )
    weights = _flatten_mask(mask, num_rows)
    weighted_x = x if weights is None else x * weights[:, None]

    cluster_size = code_counts(encoding_indices, num_codes, weights)
    dw = jax.ops.segment_sum(weighted_x, encoding_indices, num_segments=num_codes)
    if axis_name is not None:
        cluster_size = lax.psum(cluster_size, axis_name)
        dw = lax.psum(dw, axis_name)

    decay = jnp.asarray(decay, jnp.float32)
    one = jnp.ones((), jnp.float32)
    counter = ema_state[COUNTER] + 1
    debias = one - jnp.power(decay, counter.astype(jnp.float32))

    cluster_size_hidden = ema_state[EMA_CLUSTER_SIZE_HIDDEN] * decay + cluster_size * (one - decay)
    dw_hidden = ema_state[EMA_DW_HIDDEN] * decay + dw * (one - decay)
    cluster_size_average = cluster_size_hidden / debias
    dw_average = dw_hidden / debias

    total = jnp.sum(cluster_size_average)
    smoothed_cluster_size = (cluster_size_average + epsilon) / (total + num_codes * epsilon) * total
    codebook = dw_average / smoothed_cluster_size[:, None]

    new_state = {
        CODEBOOK: codebook,
        EMA_CLUSTER_SIZE_HIDDEN: cluster_size_hidden,
        EMA_DW_HIDDEN: dw_hidden,
        COUNTER: counter.astype(jnp.int32),
    }
    if weights is not None:
        has_data = jnp.sum(cluster_size) > 0
        new_state = {key: jnp.where(has_data, value, ema_state[key]) for key, value in new_state.items()}
    return new_state
