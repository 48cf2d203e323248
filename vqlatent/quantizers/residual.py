"""Residual vector quantisation (RVQ).

Several EMA vector quantisers in sequence, each quantising what the previous
ones left over (Juang & Gray 1982; as used in SoundStream, Zeghidour et al.
2021, algorithm 1, and in RQ-VAE, Lee et al. 2022)::

  r_0 = z_e(x);   k_s = argmin_j |r_{s-1} - e^s_j|;   r_s = r_{s-1} - e^s_{k_s}
  z_q(x) = sum_{s=1..S} e^s_{k_s}

With ``S`` stages of ``K`` codes a position carries ``S log2 K`` bits; the
error ``|r_s|`` shrinks with each stage. The commitment loss is the sum over
stages of eq. (3)'s commitment term on each stage's input,
``sum_s mean |r_{s-1} - sg[e^s_{k_s}]|^2`` (as SoundStream), where
``r_{s-1} = z_e - sum_{j<s} sg[e^j]`` so every term reaches the encoder. The
decoder's gradient reaches the encoder through the chosen estimator applied to
the sum ``z_q``.

Each stage's codebook is EMA-updated (appendix A.1 of van den Oord et al.
2017) from its own residuals; with ``shared_codebook=True`` all stages use one
codebook, updated once per step from the residuals of all stages. k-means
initialisation runs stage after stage on the first batch (stage ``s`` on the
residuals left by the initialised stages before it); dead-code restarts draw
each stage's new codes from that stage's residuals.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.quantizers import codebook_ops, core, ema_codebook, estimators
from vqlatent.quantizers import vector_quantizer as vq_lib

Array = jax.Array


class ResidualVQ(nn.Module):
    """Residual VQ with ``num_stages`` EMA codebooks of ``num_embeddings`` codes.

    ``encoding_indices`` has shape ``inputs.shape[:-1] + (num_stages,)`` (the
    stage on the trailing axis) and ``lookup`` inverts it (sums the stages'
    codes); ``lookup(indices[..., :s])`` is *not* defined, use
    `stage_codes` for partial reconstructions. ``perplexity`` is the mean of
    the stages' perplexities.

    State (collection ``'vq_ema'``): the EMA arrays of
    `core.init_ema_state` with a leading stage axis (``codebook``
    ``(S, K, D)``, ...), or without it when ``shared_codebook``.

    Attributes:
      num_stages: number of quantisers S (>= 1).
      num_embeddings: codes per stage K.
      embedding_dim: D.
      commitment_cost: beta of eq. (3), applied to the sum of the stages'
        commitment terms.
      shared_codebook: one codebook for all stages.
      decay, epsilon: EMA decay and Laplace smoothing.
      chunk_size: see `VectorQuantizer`.
      dtype: dtype of ``quantize`` (None: the inputs').
      gradient_estimator: ``'straight_through'`` or ``'rotation_trick'``.
      dead_code_threshold, kmeans_init, kmeans_iterations: see
        `VectorQuantizerEMA` (per stage).
    """

    num_stages: int
    num_embeddings: int
    embedding_dim: int
    commitment_cost: float = 0.25
    shared_codebook: bool = False
    decay: float = 0.99
    epsilon: float = 1e-5
    chunk_size: int | None = None
    dtype: Any | None = None
    gradient_estimator: str = estimators.STRAIGHT_THROUGH
    dead_code_threshold: float = 0.0
    kmeans_init: bool = False
    kmeans_iterations: int = 10

    def __post_init__(self):
        vq_lib.validate_int_at_least_one("num_stages", self.num_stages)
        vq_lib.validate_int_at_least_one("num_embeddings", self.num_embeddings)
        vq_lib.validate_int_at_least_one("embedding_dim", self.embedding_dim)
        core.validate_chunk_size(self.chunk_size)
        vq_lib.validate_commitment_cost(self.commitment_cost)
        if not isinstance(self.shared_codebook, bool):
            raise ValueError(f"shared_codebook must be True or False, got {self.shared_codebook!r}.")
        estimators.validate_gradient_estimator(self.gradient_estimator)
        ema_codebook.validate_ema_fields(self)
        super().__post_init__()

    @property
    def num_codebooks(self) -> int:
        """Index streams per position: the stages (trailing axis of indices)."""
        return self.num_stages

    @property
    def codebook_size(self) -> int:
        return self.num_embeddings

    def setup(self):
        leading = () if self.shared_codebook else (self.num_stages,)
        self.ema = ema_codebook.declare_variables(
            self, leading, self.num_embeddings, self.embedding_dim, self.kmeans_init
        )

    def _stage_codebook(self, codebooks: Array, stage: int) -> Array:
        return codebooks if self.shared_codebook else codebooks[stage]

    def _kmeans_codebooks(self, flat_x: Array, keys: Array, flat_mask: Array | None) -> Array:
        """Stage-by-stage k-means on the residuals of the stages before."""
        if self.shared_codebook:
            return ema_codebook.kmeans_codebook(flat_x, self.num_embeddings, keys[0], self, flat_mask)
        codebooks = []
        residual = flat_x
        for stage in range(self.num_stages):
            codebook = ema_codebook.kmeans_codebook(
                residual, self.num_embeddings, keys[stage], self, flat_mask
            )
            indices, _ = core.nearest_code(residual, codebook, self.chunk_size)
            residual = residual - jnp.take(codebook, indices, axis=0)
            codebooks.append(codebook)
        return jnp.stack(codebooks)

    def __call__(self, inputs: Array, *, train: bool, mask: Array | None = None) -> dict[str, Array]:
        """Quantises ``inputs`` ``(..., D)``; EMA updates when ``train``.

        Returns the common quantiser dict: ``quantize``, ``loss`` (beta times
        ``e_latent_loss``), ``e_latent_loss`` / ``q_latent_loss`` (sums over
        stages), ``perplexity`` (mean over stages), ``encoding_indices``
        (``inputs.shape[:-1] + (S,)``), and ``dead_codes`` (summed over stages)
        when ``dead_code_threshold > 0``.
        """
        inputs = jnp.asarray(inputs)
        vq_lib.check_inputs(self, inputs)
        batch_shape = inputs.shape[:-1]
        flat_mask = vq_lib.flatten_mask(self, batch_shape, mask)
        update = ema_codebook.should_update(self, train)
        flat_x = inputs.astype(jnp.float32).reshape(-1, self.embedding_dim)
        flat_x_const = jax.lax.stop_gradient(flat_x)
        num_keys = 1 if self.shared_codebook else self.num_stages
        kmeans_keys = restart_keys = None
        if update and ema_codebook.needs_rng(self):
            kmeans_key, restart_key = jax.random.split(ema_codebook.quantizer_key(self))
            kmeans_keys = jax.random.split(kmeans_key, num_keys)
            restart_keys = jax.random.split(restart_key, num_keys)
        if update and self.kmeans_init:
            ema_codebook.maybe_kmeans_init(
                self.ema, lambda: self._kmeans_codebooks(flat_x_const, kmeans_keys, flat_mask)
            )
        codebooks = jax.lax.stop_gradient(self.ema[core.CODEBOOK].value)

        residual = flat_x_const
        prefix = jnp.zeros_like(flat_x)
        stage_inputs, stage_indices = [], []
        e_latent_loss = q_latent_loss = jnp.zeros((), jnp.float32)
        perplexities = []
        for stage in range(self.num_stages):
            codebook = self._stage_codebook(codebooks, stage)
            indices, _ = core.nearest_code(residual, codebook, self.chunk_size)
            codes = jnp.take(codebook, indices, axis=0)
            # The stage input as a function of the encoder output (the codes of
            # earlier stages are constants), so each commitment term reaches it.
            losses = core.vq_losses(flat_x - prefix, codes, flat_mask)
            e_latent_loss += losses["e_latent_loss"]
            q_latent_loss += losses["q_latent_loss"]
            perplexities.append(core.perplexity(indices, self.num_embeddings, flat_mask))
            stage_inputs.append(residual)
            stage_indices.append(indices)
            residual = residual - codes
            prefix = prefix + codes

        output_dtype = self.dtype if self.dtype is not None else inputs.dtype
        quantize = estimators.estimate(
            self.gradient_estimator, inputs.astype(output_dtype), prefix.reshape(inputs.shape)
        )
        outputs = {
            "quantize": quantize,
            "loss": self.commitment_cost * e_latent_loss,
            "e_latent_loss": e_latent_loss,
            "q_latent_loss": q_latent_loss,
            "perplexity": jnp.mean(jnp.stack(perplexities)),
            "encoding_indices": jnp.stack(stage_indices, axis=-1).reshape(batch_shape + (self.num_stages,)),
        }
        if update:
            num_dead = self._update(stage_inputs, stage_indices, restart_keys, flat_mask)
        elif self.dead_code_threshold > 0:
            state = ema_codebook.read_state(self.ema)
            usage = (
                codebook_ops.ema_usage(state, self.decay)
                if self.shared_codebook
                else jax.vmap(codebook_ops.ema_usage, (0, None))(state, self.decay)
            )
            num_dead = jnp.sum((usage < self.dead_code_threshold).astype(jnp.float32))
        if self.dead_code_threshold > 0:
            outputs["dead_codes"] = num_dead
        return outputs

    def _update(self, stage_inputs, stage_indices, restart_keys, flat_mask) -> Array:
        state = ema_codebook.read_state(self.ema)
        if self.shared_codebook:
            mask = None if flat_mask is None else jnp.tile(flat_mask, self.num_stages)
            state, num_dead = ema_codebook.ema_step(
                state,
                jnp.concatenate(stage_inputs),
                jnp.concatenate(stage_indices),
                None if restart_keys is None else restart_keys[0],
                self,
                self.num_embeddings,
                mask,
            )
            ema_codebook.write_state(self.ema, state)
            return num_dead
        new_states, num_dead = [], jnp.zeros((), jnp.float32)
        for stage in range(self.num_stages):
            stage_state = {k: v[stage] for k, v in state.items()}
            stage_state, stage_dead = ema_codebook.ema_step(
                stage_state,
                stage_inputs[stage],
                stage_indices[stage],
                None if restart_keys is None else restart_keys[stage],
                self,
                self.num_embeddings,
                flat_mask,
            )
            new_states.append(stage_state)
            num_dead = num_dead + stage_dead
        ema_codebook.write_state(self.ema, {k: jnp.stack([s[k] for s in new_states]) for k in state})
        return num_dead

    def stage_codes(self, indices: Array) -> Array:
        """``(..., S)`` indices -> the stages' codes ``(..., S, D)`` (float32)."""
        indices = jnp.asarray(indices)
        if indices.ndim == 0 or indices.shape[-1] != self.num_stages:
            raise ValueError(
                f"ResidualVQ indices must end in the {self.num_stages} stages; got shape {indices.shape}."
            )
        codebooks = self.ema[core.CODEBOOK].value
        if self.shared_codebook:
            return jnp.take(codebooks, indices, axis=0)
        return jnp.stack(
            [jnp.take(codebooks[s], indices[..., s], axis=0) for s in range(self.num_stages)], axis=-2
        )

    def lookup(self, indices: Array) -> Array:
        """``(..., S)`` indices -> ``sum_s e^s_{k_s}``, shape ``(..., D)``."""
        vectors = jnp.sum(self.stage_codes(indices), axis=-2)
        return vectors if self.dtype is None else vectors.astype(self.dtype)
