"""Single-codebook vector quantisers: `VectorQuantizer` and `VectorQuantizerEMA`.

`VectorQuantizer` learns its codebook by gradient descent on the codebook term of eq. (3) of van
den Oord et al. (2017); `VectorQuantizerEMA` replaces that term by the exponential-moving-average
update of appendix A.1 (`ema.ema_update`). Both follow Sonnet's/Haiku's ``VectorQuantizer`` /
``VectorQuantizerEMA`` and return the same kind of output dict.

Options shared by both (all off by default, which is exactly Sonnet/Haiku):

* ``codebook_dim``: factorised codes (Yu et al. 2022, ViT-VQGAN, section 3.2): a learned linear map
  projects the ``D``-dim inputs to ``codebook_dim`` for the lookup and another maps the codes back
  to ``D``; the codebook, the distances and the losses live in the low-dimensional space.
* ``l2_normalize``: cosine codes (ViT-VQGAN): inputs (after the projection) and codes are normalised
  to unit length before the lookup.
* ``gradient_estimator``: ``'straight_through'`` (the paper) or ``'rotation_trick'`` (Fifty et al.
  2024; `estimators`).
* ``argmin_form``, ``distance_precision`` (and ``ema_statistics`` for EMA): the per-backend hot
  paths (`search`, `ema`); ``'auto'`` picks the backend's default, every form gives the same codes.

`VectorQuantizerEMA` also keeps its codebook alive (`ema`): ``kmeans_init`` replaces the codebook by
the k-means centroids of the first training batch (a flag in the state and ``lax.cond`` keep the
step one compiled function); ``dead_code_threshold`` re-initialises, after every EMA update, codes
whose EMA usage (inputs per batch) is below the threshold to random inputs of the current global
batch. Both draw from the flax RNG stream ``'quantizer'``.

Layout: the codebook is stored as ``(K, D)`` (one code per row) so ``codebook[indices]`` decodes a
code map directly. Sonnet and Haiku store the transpose, ``(D, K)``; transpose when porting.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.quantizers import base, ema, estimators, search, statistics

Array = jax.Array
Dtype = Any


class CodebookVQ(base.Quantizer):
    """What `VectorQuantizer` and `VectorQuantizerEMA` share: the code space, the outputs, lookup."""

    @nn.nowrap
    def validate_codebook_fields(self) -> None:
        base.validate_int_at_least_one("num_embeddings", self.num_embeddings)
        base.validate_int_at_least_one("embedding_dim", self.embedding_dim)
        search.validate_chunk_size(self.chunk_size)
        base.validate_commitment_cost(self.commitment_cost)
        if self.codebook_dim is not None:
            base.validate_int_at_least_one("codebook_dim", self.codebook_dim)
        base.validate_bool("l2_normalize", self.l2_normalize)
        estimators.validate_gradient_estimator(self.gradient_estimator)
        base.validate_hot_paths(self)
        if self.stochastic_temperature is not None:
            base.validate_positive("stochastic_temperature (None: argmin)", self.stochastic_temperature)
        base.validate_non_negative("entropy_weight", self.entropy_weight)
        base.validate_positive("entropy_temperature", self.entropy_temperature)
        if self.chunk_size is not None and (
            self.stochastic_temperature is not None or self.entropy_weight > 0
        ):
            raise ValueError(
                f"{type(self).__name__}: stochastic_temperature and entropy_weight need the full (N, K) "
                f"distances; unset chunk_size (got {self.chunk_size}) to use them."
            )

    @nn.nowrap
    def random_features(self) -> list[str]:
        features = super().random_features()
        if self.stochastic_temperature is not None:
            features.append(f"stochastic_temperature={self.stochastic_temperature}")
        return features

    @property
    def code_dim(self) -> int:
        return self.embedding_dim if self.codebook_dim is None else self.codebook_dim

    def setup_projections(self) -> None:
        if self.codebook_dim is not None:
            self.project_in = nn.Dense(self.codebook_dim, name="project_in")
            self.project_out = nn.Dense(self.embedding_dim, name="project_out")

    def to_code_space(self, inputs: Array) -> Array:
        """Inputs -> the space of the codes: projection, then l2 normalisation."""
        z = inputs
        if self.codebook_dim is not None:
            z = self.project_in(z)
        if self.l2_normalize:
            z = search.l2_normalize(z)
        return z

    def code_outputs(
        self, inputs: Array, z: Array, codebook: Array, flat_mask: Array | None, sample_key: Array | None
    ) -> tuple[dict[str, Array], Array]:
        """Assignment (eq. 2), estimator output, the eq. (3) terms and the logging outputs.

        ``z`` is the input in the code space and ``codebook`` the ``(K, d)`` codes it is compared
        with. With ``sample_key`` (training with ``stochastic_temperature``) the code is sampled from
        ``softmax(-d_nk / T)`` instead of the argmin. With ``entropy_weight`` the entropy terms of
        ``softmax(-d_nk / tau)`` are added (`statistics.entropy_terms`). Returns the outputs (``loss``
        holds only the weighted entropy penalty) and the flat ``(N,)`` indices.
        """
        num_codes = self.num_embeddings
        batch_shape = inputs.shape[:-1]
        flat_z = z.reshape(-1, z.shape[-1])
        outputs = {}
        if self.chunk_size is None:
            precision = search.resolve_distance_precision(self.distance_precision)
            distances = search.squared_distances(flat_z, codebook, precision)
            if sample_key is None:
                flat_indices = search.argmin_last_axis(
                    distances, search.resolve_argmin_form(self.argmin_form)
                )
            else:  # Gumbel-max: argmax(-d / T + g); T -> 0 gives the argmin.
                logits = -jax.lax.stop_gradient(distances) / self.stochastic_temperature
                flat_indices = jax.random.categorical(sample_key, logits, axis=-1).astype(jnp.int32)
            outputs["distances"] = distances.reshape(batch_shape + (num_codes,))
            outputs["loss"] = jnp.zeros((), jnp.float32)
            if self.entropy_weight > 0:
                per_sample, batch = statistics.entropy_terms(-distances / self.entropy_temperature, flat_mask)
                outputs.update(
                    per_sample_entropy=per_sample, batch_entropy=batch, entropy_penalty=per_sample - batch
                )
                outputs["loss"] = self.entropy_weight * (per_sample - batch)
        else:
            flat_indices = self.nearest(flat_z, jax.lax.stop_gradient(codebook))
            outputs["loss"] = jnp.zeros((), jnp.float32)
        flat_quantized = jnp.take(codebook, flat_indices, axis=0)
        losses = statistics.vq_losses(flat_z, flat_quantized, flat_mask)

        output_dtype = self.output_dtype(inputs)
        quantized = flat_quantized.reshape(z.shape)
        if self.codebook_dim is None:
            quantize = estimators.estimate(self.gradient_estimator, z.astype(output_dtype), quantized)
        else:
            quantize = estimators.estimate(self.gradient_estimator, z, quantized)
            quantize = self.project_out(quantize).astype(output_dtype)
        encoding_indices = flat_indices.reshape(batch_shape)
        outputs.update(
            quantize=quantize,
            perplexity=statistics.perplexity(flat_indices, num_codes, flat_mask),
            encoding_indices=encoding_indices,
            encodings=jax.nn.one_hot(encoding_indices, num_codes, dtype=jnp.float32),
            **losses,
        )
        return outputs, flat_indices

    def lookup(self, indices: Array) -> Array:
        """Codes to vectors: ``codes[indices]``, shape ``indices.shape + (D,)``.

        Out-of-range indices are clamped (``jnp.take`` semantics under jit).
        """
        vectors = jnp.take(self.codes(), jnp.asarray(indices), axis=0)
        if self.codebook_dim is not None:
            vectors = self.project_out(vectors)
        return vectors if self.dtype is None else vectors.astype(self.dtype)


class VectorQuantizer(CodebookVQ):
    """VQ-VAE bottleneck with a gradient-trained codebook (eq. 1-3).

    The codebook is the ``'params'`` entry ``codebook`` of shape ``(K, d)`` (Sonnet/Haiku: ``(D,
    K)``, transposed), initialised ``U(-sqrt(3/d), sqrt(3/d))``, ``d = codebook_dim or
    embedding_dim``. The loss is eq. (3) without the reconstruction term::

      loss = q_latent_loss + commitment_cost * e_latent_loss
           = |sg[z_e] - e|^2 + beta |z_e - sg[e]|^2     (means over N*d)

    Attributes:
      num_embeddings: codebook size K.
      embedding_dim: input dimension D (the last axis of the inputs).
      commitment_cost: beta of eq. (3) (0.25 in the paper).
      chunk_size: if set, the nearest code is found scanning the codebook in chunks of this many
        codes (memory O(N*chunk_size)); the ``distances`` output is then omitted.
      dtype: dtype of ``quantize``; None means the inputs' dtype. Distances, argmin and losses are
        float32 regardless.
      codebook_dim: if set, factorised codes of this dimension (``project_in`` / ``project_out``
        Dense layers in ``'params'``).
      l2_normalize: cosine codes (unit-length inputs and codes).
      gradient_estimator: ``'straight_through'`` or ``'rotation_trick'``.
      argmin_form: ``'auto'``, ``'two_level'`` or ``'plain'`` (`search`).
      distance_precision: ``'auto'``, ``'highest'``, ``'high'`` or ``'default'`` (`search`).
    """

    num_embeddings: int
    embedding_dim: int
    commitment_cost: float = 0.25
    chunk_size: int | None = None
    dtype: Dtype | None = None
    codebook_dim: int | None = None
    l2_normalize: bool = False
    gradient_estimator: str = estimators.STRAIGHT_THROUGH
    argmin_form: str = "auto"
    distance_precision: str = "auto"
    stochastic_temperature: float | None = None
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01

    def __post_init__(self):
        self.validate_codebook_fields()
        super().__post_init__()

    def setup(self):
        self.codebook = self.param(
            "codebook", base.uniform_codebook_init, (self.num_embeddings, self.code_dim), jnp.float32
        )
        self.setup_projections()

    def codes(self) -> Array:
        """The ``(K, d)`` codes inputs are compared with (normalised if cosine)."""
        return search.l2_normalize(self.codebook) if self.l2_normalize else self.codebook

    def __call__(self, inputs: Array, *, train: bool, mask: Array | None = None) -> dict[str, Array]:
        """Quantises ``inputs`` of shape ``(..., D)``.

        Args:
          inputs: encoder outputs ``z_e(x)``, shape ``(..., D)``, any float dtype.
          train: samples the codes when ``stochastic_temperature`` is set (needs
            ``rngs={'quantizer': key}``); otherwise unused.
          mask: optional weights with a shape that is a prefix of ``inputs.shape[:-1]`` (e.g.
            ``(B,)``); 0 marks padding, excluded from the losses and the perplexity (its vectors
            are still quantised).

        Returns:
          Dict with ``quantize`` (inputs' shape, straight-through, ``dtype``), ``loss`` (float32
          scalar), ``e_latent_loss``, ``q_latent_loss``, ``perplexity``, ``encoding_indices``
          (int32, ``inputs.shape[:-1]``), ``encodings`` (float32 one-hot, ``inputs.shape[:-1] +
          (K,)``) and, when ``chunk_size`` is None, ``distances`` (float32, ``inputs.shape[:-1] +
          (K,)``). Sonnet returns ``encodings``/``distances`` flattened to ``(N, K)``. Under ``jit``
          unused outputs (the one-hot) are never computed; outside ``jit`` they are, so with a
          large ``N * K`` jit the ``init`` (as the trainers do) or initialise on a small batch.
        """
        inputs = jnp.asarray(inputs)
        self.check_inputs(inputs)
        flat_mask = self.flatten_mask(inputs.shape[:-1], mask)
        z = self.to_code_space(inputs)
        sample = train and self.needs_rng() and not self.is_initializing()
        sample_key = self.quantizer_key() if sample else None
        outputs, _ = self.code_outputs(inputs, z, self.codes(), flat_mask, sample_key)
        loss = outputs["q_latent_loss"] + self.commitment_cost * outputs["e_latent_loss"]
        outputs["loss"] = loss if self.entropy_weight == 0 else loss + outputs["loss"]
        return outputs


class VectorQuantizerEMA(CodebookVQ, base.EMAQuantizer):
    """VQ-VAE bottleneck with an EMA-updated codebook (appendix A.1).

    The codebook and its EMA statistics live in the variable collection ``'vq_ema'`` (never in
    ``'params'``, so optimisers never see them): ``codebook`` ``(K, d)``,
    ``ema_cluster_size_hidden`` ``(K,)``, ``ema_dw_hidden`` ``(K, d)``, the int32 update ``counter``
    and, with ``kmeans_init``, the int32 flag ``kmeans_initialized``. The update (`ema.ema_update`,
    Sonnet/Haiku ``VectorQuantizerEMA``) runs when ``train=True`` and ``'vq_ema'`` is mutable::

      out, updates = model.apply(variables, x, train=True, mutable=['vq_ema'],
                                 rngs={'quantizer': key})  # key: k-means / restarts only

    It is skipped during ``init``. ``quantize`` uses the codebook from before the update (after the
    k-means initialisation on the first step). The loss is only the commitment term, ``loss =
    commitment_cost * e_latent_loss``; ``q_latent_loss`` is returned for logging only. Under
    ``jax.jit`` with batch-sharded inputs (GSPMD) the EMA statistics, k-means and restarts use the
    global batch, so replicated state stays identical across devices (and equal to one device).

    Attributes:
      num_embeddings, embedding_dim, codebook_dim, stochastic_temperature, entropy_weight,
        entropy_temperature: see `VectorQuantizer` (the projections are ``'params'``, trained by
        the commitment loss and the decoder's gradient).
      l2_normalize: see `VectorQuantizer`; the EMA averages unit vectors and the codes are
        re-normalised when used.
      commitment_cost, decay, epsilon, chunk_size, dtype, gradient_estimator, dead_code_threshold
        (restarted when training), kmeans_init, kmeans_iterations, argmin_form, distance_precision,
        ema_statistics (``'auto'``, ``'segment_sum'`` or ``'one_hot'``): the EMA quantisers' shared
        keyword-only fields (`base.EMAQuantizer`).
    """

    num_embeddings: int
    embedding_dim: int
    codebook_dim: int | None = None
    l2_normalize: bool = False
    stochastic_temperature: float | None = None
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01

    def __post_init__(self):
        self.validate_codebook_fields()
        base.validate_ema_fields(self)
        super().__post_init__()

    def setup(self):
        self.ema = self.declare_ema_variables((), self.num_embeddings, self.code_dim)
        self.setup_projections()

    def codes(self) -> Array:
        """The ``(K, d)`` codes inputs are compared with (normalised if cosine)."""
        codebook = self.ema[ema.CODEBOOK].value
        return search.l2_normalize(codebook) if self.l2_normalize else codebook

    def __call__(self, inputs: Array, *, train: bool, mask: Array | None = None) -> dict[str, Array]:
        """Quantises ``inputs`` and, in training, updates the codebook by EMA.

        Args:
          inputs: encoder outputs, shape ``(..., D)``, any float dtype.
          train: whether to apply the EMA update (requires ``mutable=['vq_ema']``, and
            ``rngs={'quantizer': key}`` when ``kmeans_init`` or ``dead_code_threshold`` is set).
          mask: optional weights with a shape that is a prefix of ``inputs.shape[:-1]``; masked
            vectors are excluded from the loss, the perplexity, the EMA statistics, k-means and
            restarts.

        Returns:
          The same dict as `VectorQuantizer.__call__`, with ``loss = commitment_cost *
          e_latent_loss`` (plus ``dead_codes`` when ``dead_code_threshold > 0``).

        Raises:
          ValueError: on a dimension mismatch, if ``train=True`` while ``'vq_ema'`` is not mutable,
            or if a needed ``'quantizer'`` RNG is missing.
        """
        inputs = jnp.asarray(inputs)
        self.check_inputs(inputs)
        flat_mask = self.flatten_mask(inputs.shape[:-1], mask)
        update = self.should_update(train)
        z = self.to_code_space(inputs)
        flat_z = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1])
        key = self.quantizer_key() if update and self.needs_rng() else None
        if update and self.kmeans_init:
            kmeans_key, key = jax.random.split(key)
            self.maybe_kmeans_init(
                lambda: self.kmeans_codebook(
                    flat_z, self.num_embeddings, kmeans_key, flat_mask, spherical=self.l2_normalize
                )
            )
        sample_key = None
        if update and self.stochastic_temperature is not None:
            sample_key, key = jax.random.split(key)
        codebook = jax.lax.stop_gradient(self.codes())
        outputs, flat_indices = self.code_outputs(inputs, z, codebook, flat_mask, sample_key)
        loss = self.commitment_cost * outputs["e_latent_loss"]
        outputs["loss"] = loss if self.entropy_weight == 0 else loss + outputs["loss"]
        if update:
            new_state, num_dead = self.ema_step(
                self.read_ema_state(), flat_z, flat_indices, key, self.num_embeddings, flat_mask
            )
            self.write_ema_state(new_state)
        elif self.dead_code_threshold > 0:
            num_dead = self.dead_code_count(stacked=False)
        if self.dead_code_threshold > 0:
            outputs["dead_codes"] = num_dead
        return outputs
