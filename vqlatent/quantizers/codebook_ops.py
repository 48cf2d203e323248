"""Pure functions that keep a codebook healthy (no Flax).

* ``l2_normalize``: cosine-similarity codes (Yu et al. 2022, ViT-VQGAN,
  section 3.2: "l2-normalized codes"); on the unit sphere
  ``|x - e|^2 = 2 - 2 cos(x, e)``, so the nearest code is the most similar one.
* ``sample_rows``: random (distinct when possible) rows of a batch, the
  source of k-means seeds and of dead-code restarts.
* ``kmeans``: a few Lloyd iterations on one batch to initialise a codebook
  (the "k-means initialisation" of Dhariwal et al. 2020, Jukebox, and
  Zeghidour et al. 2021, SoundStream section 3.2), chunked like
  `core.nearest_code`.
* ``ema_usage`` / ``restart_dead_codes``: the expected number of inputs a code
  receives per batch (the debiased EMA cluster size ``N_hat`` of appendix A.1
  of van den Oord et al. 2017) and the re-initialisation of the codes whose
  usage fell below a threshold to random encoder outputs of the current batch
  (Jukebox appendix A / SoundStream: "codebook entries that are unused for
  several batches are replaced by random input vectors").

Everything works on ``(N, D)`` rows and ``(K, D)`` codebooks, in float32, with
an optional ``(N,)`` mask (1 real, 0 padding). Under ``jax.jit`` with a sharded
batch the sums, ``top_k`` and random draws are over the global batch and give
the same result as on one device (``jax_threefry_partitionable``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from vqlatent.quantizers import core

Array = jax.Array

# Added to the norm so that an all-zero row normalises to zero, not NaN.
_NORMALIZE_EPSILON = 1e-12


def l2_normalize(x: Any, axis: int = -1) -> Array:
    """``x / |x|`` along ``axis`` in float32 (zero rows stay zero)."""
    x = jnp.asarray(x).astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, _NORMALIZE_EPSILON)


def _row_weights(mask: Any | None, num_rows: int) -> Array:
    if mask is None:
        return jnp.ones((num_rows,), jnp.float32)
    mask = jnp.asarray(mask, jnp.float32).reshape(-1)
    if mask.shape[0] != num_rows:
        raise ValueError(f"mask has {mask.shape[0]} entries for {num_rows} rows.")
    return mask


def sample_rows(key: Array, x: Any, num_samples: int, mask: Any | None = None) -> tuple[Array, Array]:
    """``num_samples`` random rows of ``x``, distinct when the batch allows.

    When ``N >= num_samples`` the rows are drawn without replacement among the
    unmasked ones (Gumbel top-k: ``top_k(g + log mask)``); otherwise with
    replacement (categorical over the unmasked rows).

    Args:
      key: PRNG key.
      x: ``(N, D)`` rows.
      num_samples: how many to draw (static).
      mask: optional ``(N,)`` weights; rows with weight 0 are never drawn.

    Returns:
      ``(rows, valid)``: float32 ``(num_samples, D)`` rows and a bool
      ``(num_samples,)`` that is False where no unmasked row was left to draw
      (those rows are meaningless).
    """
    x = jnp.asarray(x).astype(jnp.float32)
    num_rows = x.shape[0]
    weights = _row_weights(mask, num_rows)
    log_weights = jnp.where(weights > 0, 0.0, -jnp.inf)
    if num_rows >= num_samples:
        scores = jax.random.gumbel(key, (num_rows,), jnp.float32) + log_weights
        top_scores, row_indices = lax.top_k(scores, num_samples)
        valid = jnp.isfinite(top_scores)
    else:
        row_indices = jax.random.categorical(key, log_weights, shape=(num_samples,))
        valid = jnp.broadcast_to(jnp.any(weights > 0), (num_samples,))
    return jnp.take(x, row_indices, axis=0), valid


def kmeans(
    x: Any,
    num_codes: int,
    key: Array,
    *,
    iterations: int = 10,
    mask: Any | None = None,
    chunk_size: int | None = None,
    spherical: bool = False,
) -> tuple[Array, Array]:
    """Lloyd's k-means on the rows of ``x``: ``num_codes`` centroids.

    Seeds are random distinct rows (`sample_rows`); each iteration assigns
    every row to its nearest centroid (`core.nearest_code`, chunked when
    ``chunk_size`` is set, so memory stays ``O(N * chunk_size)``) and moves each
    centroid to the mean of its rows. A centroid that receives no row keeps its
    position. With ``spherical=True`` rows are expected on the unit sphere and
    centroids are re-normalised after every step (spherical k-means, for
    cosine codebooks). Runs as one ``lax.fori_loop`` (one compiled loop body).

    Args:
      x: ``(N, D)`` rows (any float dtype; used in float32).
      num_codes: number of centroids K (static).
      key: PRNG key for the seeds.
      iterations: number of Lloyd iterations (>= 1).
      mask: optional ``(N,)`` weights; masked rows are ignored.
      chunk_size: see `core.nearest_code`.
      spherical: re-normalise centroids to unit length.

    Returns:
      ``(centroids, counts)``: float32 ``(K, D)`` centroids and the float32
      ``(K,)`` number of rows assigned to each in the last iteration.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or (iterations < 1):
        raise ValueError(f"kmeans iterations must be an integer >= 1, got {iterations!r}.")
    core.validate_chunk_size(chunk_size)
    x = jnp.asarray(x).astype(jnp.float32)
    num_rows = x.shape[0]
    weights = _row_weights(mask, num_rows)
    weighted_x = x * weights[:, None]
    seeds, _ = sample_rows(key, x, num_codes, weights)
    if spherical:
        seeds = l2_normalize(seeds)

    def lloyd_step(_, carry):
        centroids, _ = carry
        indices, _ = core.nearest_code(x, centroids, chunk_size)
        counts = jax.ops.segment_sum(weights, indices, num_segments=num_codes)
        sums = jax.ops.segment_sum(weighted_x, indices, num_segments=num_codes)
        moved = sums / jnp.maximum(counts, 1.0)[:, None]
        if spherical:
            moved = l2_normalize(moved)
        return jnp.where(counts[:, None] > 0, moved, centroids), counts

    return lax.fori_loop(0, iterations, lloyd_step, (seeds, jnp.zeros((num_codes,), jnp.float32)))


