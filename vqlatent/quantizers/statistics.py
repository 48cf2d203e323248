"""Losses and code statistics of a quantiser (no Flax): eq. (3) terms, counts, perplexity.

* `vq_losses`: the codebook and commitment terms of eq. (3) of van den Oord et al. (2017),
  ``L = log p(x|z_q(x)) + |sg[z_e(x)] - e|^2 + beta |z_e(x) - sg[e]|^2``.
* `code_counts` / `perplexity`: per-batch (masked, float) code counts ``n_k = sum_n w_n [k_n = k]``
  and the codebook perplexity ``exp(-sum_k p_k log(p_k + 1e-10))`` of Sonnet/Haiku.
* `code_counts_per_codebook`: int32 usage counts for evaluation metrics, which accumulate over a
  whole evaluation set (float32 stops counting exactly at ``2^24`` uses of one code).

Masks are ``(N,)`` weights, 1 for real vectors and 0 for padding. Under plain ``jax.jit`` with a
sharded batch (GSPMD) every sum is already global; inside ``shard_map``/``pmap`` pass ``axis_name``
where accepted so per-shard statistics are ``psum``-ed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
AxisName = Any

# Added inside the log of the perplexity, as in Sonnet/Haiku.
_PERPLEXITY_LOG_EPSILON = 1e-10


def flatten_mask(mask: Any | None, num_rows: int) -> Array | None:
    """``mask`` with ``num_rows`` elements -> float32 ``(num_rows,)`` (None stays None)."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.size != num_rows:
        raise ValueError(f"mask must have one entry per input vector ({num_rows}); got shape {mask.shape}.")
    return mask.reshape(num_rows).astype(jnp.float32)


