"""Product (multi-head) vector quantisation.

The ``D`` channels of each input are split into ``G`` groups of ``D/G``
channels and every group is quantised with its own codebook (Jegou et al.
2011, product quantisation; the "multi-head" / grouped VQ of e.g. wav2vec 2.0,
Baevski et al. 2020, section 2)::

  z_e = [z^1, ..., z^G],   k_g = argmin_j |z^g - e^g_j|,
  z_q = [e^1_{k_1}, ..., e^G_{k_G}]

so ``G`` codebooks of ``K`` codes address ``K^G`` combinations at the memory
and search cost of ``G K`` codes. The loss and the EMA update of each group
are those of `VectorQuantizerEMA` (appendix A.1 of van den Oord et al. 2017);
the commitment loss is the mean over all ``D`` channels (equal to the mean of
the groups' terms). All groups are handled at once with ``jax.vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vqlatent.quantizers import base, ema, estimators, search, statistics

Array = jax.Array


class ProductVQ(base.EMAQuantizer):
    """``num_groups`` EMA codebooks, one per slice of ``D / num_groups`` channels.

    ``encoding_indices`` has shape ``inputs.shape[:-1] + (G,)`` (the group on
    the trailing axis; ``lookup`` inverts it); ``perplexity`` is the mean of
    the groups' perplexities. State (collection ``'vq_ema'``): the EMA arrays
    with a leading group axis, ``codebook`` ``(G, K, D/G)``, ...

    Attributes:
      num_groups: G, must divide ``embedding_dim``.
      num_embeddings: codes per group K.
      embedding_dim: D.
      l2_normalize: cosine codes within each group.
      commitment_cost, decay, epsilon, chunk_size, dtype, gradient_estimator (the rotation acts
        on each group's sub-vector), dead_code_threshold, kmeans_init, kmeans_iterations (per
        group), argmin_form, distance_precision, ema_statistics: the EMA quantisers' shared
        keyword-only fields (`base.EMAQuantizer`).
    """

    num_groups: int
    num_embeddings: int
    embedding_dim: int
    l2_normalize: bool = False

    def __post_init__(self):
        base.validate_int_at_least_one("num_groups", self.num_groups)
        base.validate_int_at_least_one("num_embeddings", self.num_embeddings)
        base.validate_int_at_least_one("embedding_dim", self.embedding_dim)
        if self.embedding_dim % self.num_groups:
            raise ValueError(
                f"num_groups={self.num_groups} must divide embedding_dim="
                f"{self.embedding_dim} (each group gets embedding_dim / num_groups "
                f"channels)."
            )
        search.validate_chunk_size(self.chunk_size)
        base.validate_commitment_cost(self.commitment_cost)
        base.validate_bool("l2_normalize", self.l2_normalize)
        estimators.validate_gradient_estimator(self.gradient_estimator)
        base.validate_ema_fields(self)
        base.validate_hot_paths(self)
        super().__post_init__()

    @property
    def num_codebooks(self) -> int:
        """Index streams per position: the groups (trailing axis of indices)."""
        return self.num_groups

    @property
    def group_dim(self) -> int:
        return self.embedding_dim // self.num_groups

    def setup(self):
        self.ema = self.declare_ema_variables((self.num_groups,), self.num_embeddings, self.group_dim)

    def codes(self) -> Array:
        """``(G, K, D/G)`` codes (normalised if cosine)."""
        codebooks = self.ema[ema.CODEBOOK].value
        return search.l2_normalize(codebooks) if self.l2_normalize else codebooks

    def __call__(self, inputs: Array, *, train: bool, mask: Array | None = None) -> dict[str, Array]:
        """Quantises ``inputs`` ``(..., D)``; EMA updates when ``train``.

        Returns the common quantiser dict (``quantize``, ``loss``,
        ``e_latent_loss``, ``q_latent_loss``, ``perplexity``,
        ``encoding_indices`` of shape ``inputs.shape[:-1] + (G,)``), plus
        ``dead_codes`` (summed over groups) when ``dead_code_threshold > 0``.
        """
        inputs = jnp.asarray(inputs)
        self.check_inputs(inputs)
        batch_shape = inputs.shape[:-1]
        flat_mask = self.flatten_mask(batch_shape, mask)
        update = self.should_update(train)
        groups = inputs.reshape(batch_shape + (self.num_groups, self.group_dim))
        if self.l2_normalize:
            groups = search.l2_normalize(groups)
        flat_groups = groups.reshape(-1, self.num_groups, self.group_dim)
        # (G, N, D/G): the group axis first, for vmap.
        per_group = jax.lax.stop_gradient(jnp.swapaxes(flat_groups, 0, 1).astype(jnp.float32))
        kmeans_keys = restart_keys = None
        if update and self.needs_rng():
            kmeans_key, restart_key = jax.random.split(self.quantizer_key())
            kmeans_keys = jax.random.split(kmeans_key, self.num_groups)
            restart_keys = jax.random.split(restart_key, self.num_groups)
        if update and self.kmeans_init:
            kmeans_one = lambda x, key: self.kmeans_codebook(
                x, self.num_embeddings, key, flat_mask, spherical=self.l2_normalize
            )
            self.maybe_kmeans_init(lambda: jax.vmap(kmeans_one)(per_group, kmeans_keys))
        codes = jax.lax.stop_gradient(self.codes())

        indices = jax.vmap(self.nearest)(per_group, codes)  # (G, N)
        quantized = jax.vmap(lambda c, i: jnp.take(c, i, axis=0))(codes, indices)
        quantized = jnp.swapaxes(quantized, 0, 1)  # (N, G, D/G)
        row_mask = None if flat_mask is None else jnp.repeat(flat_mask, self.num_groups)
        losses = statistics.vq_losses(flat_groups, quantized, row_mask)
        output_dtype = self.output_dtype(inputs)
        quantize = estimators.estimate(
            self.gradient_estimator, groups.astype(output_dtype), quantized.reshape(groups.shape)
        ).reshape(inputs.shape)
        perplexities = jax.vmap(lambda i: statistics.perplexity(i, self.num_embeddings, flat_mask))(indices)
        outputs = {
            "quantize": quantize,
            "loss": self.commitment_cost * losses["e_latent_loss"],
            "perplexity": jnp.mean(perplexities),
            "encoding_indices": jnp.swapaxes(indices, 0, 1).reshape(batch_shape + (self.num_groups,)),
            **losses,
        }
        if update:
            state = self.read_ema_state()
            step = lambda s, x, i, key: self.ema_step(s, x, i, key, self.num_embeddings, flat_mask)
            if restart_keys is None:
                state, num_dead = jax.vmap(lambda s, x, i: step(s, x, i, None))(state, per_group, indices)
            else:
                state, num_dead = jax.vmap(step)(state, per_group, indices, restart_keys)
            self.write_ema_state(state)
            num_dead = jnp.sum(num_dead)
        elif self.dead_code_threshold > 0:
            num_dead = self.dead_code_count(stacked=True)
        if self.dead_code_threshold > 0:
            outputs["dead_codes"] = num_dead
        return outputs

    def lookup(self, indices: Array) -> Array:
        """``(..., G)`` indices -> the concatenated codes ``(..., D)``."""
        indices = base.check_trailing_indices(indices, self.num_groups, "ProductVQ", "groups")
        codes = self.codes()
        vectors = jnp.stack(
            [jnp.take(codes[g], indices[..., g], axis=0) for g in range(self.num_groups)], axis=-2
        )
        vectors = vectors.reshape(indices.shape[:-1] + (self.embedding_dim,))
        return vectors if self.dtype is None else vectors.astype(self.dtype)