def ema_usage(ema_state: Mapping[str, Array], decay: float) -> Array:
    """Debiased EMA cluster sizes ``N_hat = h_N / (1 - g^t)``, shape ``(K,)``.

    The expected number of (unmasked) inputs the code receives per batch
    (eq. 6 of van den Oord et al. 2017 averaged by the EMA). Zero before the
    first update (``t = 0``).
    """
    counter = ema_state[core.COUNTER].astype(jnp.float32)
    debias = 1.0 - jnp.power(jnp.asarray(decay, jnp.float32), counter)
    hidden = ema_state[core.EMA_CLUSTER_SIZE_HIDDEN]
    return jnp.where(counter > 0, hidden / jnp.maximum(debias, 1e-30), 0.0)


def restart_dead_codes(
    ema_state: Mapping[str, Array],
    x: Any,
    key: Array,
    *,
    decay: float,
    threshold: float,
    mask: Any | None = None,
) -> tuple[dict[str, Array], Array]:
    """Re-initialises the codes whose EMA usage is below ``threshold``.

    A code ``k`` is dead when ``N_hat_k < threshold`` (`ema_usage`:
    fewer than ``threshold`` inputs per batch on average). Each dead code is
    replaced by a different random unmasked row of ``x`` (the current batch's
    encoder outputs; `sample_rows`), and its EMA statistics are reset so that
    the average matches the new code with usage exactly ``threshold``
    (``h_N = threshold (1 - g^t)``, ``h_m = e_new h_N``): it stays alive until
    the next update, which keeps it if it attracts inputs and restarts it again
    otherwise. Call after `core.ema_update` (on the new state). Nothing happens
    before the first update or when the batch has no unmasked row.

    Args:
      ema_state: EMA state after this step's update.
      x: ``(N, D)`` rows of this batch (in the codebook's space).
      key: PRNG key.
      decay: the EMA decay of the state.
      threshold: usage below which a code is dead (> 0).
      mask: optional ``(N,)`` weights.

    Returns:
      ``(new_state, num_dead)``: the new EMA state and the float32 number of
      codes that were dead (and restarted) in this call.
    """
    codebook = ema_state[core.CODEBOOK]
    num_codes = codebook.shape[0]
    usage = ema_usage(ema_state, decay)
    counter = ema_state[core.COUNTER]
    candidates, valid = sample_rows(key, x, num_codes, mask)
    dead = (usage < threshold) & (counter > 0)
    restart = dead & valid
    debias = 1.0 - jnp.power(jnp.asarray(decay, jnp.float32), counter.astype(jnp.float32))
    restarted_hidden = jnp.asarray(threshold, jnp.float32) * debias
    new_state = dict(ema_state)
    new_state[core.CODEBOOK] = jnp.where(restart[:, None], candidates, codebook)
    new_state[core.EMA_CLUSTER_SIZE_HIDDEN] = jnp.where(
        restart, restarted_hidden, ema_state[core.EMA_CLUSTER_SIZE_HIDDEN]
    )
    new_state[core.EMA_DW_HIDDEN] = jnp.where(
        restart[:, None], candidates * restarted_hidden, ema_state[core.EMA_DW_HIDDEN]
    )
    return new_state, jnp.sum(restart.astype(jnp.float32))


def code_counts_per_codebook(
    encoding_indices: Any, num_codebooks: int, codebook_size: int, mask: Any | None = None
) -> Array:
    """float32 ``(num_codebooks, codebook_size)`` usage counts.

    ``encoding_indices`` has shape ``batch_shape`` for a single codebook or
    ``batch_shape + (num_codebooks,)`` for residual / product quantisers (the
    trailing stage / group axis); ``mask`` has ``batch_shape``'s size (or is a
    prefix, broadcast), e.g. ``(B,)`` of padded examples.
    """
    indices = jnp.asarray(encoding_indices)
    if num_codebooks > 1 and (indices.ndim == 0 or indices.shape[-1] != num_codebooks):
        raise ValueError(
            f"encoding_indices of shape {indices.shape} should end in the {num_codebooks} codebooks."
        )
    indices = indices.reshape(-1, num_codebooks)
    if mask is None:
        weights = jnp.ones(indices.shape, jnp.float32)
    else:
        mask = jnp.asarray(mask, jnp.float32)
        rows = indices.shape[0]
        if rows % max(mask.size, 1):
            raise ValueError(f"mask of shape {mask.shape} does not divide the {rows} positions.")
        weights = jnp.repeat(mask.reshape(-1), rows // mask.size)
        weights = jnp.broadcast_to(weights[:, None], indices.shape)
    offsets = jnp.arange(num_codebooks, dtype=jnp.int32) * codebook_size
    counts = jax.ops.segment_sum(
        weights.reshape(-1), (indices + offsets).reshape(-1), num_segments=num_codebooks * codebook_size
    )
    return counts.reshape(num_codebooks, codebook_size)
