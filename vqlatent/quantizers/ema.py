"""EMA codebooks as pure functions (no Flax): the update, k-means initialisation, dead-code restarts.

* `ema_update`: the exponential-moving-average codebook update of appendix A.1 of van den Oord et
  al. (2017), eq. (6)-(8), with the zero-debiasing and Laplace smoothing of Sonnet's / Haiku's
  ``VectorQuantizerEMA``.
* `kmeans`: a few Lloyd iterations on one batch to initialise a codebook (the "k-means
  initialisation" of Dhariwal et al. 2020, Jukebox, and Zeghidour et al. 2021, SoundStream
  section 3.2).
* `ema_usage` / `restart_dead_codes`: the expected number of inputs a code receives per batch (the
  debiased cluster size ``N_hat``) and the re-initialisation of codes whose usage fell below a
  threshold to random encoder outputs of the current batch (Jukebox appendix A / SoundStream:
  "codebook entries that are unused for several batches are replaced by random input vectors").

The EMA statistics ``n = sum_n onehot_n`` and ``dw = sum_n onehot_n x_n`` have two forms (config
field ``ema_statistics``, ``'auto'`` resolved per backend by `vqlatent.backend.resolve`):
``'segment_sum'`` (a scatter-add, no ``(N, K)`` matrix; fastest on the CPU and for large ``K``) and
``'one_hot'`` (``onehot^T x`` as one full-precision matmul, which GPUs and TPUs run on their matrix
units instead of serialising atomic adds; chosen by ``'auto'`` there for ``K <= 4096``
(`backend.ONE_HOT_MAX_CODES`), beyond which
the ``(N, K)`` one-hot costs more memory traffic than the scatter). Both are float32 whatever the
input dtype and give the same counts; ``dw`` agrees to float32 rounding (summation order).

Everything works on ``(N, D)`` rows and ``(K, D)`` codebooks, with an optional ``(N,)`` mask (1 real,
0 padding). Under ``jax.jit`` with a sharded batch the sums, ``top_k`` and random draws are over the
global batch and give the same result as on one device (``jax_threefry_partitionable``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from vqlatent import backend
from vqlatent.quantizers import search, statistics

Array = jax.Array
AxisName = Any

# Keys of the EMA state (the variable names of the 'vq_ema' collection).
CODEBOOK = "codebook"
EMA_CLUSTER_SIZE_HIDDEN = "ema_cluster_size_hidden"
EMA_DW_HIDDEN = "ema_dw_hidden"
COUNTER = "counter"
EMA_STATE_KEYS = (CODEBOOK, EMA_CLUSTER_SIZE_HIDDEN, EMA_DW_HIDDEN, COUNTER)

# The forms of the statistics; the per-backend default and the size guard are in `vqlatent.backend.CHOICES`.
EMA_STATISTICS_FORMS = backend.CHOICES["ema_statistics"].forms


def resolve_ema_statistics(value: str, num_codes: int) -> str:
    """``ema_statistics`` config value -> ``'segment_sum'`` or ``'one_hot'``."""
    return backend.resolve("quantizer.ema_statistics", value, num_codes=num_codes)


def cluster_statistics(
    x: Array, indices: Array, num_codes: int, weights: Array | None, form: str = "segment_sum"
) -> tuple[Array, Array]:
    """float32 ``(n, dw)``: ``n_k = sum_n w_n [k_n = k]`` ``(K,)`` and ``dw_k = sum_n w_n [k_n = k] x_n``."""
    x = x.astype(jnp.float32)
    weighted_x = x if weights is None else x * weights[:, None]
    if form == "segment_sum":
        return (
            statistics.code_counts(indices, num_codes, weights),
            jax.ops.segment_sum(weighted_x, indices, num_segments=num_codes),
        )
    if form != "one_hot":
        raise ValueError(f"Unknown ema_statistics form {form!r}; choose one of {list(EMA_STATISTICS_FORMS)}.")
    one_hot = jax.nn.one_hot(indices, num_codes, dtype=jnp.float32)  # (N, K)
    counts = jnp.sum(one_hot if weights is None else one_hot * weights[:, None], axis=0)
    # HIGHEST: the default precision would round x to bf16 (TPU) or TF32 (GPU) inside the matmul.
    dw = jnp.matmul(one_hot.T, weighted_x, precision=lax.Precision.HIGHEST)
    return counts, dw


def init_ema_state(codebook: Any) -> dict[str, Array]:
    """A fresh EMA state for a ``(K, D)`` ``codebook``: zero hidden states, counter 0.

    Each entry is its own freshly allocated array (no two share a buffer, which would break
    ``donate_argnums``).
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
    x: Any,
    encoding_indices: Any,
    *,
    decay: float,
    epsilon: float,
    num_codes: int,
    mask: Any | None = None,
    axis_name: AxisName | None = None,
    statistics_form: str = "segment_sum",
) -> dict[str, Array]:
    """One EMA codebook update, appendix A.1 (eq. 6-8), as in Sonnet/Haiku.

    With ``g = decay``, ``t`` the update count (1 on the first update), hidden states from zero::

      n     = sum_n onehot_n                    (K,)   cluster sizes, eq. (6)
      dw    = sum_n onehot_n x_n                (K, D) (Sonnet: x^T onehot, D x K)
      h_N   = g h_N + (1 - g) n;   N_hat = h_N / (1 - g^t)        (debiased)
      h_m   = g h_m + (1 - g) dw;  m_hat = h_m / (1 - g^t)        eq. (7)
      tot   = sum_k N_hat
      N_smooth = (N_hat + eps) / (tot + K eps) * tot              (Laplace)
      e_k   = m_hat_k / N_smooth_k                                eq. (8)

    ``n`` and ``dw`` are float32 (`cluster_statistics`, ``statistics_form``) whatever ``x``'s dtype.
    Only the hidden states, the counter and the new codebook are stored; look ``q`` up in the
    codebook *before* calling this. Under plain ``jax.jit`` with sharded ``x`` the sums are global;
    inside ``shard_map``/``pmap`` pass ``axis_name`` to ``psum`` them (the state is replicated).
    With ``mask``, masked inputs contribute nothing; if the (global) batch has no unmasked input the
    state is returned unchanged (the counter is not advanced).

    Args:
      ema_state: ``codebook`` (K, D), ``ema_cluster_size_hidden`` (K,), ``ema_dw_hidden`` (K, D),
        ``counter`` (int32 scalar).
      x: ``(N, D)`` encoder outputs (any float dtype; used in float32).
      encoding_indices: the ``N`` code indices of ``x`` (any shape).
      decay: EMA decay ``g`` in ``[0, 1)``.
      epsilon: Laplace smoothing constant (> 0).
      num_codes: codebook size ``K``.
      mask: optional ``(N,)`` weights (1 real, 0 padding).
      axis_name: optional mapped axis name to ``psum`` the statistics over.
      statistics_form: ``'segment_sum'`` or ``'one_hot'`` (`cluster_statistics`).

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
    weights = statistics.flatten_mask(mask, num_rows)
    cluster_size, dw = cluster_statistics(x, encoding_indices, num_codes, weights, statistics_form)
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


def _row_weights(mask: Any | None, num_rows: int) -> Array:
    if mask is None:
        return jnp.ones((num_rows,), jnp.float32)
    mask = jnp.asarray(mask, jnp.float32).reshape(-1)
    if mask.shape[0] != num_rows:
        raise ValueError(f"mask has {mask.shape[0]} entries for {num_rows} rows.")
    return mask


def sample_rows(key: Array, x: Any, num_samples: int, mask: Any | None = None) -> tuple[Array, Array]:
    """``num_samples`` random rows of ``x``, distinct when the batch allows.

    When ``N >= num_samples`` the rows are drawn without replacement among the unmasked ones
    (Gumbel top-k: ``top_k(g + log mask)``); otherwise with replacement (categorical over the
    unmasked rows). ``jax.random.choice(replace=False, p=mask/sum)`` draws the same way but shifts
    the scores by ``log p`` (which can merge near-tied Gumbel scores, so it is not the same draw) and
    cannot say which draws fell on zero-probability rows, which ``valid`` reports here.

    Returns:
      ``(rows, valid)``: float32 ``(num_samples, D)`` rows and a bool ``(num_samples,)`` that is
      False where no unmasked row was left to draw (those rows are meaningless).
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
    argmin_form: str = "two_level",
    precision: str = "highest",
) -> tuple[Array, Array]:
    """Lloyd's k-means on the rows of ``x``: ``num_codes`` centroids.

    Seeds are random distinct rows (`sample_rows`); each iteration assigns every row to its nearest
    centroid (`search.nearest_code`, chunked when ``chunk_size`` is set) and moves each centroid to
    the mean of its rows; a centroid that receives no row keeps its position. With
    ``spherical=True`` centroids are re-normalised after every step (spherical k-means, for cosine
    codebooks). One ``lax.fori_loop`` (one compiled loop body).

    Returns:
      ``(centroids, counts)``: float32 ``(K, D)`` centroids and the float32 ``(K,)`` number of rows
      assigned to each in the last iteration.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or (iterations < 1):
        raise ValueError(f"kmeans iterations must be an integer >= 1, got {iterations!r}.")
    search.validate_chunk_size(chunk_size)
    x = jnp.asarray(x).astype(jnp.float32)
    num_rows = x.shape[0]
    weights = _row_weights(mask, num_rows)
    weighted_x = x * weights[:, None]
    seeds, _ = sample_rows(key, x, num_codes, weights)
    if spherical:
        seeds = search.l2_normalize(seeds)

    def lloyd_step(_, carry):
        centroids, _ = carry
        indices, _ = search.nearest_code(
            x, centroids, chunk_size, argmin_form=argmin_form, precision=precision
        )
        counts = jax.ops.segment_sum(weights, indices, num_segments=num_codes)
        sums = jax.ops.segment_sum(weighted_x, indices, num_segments=num_codes)
        moved = sums / jnp.maximum(counts, 1.0)[:, None]
        if spherical:
            moved = search.l2_normalize(moved)
        return jnp.where(counts[:, None] > 0, moved, centroids), counts

    return lax.fori_loop(0, iterations, lloyd_step, (seeds, jnp.zeros((num_codes,), jnp.float32)))


def ema_usage(ema_state: Mapping[str, Array], decay: float) -> Array:
    """Debiased EMA cluster sizes ``N_hat = h_N / (1 - g^t)``, ``(K,)``; zero before the first update.

    The expected number of (unmasked) inputs the code receives per batch (eq. 6 averaged by the EMA).
    """
    counter = ema_state[COUNTER].astype(jnp.float32)
    debias = 1.0 - jnp.power(jnp.asarray(decay, jnp.float32), counter)
    hidden = ema_state[EMA_CLUSTER_SIZE_HIDDEN]
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

    A code ``k`` is dead when ``N_hat_k < threshold`` (`ema_usage`). Each dead code is replaced by
    a different random unmasked row of ``x`` (this batch's encoder outputs; `sample_rows`), and its
    statistics are reset so the average matches the new code with usage exactly ``threshold``
    (``h_N = threshold (1 - g^t)``, ``h_m = e_new h_N``): it stays alive until the next update,
    which keeps it if it attracts inputs and restarts it again otherwise. Call after `ema_update`.
    Nothing happens before the first update or when the batch has no unmasked row.

    The draw (a ``top_k`` over the batch) and the gathers run under ``lax.cond`` only when some code
    is dead; otherwise the state passes through unchanged (the same values either way).

    Returns:
      ``(new_state, num_dead)``: the new EMA state and the float32 number of codes that were dead
      (and restarted) in this call.
    """
    num_codes = ema_state[CODEBOOK].shape[0]
    usage = ema_usage(ema_state, decay)
    counter = ema_state[COUNTER]
    dead = (usage < threshold) & (counter > 0)

    def restart(state):
        candidates, valid = sample_rows(key, x, num_codes, mask)
        restarted = dead & valid
        debias = 1.0 - jnp.power(jnp.asarray(decay, jnp.float32), counter.astype(jnp.float32))
        restarted_hidden = jnp.asarray(threshold, jnp.float32) * debias
        new_state = dict(state)
        new_state[CODEBOOK] = jnp.where(restarted[:, None], candidates, state[CODEBOOK])
        new_state[EMA_CLUSTER_SIZE_HIDDEN] = jnp.where(
            restarted, restarted_hidden, state[EMA_CLUSTER_SIZE_HIDDEN]
        )
        new_state[EMA_DW_HIDDEN] = jnp.where(
            restarted[:, None], candidates * restarted_hidden, state[EMA_DW_HIDDEN]
        )
        return new_state, jnp.sum(restarted.astype(jnp.float32))

    def keep(state):
        return dict(state), jnp.zeros((), jnp.float32)

    return lax.cond(jnp.any(dead), restart, keep, dict(ema_state))