def vq_losses(x: Any, q: Any, mask: Any | None = None) -> dict[str, Array]:
    """The codebook and commitment terms of eq. (3).

    ``e_latent_loss = mean((sg[q] - x)^2)`` is the commitment loss (third term of eq. (3), to be
    weighted by beta) and ``q_latent_loss = mean((q - sg[x])^2)`` the codebook loss (second term).
    Means are over all ``N * D`` elements (as in Sonnet/Haiku); with ``mask`` over the ``D``
    elements of every unmasked vector. Computed in float32.

    Args:
      x: ``(..., D)`` encoder outputs ``z_e(x)``.
      q: ``(..., D)`` selected codes ``e_k``.
      mask: optional ``x.shape[:-1]`` (or flattened ``(N,)``) weights, 1 real and 0 padding.

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
        return {"e_latent_loss": jnp.mean(commitment_sq), "q_latent_loss": jnp.mean(codebook_sq)}
    dim = x.shape[-1] if x.ndim else 1
    num_rows = x.size // max(dim, 1)
    weights = flatten_mask(mask, num_rows)
    denominator = jnp.maximum(jnp.sum(weights), 1.0) * dim

    def masked_mean(squared):
        return jnp.sum(squared.reshape(num_rows, dim) * weights[:, None]) / denominator

    return {"e_latent_loss": masked_mean(commitment_sq), "q_latent_loss": masked_mean(codebook_sq)}


def code_counts(
    encoding_indices: Any, num_codes: int, mask: Any | None = None, axis_name: AxisName | None = None
) -> Array:
    """float32 ``(K,)`` (masked) counts ``n_k = sum_n w_n [k_n = k]`` of one batch (a segment sum).

    Float because the weights are (EMA statistics and the perplexity use them as such); evaluation
    metrics that accumulate over many batches use the int32 `code_counts_per_codebook`.
    """
    encoding_indices = jnp.asarray(encoding_indices).reshape(-1)
    num_rows = encoding_indices.shape[0]
    weights = flatten_mask(mask, num_rows)
    if weights is None:
        weights = jnp.ones((num_rows,), jnp.float32)
    counts = jax.ops.segment_sum(weights, encoding_indices, num_segments=num_codes)
    if axis_name is not None:
        counts = lax.psum(counts, axis_name)
    return counts


def perplexity_of_counts(counts: Any) -> Any:
    """``exp(-sum_k p_k log(p_k + 1e-10))`` with ``p = counts / max(sum(counts), 1)``, over the last axis.

    The one perplexity formula of the package: traced (a jax array, float32) inside the quantisers,
    and on the host (a numpy array, computed in numpy at its dtype) for evaluation's accumulated
    counts (`diagnostics.codebook_summary`).
    """
    xp = np if isinstance(counts, np.ndarray) else jnp
    total = xp.maximum(xp.sum(counts, axis=-1, keepdims=True), 1.0)
    probabilities = counts / total
    return xp.exp(-xp.sum(probabilities * xp.log(probabilities + _PERPLEXITY_LOG_EPSILON), axis=-1))


def perplexity(
    encoding_indices: Any, num_codes: int, mask: Any | None = None, axis_name: AxisName | None = None
) -> Array:
    """Codebook perplexity ``exp(-sum_k p_k log(p_k + 1e-10))``.

    ``p_k`` is the fraction of (unmasked) inputs assigned to code ``k`` (the mean of the one-hot
    encodings in Sonnet/Haiku), from a segment sum, so no ``(N, K)`` one-hot is built. Equals ``K``
    for uniform usage and 1 when a single code is used (or every input is masked).

    Args:
      encoding_indices: integer code indices of any shape.
      num_codes: codebook size ``K``.
      mask: optional weights with one entry per index (same number of elements).
      axis_name: if given, counts are ``psum``-ed over this mapped axis (``shard_map``/``pmap``).

    Returns:
      float32 scalar perplexity.
    """
    return perplexity_of_counts(code_counts(encoding_indices, num_codes, mask, axis_name))


def code_counts_per_codebook(
    encoding_indices: Any, num_codebooks: int, codebook_size: int, mask: Any | None = None
) -> Array:
    """int32 ``(num_codebooks, codebook_size)`` usage counts (``jnp.bincount``, exact to ``2^31``).

    ``encoding_indices`` has shape ``batch_shape`` for a single codebook or ``batch_shape +
    (num_codebooks,)`` for residual / product quantisers (the trailing stage / group axis);
    ``mask`` has ``batch_shape``'s size (or is a prefix, broadcast), e.g. ``(B,)`` of padded
    examples. A position counts when its mask entry is > 0 (masks are 0/1).
    """
    indices = jnp.asarray(encoding_indices)
    if num_codebooks > 1 and (indices.ndim == 0 or indices.shape[-1] != num_codebooks):
        raise ValueError(
            f"encoding_indices of shape {indices.shape} should end in the {num_codebooks} codebooks."
        )
    indices = indices.reshape(-1, num_codebooks)
    if mask is None:
        weights = jnp.ones(indices.shape, jnp.int32)
    else:
        mask = jnp.asarray(mask)
        rows = indices.shape[0]
        if rows % max(mask.size, 1):
            raise ValueError(f"mask of shape {mask.shape} does not divide the {rows} positions.")
        weights = jnp.repeat((mask.reshape(-1) > 0).astype(jnp.int32), rows // mask.size)
        weights = jnp.broadcast_to(weights[:, None], indices.shape)
    offsets = jnp.arange(num_codebooks, dtype=jnp.int32) * codebook_size
    counts = jnp.bincount(
        (indices + offsets).reshape(-1), weights.reshape(-1), length=num_codebooks * codebook_size
    )
    return counts.astype(jnp.int32).reshape(num_codebooks, codebook_size)


def entropy_terms(logits: Any, mask: Any | None = None) -> tuple[Array, Array]:
    """Per-sample and batch entropies of code distributions ``p_n = softmax(logits_n)``.

    The two terms of the entropy penalty of MAGVIT-v2 (Yu et al. 2023, eq. 5) and of MaskGIT's
    tokenizer: ``per_sample = E_n[H(p_n)]`` (small when each input is confidently assigned) and
    ``batch = H(E_n[p_n])`` (large when the batch uses all codes); the penalty is ``per_sample -
    gamma * batch``. Means are over the unmasked rows of the (global, under jit) batch.

    Args:
      logits: ``(N, C)`` unnormalised log-probabilities over the ``C`` codes.
      mask: optional ``(N,)`` weights (1 real, 0 padding).

    Returns:
      float32 scalars ``(per_sample_entropy, batch_entropy)`` in nats.
    """
    logits = jnp.asarray(logits).astype(jnp.float32)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    weights = flatten_mask(mask, logits.shape[0])
    if weights is None:
        weights = jnp.ones((logits.shape[0],), jnp.float32)
    total = jnp.maximum(jnp.sum(weights), 1.0)
    per_sample = jnp.sum(weights * -jnp.sum(p * log_p, axis=-1)) / total
    average = jnp.sum(weights[:, None] * p, axis=0) / total
    # max(): a code no input can reach has average 0; 0 log 0 = 0 with a finite gradient.
    batch = -jnp.sum(average * jnp.log(jnp.maximum(average, 1e-30)))
    return per_sample, batch
