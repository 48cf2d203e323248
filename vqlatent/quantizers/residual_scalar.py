"""Residual FSQ and residual LFQ: the residual-VQ stage structure over codebook-free quantisers.

Residual quantisation (Juang & Gray 1982; SoundStream, Zeghidour et al. 2021, algorithm 1) with each
stage an implicit-codebook quantiser working on a finer scale (the residual FSQ/LFQ of
vector-quantize-pytorch; Mentzer et al. 2023 for FSQ, Yu et al. 2023 for LFQ)::

  r_0 = project_in(z_e);   q_s = c_s Q(r_{s-1} / c_s);   r_s = r_{s-1} - sg[q_s]
  z_q = project_out(sum_s q_s)

with stage scales ``c_s = (L - 1)^(-s)`` per channel for FSQ (the step of the previous stage's grid)
and ``c_s = 2^(-s)`` for LFQ. ``Q`` passes gradients straight through (FSQ's rounding, LFQ's sign),
so every stage reaches the encoder. LFQ stages add their commitment and entropy terms (`lfq`).

Quantize dropout (SoundStream section 3.3): in training, a random number of stages ``n ~ U{1..S}``
is drawn per call (the flax RNG stream ``'quantizer'``; one draw for the global batch) and only the
first ``n`` stages make ``z_q`` (and the loss); at evaluation all ``S`` stages are used. One model
then serves ``S`` bit rates: ``lookup(indices, num_stages=n)`` decodes from the first ``n`` stages.

``encoding_indices``: ``inputs.shape[:-1] + (S,)`` (every stage's index, also of dropped stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.quantizers import base, estimators, fsq, lfq, statistics

Array = jax.Array


def validate_dropout(quantize_dropout: Any, num_stages: int) -> None:
    base.validate_bool("quantize_dropout", quantize_dropout)
    if quantize_dropout and num_stages < 2:
        raise ValueError(
            f"quantize_dropout needs at least 2 stages to drop some (num_stages={num_stages}); "
            f"set num_stages >= 2 or quantize_dropout=False."
        )


def dropout_stage_mask(key: Array | None, num_stages: int) -> Array:
    """float32 ``(S,)`` with ones on the first ``n ~ U{1..S}`` stages (all ones without a key)."""
    if key is None:
        return jnp.ones((num_stages,), jnp.float32)
    used = jax.random.randint(key, (), 1, num_stages + 1)
    return (jnp.arange(num_stages) < used).astype(jnp.float32)


class _ResidualScalar(base.ProjectedQuantizer):
    """Shared stage loop; subclasses give ``code_dim``, ``stage_scales``, ``quantize_stage`` and
    ``stage_values`` (indices -> unscaled stage values)."""

    @nn.nowrap
    def random_features(self) -> list[str]:
        return ["quantize_dropout=True"] if self.quantize_dropout else []

    @property
    def num_codebooks(self) -> int:
        return self.num_stages

    def __call__(self, inputs: Array, *, train: bool, mask: Array | None = None) -> dict[str, Array]:
        """Quantises ``inputs`` ``(..., D)`` stage by stage; quantize dropout when training."""
        inputs, flat_mask, z = self.prepare(inputs, mask)
        batch_shape = inputs.shape[:-1]
        residual = z.astype(jnp.float32).reshape(-1, self.code_dim)
        dropping = train and self.quantize_dropout and not self.is_initializing()
        used = dropout_stage_mask(self.quantizer_key() if dropping else None, self.num_stages)
        total = jnp.zeros_like(residual)
        indices, perplexities, extra = [], [], {}
        loss = e_latent_loss = jnp.zeros((), jnp.float32)
        for stage, scale in enumerate(self.stage_scales()):
            values, stage_indices, stage_terms = self.quantize_stage(residual / scale, flat_mask)
            quantized = values * scale
            total = total + used[stage] * quantized
            residual = residual - jax.lax.stop_gradient(quantized)
            indices.append(stage_indices)
            perplexities.append(statistics.perplexity(stage_indices, self.codebook_size, flat_mask))
            loss = loss + used[stage] * stage_terms.pop("loss")
            e_latent_loss = e_latent_loss + used[stage] * stage_terms.pop("e_latent_loss")
            for key, value in stage_terms.items():
                extra[key] = extra.get(key, 0.0) + used[stage] * value
        quantized = self.from_codes(total)
        return {
            "quantize": quantized.reshape(batch_shape + (-1,)).astype(self.output_dtype(inputs)),
            "loss": loss,
            "e_latent_loss": e_latent_loss,
            "q_latent_loss": e_latent_loss,
            "perplexity": jnp.mean(jnp.stack(perplexities)),
            "encoding_indices": jnp.stack(indices, axis=-1).reshape(batch_shape + (self.num_stages,)),
            "stages_used": jnp.sum(used),
            **extra,
        }

    def lookup(self, indices: Array, num_stages: int | None = None) -> Array:
        """``(..., S)`` indices -> ``project_out(sum_{s < num_stages} q_s)`` (all stages by default)."""
        indices = jnp.asarray(indices)
        if indices.ndim == 0 or indices.shape[-1] != self.num_stages:
            raise ValueError(
                f"{type(self).__name__} indices must end in the {self.num_stages} stages; got shape {indices.shape}."
            )
        num_stages = self.num_stages if num_stages is None else num_stages
        total = 0.0
        for stage, scale in enumerate(self.stage_scales()[:num_stages]):
            total = total + self.stage_values(indices[..., stage]) * scale
        values = self.from_codes(total)
        return values if self.dtype is None else values.astype(self.dtype)


class ResidualFSQ(fsq.LevelsCodebook, _ResidualScalar):
    """Residual FSQ: ``num_stages`` FSQ stages with levels ``levels``, scales ``(L - 1)^(-s)``.

    Attributes:
      num_stages: S (>= 1; >= 2 with ``quantize_dropout``).
      levels: FSQ levels per channel (`fsq`), the same for every stage.
      embedding_dim: D; Dense projections to ``len(levels)`` channels when different.
      quantize_dropout: train with a random prefix of the stages (module docstring).
      dtype: dtype of ``quantize`` (None: the inputs').
    """

    num_stages: int
    levels: Sequence[int]
    embedding_dim: int
    quantize_dropout: bool = False
    dtype: Any | None = None

    def __post_init__(self):
        object.__setattr__(self, "levels", fsq.validate_levels(self.levels))
        base.validate_int_at_least_one("num_stages", self.num_stages)
        base.validate_int_at_least_one("embedding_dim", self.embedding_dim)
        validate_dropout(self.quantize_dropout, self.num_stages)
        super().__post_init__()

    def stage_scales(self) -> list[Array]:
        levels = jnp.asarray(self.levels, jnp.float32)
        return [(levels - 1.0) ** -stage for stage in range(self.num_stages)]

    def quantize_stage(self, residual: Array, flat_mask: Array | None):
        values = fsq.quantize(residual, self.levels)
        zero = jnp.zeros((), jnp.float32)
        return values, fsq.codes_to_indices(values, self.levels), {"loss": zero, "e_latent_loss": zero}

    def stage_values(self, indices: Array) -> Array:
        return fsq.indices_to_codes(indices, self.levels)


class ResidualLFQ(_ResidualScalar):
    """Residual LFQ: ``num_stages`` LFQ stages of ``log2(num_embeddings)`` bits, scales ``2^(-s)``.

    Attributes:
      num_stages, embedding_dim, quantize_dropout, dtype: see `ResidualFSQ`.
      num_embeddings: codes per stage, a power of two (`lfq.LFQ`).
      commitment_cost, entropy_weight, diversity_weight, entropy_temperature: per stage, see
        `lfq.LFQ` (the stages' terms are summed).
    """

    num_stages: int
    num_embeddings: int
    embedding_dim: int
    commitment_cost: float = 0.25
    entropy_weight: float = 0.1
    diversity_weight: float = 1.0
    entropy_temperature: float = 0.01
    quantize_dropout: bool = False
    dtype: Any | None = None

    def __post_init__(self):
        lfq.validate_lfq_bits(self.num_embeddings, None)
        base.validate_int_at_least_one("num_stages", self.num_stages)
        base.validate_int_at_least_one("embedding_dim", self.embedding_dim)
        base.validate_commitment_cost(self.commitment_cost)
        base.validate_non_negative("entropy_weight", self.entropy_weight)
        base.validate_non_negative("diversity_weight", self.diversity_weight)
        base.validate_positive("entropy_temperature", self.entropy_temperature)
        validate_dropout(self.quantize_dropout, self.num_stages)
        super().__post_init__()

    @property
    def code_dim(self) -> int:
        return self.num_embeddings.bit_length() - 1

    def stage_scales(self) -> list[float]:
        return [2.0**-stage for stage in range(self.num_stages)]

    def quantize_stage(self, residual: Array, flat_mask: Array | None):
        positive = residual > 0
        signs = jnp.where(positive, 1.0, -1.0).astype(jnp.float32)
        commitment = statistics.vq_losses(residual, signs, flat_mask)["e_latent_loss"]
        per_sample, batch = lfq.lfq_entropy(residual, 1.0, self.entropy_temperature, flat_mask)
        penalty = per_sample - self.diversity_weight * batch
        terms = {
            "loss": self.commitment_cost * commitment + self.entropy_weight * penalty,
            "e_latent_loss": commitment,
            "per_sample_entropy": per_sample,
            "batch_entropy": batch,
            "entropy_penalty": penalty,
        }
        return estimators.straight_through(residual, signs), lfq.bits_to_indices(positive), terms

    def stage_values(self, indices: Array) -> Array:
        return jnp.where(lfq.indices_to_bits(indices, self.code_dim), 1.0, -1.0).astype(jnp.float32)
