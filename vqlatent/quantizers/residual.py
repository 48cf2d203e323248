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

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.quantizers import base, ema, estimators, residual_scalar, search, statistics

Array = jax.Array


class ResidualVQ(base.EMAQuantizer):
    """Residual VQ with ``num_stages`` EMA codebooks of ``num_embeddings`` codes.

    ``encoding_indices`` has shape ``inputs.shape[:-1] + (num_stages,)`` (the
    stage on the trailing axis) and ``lookup`` inverts it (sums the stages'
    codes); ``lookup(indices[..., :s])`` is *not* defined, use
    `stage_codes` for partial reconstructions. ``perplexity`` is the mean of
    the stages' perplexities.

    State (collection ``'vq_ema'``): the EMA arrays of
    `ema.init_ema_state` with a leading stage axis (``codebook``
    ``(S, K, D)``, ...), or without it when ``shared_codebook``.

    Attributes:
      num_stages: number of quantisers S (>= 1).
      num_embeddings: codes per stage K.
      embedding_dim: D.
      shared_codebook: one codebook for all stages.
      commitment_cost (applied to the sum of the stages' commitment terms), decay, epsilon,
        chunk_size, dtype, gradient_estimator, dead_code_threshold, kmeans_init,
        kmeans_iterations (per stage), argmin_form, distance_precision, ema_statistics: the EMA
        quantisers' shared keyword-only fields (`base.EMAQuantizer`).
      quantize_dropout: in training, only the first ``n ~ U{1..S}`` stages make
        ``quantize`` and the commitment loss (SoundStream section 3.3; the
        'quantizer' RNG); the EMA still updates every stage from its
        residuals. Adds ``stages_used``. At evaluation all stages are used.
    """

    num_stages: int
    num_embeddings: int
    embedding_dim: int
    shared_codebook: bool = False
    quantize_dropout: bool = False

    def __post_init__(self):
        base.validate_int_at_least_one("num_stages", self.num_stages)
        base.validate_int_at_least_one("num_embeddings", self.num_embeddings)
        base.validate_int_at_least_one("embedding_dim", self.embedding_dim)
        search.validate_chunk_size(self.chunk_size)
        base.validate_commitment_cost(self.commitment_cost)
        base.validate_bool("shared_codebook", self.shared_codebook)
        estimators.validate_gradient_estimator(self.gradient_estimator)
        base.validate_ema_fields(self)
        base.validate_hot_paths(self)
        residual_scalar.validate_dropout(self.quantize_dropout, self.num_stages)
        super().__post_init__()

    @nn.nowrap
    def random_features(self) -> list[str]:
        features = super().random_features()
        return features + ["quantize_dropout=True"] if self.quantize_dropout else features

    @property
    def num_codebooks(self) -> int:
        """Index streams per position: the stages (trailing axis of indices)."""
        return self.num_stages

    def setup(self):
        leading = () if self.shared_codebook else (self.num_stages,)
        self.ema = self.declare_ema_variables(leading, self.num_embeddings, self.embedding_dim)

    def _stage_codebook(self, codebooks: Array, stage: int) -> Array:
        return codebooks if self.shared_codebook else codebooks[stage]

    def _kmeans_codebooks(self, flat_x: Array, keys: Array, flat_mask: Array | None) -> Array:
        """Stage-by-stage k-means on the residuals of the stages before."""
        if self.shared_codebook:
            return self.kmeans_codebook(flat_x, self.num_embeddings, keys[0], flat_mask)
        codebooks = []
        residual = flat_x
        for stage in range(self.num_stages):
            codebook = self.kmeans_codebook(residual, self.num_embeddings, keys[stage], flat_mask)
            indices = self.nearest(residual, codebook)
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
        self.check_inputs(inputs)
        batch_shape = inputs.shape[:-1]
        flat_mask = self.flatten_mask(batch_shape, mask)
        update = self.should_update(train)
        flat_x = inputs.astype(jnp.float32).reshape(-1, self.embedding_dim)
        flat_x_const = jax.lax.stop_gradient(flat_x)
        num_keys = 1 if self.shared_codebook else self.num_stages
        kmeans_keys = restart_keys = None
        if update and self.needs_rng():
            kmeans_key, restart_key = jax.random.split(self.quantizer_key())
            kmeans_keys = jax.random.split(kmeans_key, num_keys)
            restart_keys = jax.random.split(restart_key, num_keys)
        if update and self.kmeans_init:
            self.maybe_kmeans_init(lambda: self._kmeans_codebooks(flat_x_const, kmeans_keys, flat_mask))
        codebooks = jax.lax.stop_gradient(self.ema[ema.CODEBOOK].value)
        dropping = train and self.quantize_dropout and not self.is_initializing()
        used = residual_scalar.dropout_stage_mask(self.quantizer_key() if dropping else None, self.num_stages)

        residual = flat_x_const
        prefix = jnp.zeros_like(flat_x)
        output = jnp.zeros_like(flat_x)
        stage_inputs, stage_indices = [], []
        e_latent_loss = q_latent_loss = jnp.zeros((), jnp.float32)
        perplexities = []
        for stage in range(self.num_stages):
            codebook = self._stage_codebook(codebooks, stage)
            indices = self.nearest(residual, codebook)
            codes = jnp.take(codebook, indices, axis=0)
            # The stage input as a function of the encoder output (the codes of
            # earlier stages are constants), so each commitment term reaches it.
            losses = statistics.vq_losses(flat_x - prefix, codes, flat_mask)
            if self.quantize_dropout:  # Only the stages in use make z_q, so only they commit.
                losses = {key: used[stage] * value for key, value in losses.items()}
                output = output + used[stage] * codes
            e_latent_loss += losses["e_latent_loss"]
            q_latent_loss += losses["q_latent_loss"]
            perplexities.append(statistics.perplexity(indices, self.num_embeddings, flat_mask))
            stage_inputs.append(residual)
            stage_indices.append(indices)
            residual = residual - codes
            prefix = prefix + codes

        output_dtype = self.output_dtype(inputs)
        quantize = estimators.estimate(
            self.gradient_estimator,
            inputs.astype(output_dtype),
            (output if self.quantize_dropout else prefix).reshape(inputs.shape),
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
            num_dead = self.dead_code_count(stacked=not self.shared_codebook)
        if self.dead_code_threshold > 0:
            outputs["dead_codes"] = num_dead
        if self.quantize_dropout:
            outputs["stages_used"] = jnp.sum(used)
        return outputs

    def _update(self, stage_inputs, stage_indices, restart_keys, flat_mask) -> Array:
        state = self.read_ema_state()
        if self.shared_codebook:
            mask = None if flat_mask is None else jnp.tile(flat_mask, self.num_stages)
            state, num_dead = self.ema_step(
                state,
                jnp.concatenate(stage_inputs),
                jnp.concatenate(stage_indices),
                None if restart_keys is None else restart_keys[0],
                self.num_embeddings,
                mask,
            )
            self.write_ema_state(state)
            return num_dead
        new_states, num_dead = [], jnp.zeros((), jnp.float32)
        for stage in range(self.num_stages):
            stage_state = {k: v[stage] for k, v in state.items()}
            stage_state, stage_dead = self.ema_step(
                stage_state,
                stage_inputs[stage],
                stage_indices[stage],
                None if restart_keys is None else restart_keys[stage],
                self.num_embeddings,
                flat_mask,
            )
            new_states.append(stage_state)
            num_dead = num_dead + stage_dead
        self.write_ema_state({k: jnp.stack([s[k] for s in new_states]) for k in state})
        return num_dead

    def stage_codes(self, indices: Array) -> Array:
        """``(..., S)`` indices -> the stages' codes ``(..., S, D)`` (float32)."""
        indices = base.check_trailing_indices(indices, self.num_stages, "ResidualVQ", "stages")
        codebooks = self.ema[ema.CODEBOOK].value
        if self.shared_codebook:
            return jnp.take(codebooks, indices, axis=0)
        return jnp.stack(
            [jnp.take(codebooks[s], indices[..., s], axis=0) for s in range(self.num_stages)], axis=-2
        )

    def lookup(self, indices: Array, num_stages: int | None = None) -> Array:
        """``(..., S)`` indices -> ``sum_{s < num_stages} e^s_{k_s}`` (all stages by default), ``(..., D)``."""
        stage_codes = self.stage_codes(indices)
        if num_stages is not None:
            stage_codes = stage_codes[..., :num_stages, :]
        vectors = jnp.sum(stage_codes, axis=-2)
        return vectors if self.dtype is None else vectors.astype(self.dtype)
