"""Lookup-free quantisation (LFQ) and binary spherical quantisation (BSQ).

LFQ (Yu et al. 2023, "Language Model Beats Diffusion -- Tokenizer is Key to Visual Generation",
MAGVIT-v2, section 3.1): the codebook is the set of corners ``{-1, 1}^d`` of a ``d``-cube, so the
nearest code of ``z`` is found channel by channel without any lookup (eq. 3-4)::

  q(z)_i = sign(z_i) = +1 if z_i > 0 else -1,    Index(z) = sum_i 2^(d-1-i) [z_i > 0]

(``K = 2^d`` codes; channel 0 is the most significant bit). BSQ (Zhao et al. 2024, "Image and Video
Tokenization with Binary Spherical Quantization", section 3.2) first projects onto the unit sphere
and uses the corners of the cube inscribed in it: ``u = z / |z|``, ``q(u) = sign(u) / sqrt(d)``.
Both pass the decoder's gradient straight through (``z + sg[q - z]``).

The entropy penalty (MAGVIT-v2 eq. 5) keeps the codes used: with the soft assignment ``p(c|z) =
softmax_c(-|z - c|^2 / tau)`` over all ``2^d`` codes::

  L_entropy = E_z[H(p(c|z))] - gamma H(E_z[p(c|z)])

The distribution factorises over channels (``|z - c|^2`` is a sum over channels): with code values
``+-s`` (``s = 1`` for LFQ, ``1/sqrt(d)`` for BSQ) ``p(c_i = +s | z) = sigmoid(4 s z_i / tau)``. The
per-sample entropy is exactly the sum of the channels' binary entropies; the batch entropy is
computed exactly over the ``2^d`` codes (an ``(N, 2^d)`` matrix) for ``d <= EXACT_ENTROPY_MAX_BITS``
and, above that, approximated by the sum of the channels' binary entropies of the mean bit
probabilities (the factorised estimate of BSQ, eq. 9; an upper bound of the exact one). The means run
over the global batch: under ``jax.jit`` with a sharded batch the sums are global.

The loss is ``commitment_cost * |z - sg[q]|^2 + entropy_weight * L_entropy``. When
``embedding_dim != d``, Dense layers ``project_in`` / ``project_out`` map to and from the ``d`` bits.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from vqlatent.quantizers import base, estimators, statistics

Array = jax.Array

EXACT_ENTROPY_MAX_BITS = 12


def validate_lfq_bits(num_embeddings: Any, codebook_dim: Any) -> int:
    """The number of bits ``d = log2(num_embeddings)``, or a ValueError naming the bad value."""
    base.validate_int_at_least_one("num_embeddings", num_embeddings)
    bits = int(num_embeddings).bit_length() - 1
    if num_embeddings < 2 or 2**bits != num_embeddings:
        raise ValueError(
            f"LFQ/BSQ codes are the 2^d corners of a d-cube: num_embeddings must be a power of two >= 2, "
            f"got {num_embeddings} (e.g. 512 for 9 bits)."
        )
    if bits > 30:
        raise ValueError(f"LFQ/BSQ with {bits} bits has more codes than int32 indices can address.")
    if codebook_dim is not None and codebook_dim != bits:
        raise ValueError(
            f"LFQ/BSQ codebook_dim={codebook_dim!r} must be the number of bits log2(num_embeddings)="
            f"{bits} (one channel per bit); leave it unset (None) or set num_embeddings=2**{codebook_dim}."
        )
    return bits


def bits_to_indices(bits: Array) -> Array:
    """``(..., d)`` booleans (True: positive channel) -> int32 indices, channel 0 most significant."""
    d = bits.shape[-1]
    weights = jnp.asarray([2 ** (d - 1 - i) for i in range(d)], jnp.int32)
    return jnp.sum(bits.astype(jnp.int32) * weights, axis=-1).astype(jnp.int32)


def indices_to_bits(indices: Any, num_bits: int) -> Array:
    """int indices ``(...)`` -> booleans ``(..., d)`` (inverse of `bits_to_indices`)."""
    shifts = jnp.arange(num_bits - 1, -1, -1, dtype=jnp.int32)
    return (jnp.right_shift(jnp.asarray(indices, jnp.int32)[..., None], shifts) & 1).astype(bool)


def code_scale(num_bits: int, spherical: bool) -> float:
    """The code value ``s``: codes are ``+-s`` per channel (1 for LFQ, ``1/sqrt(d)`` for BSQ)."""
    return 1.0 / math.sqrt(num_bits) if spherical else 1.0


def lfq_entropy(z: Array, scale: float, temperature: float, mask: Array | None = None) -> tuple[Array, Array]:
    """``(per_sample_entropy, batch_entropy)`` of ``p(c|z) = softmax(-|z - c|^2 / tau)`` (module doc).

    ``z``: ``(N, d)`` float32 (after the projection / normalisation).
    """
    bit_logits = 4.0 * scale * z.astype(jnp.float32) / temperature  # log p(+s) - log p(-s), per channel.
    num_bits = z.shape[-1]
    if num_bits <= EXACT_ENTROPY_MAX_BITS:
        codes = indices_to_bits(jnp.arange(2**num_bits), num_bits).astype(jnp.float32)  # (C, d)
        log_plus, log_minus = jax.nn.log_sigmoid(bit_logits), jax.nn.log_sigmoid(-bit_logits)
        hi = jax.lax.Precision.HIGHEST
        logits = jnp.matmul(log_plus, codes.T, precision=hi) + jnp.matmul(
            log_minus, 1.0 - codes.T, precision=hi
        )
        return statistics.entropy_terms(logits, mask)
    # Factorised: the entropies of the d independent binary channels.
    two_way = jnp.stack([bit_logits, jnp.zeros_like(bit_logits)], axis=-1)  # (N, d, 2)
    per_sample = batch = jnp.zeros((), jnp.float32)
    for i in range(num_bits):
        h_sample, h_batch = statistics.entropy_terms(two_way[:, i], mask)
        per_sample, batch = per_sample + h_sample, batch + h_batch
    return per_sample, batch


class LFQ(base.ProjectedQuantizer):
    """Lookup-free quantisation (MAGVIT-v2); ``spherical=True`` is BSQ (registered as ``bsq``).

    Attributes:
      num_embeddings: K = 2^d codes (a power of two; d bits per position).
      embedding_dim: input dimension D; Dense projections to and from d when ``D != d``.
      codebook_dim: optional, must equal d (refused otherwise: LFQ has one channel per bit).
      commitment_cost: beta of ``beta |z - sg[q]|^2``.
      entropy_weight: weight of the entropy penalty (0.1 in MAGVIT-v2).
      diversity_weight: gamma, the weight of the batch entropy inside the penalty.
      entropy_temperature: tau of the soft assignment (> 0).
      spherical: BSQ: l2-normalise before the sign, codes ``+-1/sqrt(d)``.
      dtype: dtype of ``quantize`` (None: the inputs').

    Outputs: the common dict (``quantize``, ``loss``, ``e_latent_loss`` = ``q_latent_loss`` = the
    commitment mean square, ``perplexity``, ``encoding_indices`` in ``[0, K)``) plus
    ``per_sample_entropy``, ``batch_entropy`` and ``entropy_penalty``.
    """

    num_embeddings: int
    embedding_dim: int
    codebook_dim: int | None = None
    commitment_cost: float = 0.25
    entropy_weight: float = 0.1
    diversity_weight: float = 1.0
    entropy_temperature: float = 0.01
    spherical: bool = False
    dtype: Any | None = None

    def __post_init__(self):
        validate_lfq_bits(self.num_embeddings, self.codebook_dim)
        base.validate_int_at_least_one("embedding_dim", self.embedding_dim)
        base.validate_commitment_cost(self.commitment_cost)
        base.validate_non_negative("entropy_weight", self.entropy_weight)
        base.validate_non_negative("diversity_weight", self.diversity_weight)
        base.validate_positive("entropy_temperature", self.entropy_temperature)
        base.validate_bool("spherical", self.spherical)
        super().__post_init__()

    @property
    def num_bits(self) -> int:
        return self.num_embeddings.bit_length() - 1

    @property
    def code_dim(self) -> int:
        return self.num_bits

    def __call__(self, inputs: Array, *, train: bool, mask: Array | None = None) -> dict[str, Array]:
        """Quantises ``inputs`` ``(..., D)``; ``train`` is unused (no state, no randomness)."""
        del train
        inputs, flat_mask, z = self.prepare(inputs, mask)
        z = z.astype(jnp.float32)
        if self.spherical:
            z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        scale = code_scale(self.num_bits, self.spherical)
        positive = z > 0
        q = jnp.where(positive, scale, -scale).astype(jnp.float32)
        indices = bits_to_indices(positive)
        flat_z = z.reshape(-1, self.num_bits)
        losses = statistics.vq_losses(flat_z, q.reshape(flat_z.shape), flat_mask)
        per_sample, batch = lfq_entropy(flat_z, scale, self.entropy_temperature, flat_mask)
        penalty = per_sample - self.diversity_weight * batch
        quantized = estimators.straight_through(z, q)
        quantized = self.from_codes(quantized)
        return {
            "quantize": quantized.astype(self.output_dtype(inputs)),
            "loss": self.commitment_cost * losses["e_latent_loss"] + self.entropy_weight * penalty,
            "e_latent_loss": losses["e_latent_loss"],
            "q_latent_loss": losses["e_latent_loss"],
            "perplexity": statistics.perplexity(indices, self.num_embeddings, flat_mask),
            "encoding_indices": indices,
            "per_sample_entropy": per_sample,
            "batch_entropy": batch,
            "entropy_penalty": penalty,
        }

    def lookup(self, indices: Array) -> Array:
        """Indices -> vectors ``indices.shape + (D,)``: the bits' code values ``+-s``, projected."""
        scale = code_scale(self.num_bits, self.spherical)
        values = jnp.where(indices_to_bits(indices, self.num_bits), scale, -scale).astype(jnp.float32)
        values = self.from_codes(values)
        return values if self.dtype is None else values.astype(self.dtype)


class BSQ(LFQ):
    """Binary spherical quantisation (Zhao et al. 2024): `LFQ` with ``spherical=True``."""

    spherical: bool = True
