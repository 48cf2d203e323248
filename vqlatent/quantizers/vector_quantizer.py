"""Linen vector-quantiser modules, thin wrappers around `core`.

`VectorQuantizer` learns its codebook by gradient descent on the codebook term
of eq. (3) of van den Oord et al. (2017); `VectorQuantizerEMA` replaces that
term by the exponential-moving-average update of appendix A.1. Both follow
Sonnet's/Haiku's ``VectorQuantizer``/``VectorQuantizerEMA`` and return the same
kind of output dict.

Options shared by both (all off by default, which is exactly Sonnet/Haiku):

* ``codebook_dim``: factorised codes (Yu et al. 2022, ViT-VQGAN, section 3.2):
  a learned linear map projects the ``D``-dim inputs to ``codebook_dim`` for
  the lookup and another maps the codes back to ``D``; the codebook, the
  distances and the losses live in the low-dimensional space.
* ``l2_normalize``: cosine codes (ViT-VQGAN): inputs (after the projection)
  and codes are normalised to unit length before the lookup.
* ``gradient_estimator``: ``'straight_through'`` (the paper) or
  ``'rotation_trick'`` (Fifty et al. 2024; `estimators`).

`VectorQuantizerEMA` also keeps its codebook alive (`codebook_ops`):

* ``kmeans_init``: on the first training call the codebook is replaced by the
  k-means centroids (``kmeans_iterations`` Lloyd steps) of that batch's
  inputs; a flag in the state and ``lax.cond`` keep the step one compiled
  function.
* ``dead_code_threshold``: after every EMA update, codes whose EMA usage (the
  debiased cluster size: inputs per batch) is below the threshold are
  re-initialised to random inputs of the current global batch.

Both draw from the flax RNG stream ``'quantizer'`` during training.

Layout: the codebook is stored as ``(K, D)`` (one code per row) so that
``codebook[indices]`` decodes a code map directly. Sonnet and Haiku store the
transpose, ``(D, K)``; transpose when porting checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.quantizers import codebook_ops, core, ema_codebook, estimators
from vqlatent.quantizers.ema_codebook import uniform_codebook_init

Array = jax.Array
Dtype = Any


def validate_int_at_least_one(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field_name} must be an integer >= 1, got {value!r}.")


def validate_commitment_cost(beta: Any) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"commitment_cost must be a finite number >= 0, got {beta!r}.")


def _validate_common_fields(module: Any) -> None:
    validate_int_at_least_one("num_embeddings", module.num_embeddings)
    validate_int_at_least_one("embedding_dim", module.embedding_dim)
    core.validate_chunk_size(module.chunk_size)
    validate_commitment_cost(module.commitment_cost)
    if module.codebook_dim is not None:
        validate_int_at_least_one("codebook_dim", module.codebook_dim)
    if not isinstance(module.l2_normalize, bool):
        raise ValueError(f"l2_normalize must be True or False, got {module.l2_normalize!r}.")
    estimators.validate_gradient_estimator(module.gradient_estimator)


def check_inputs(module: Any, inputs: Array) -> None:
    """Raises unless ``inputs`` is floating point with last axis embedding_dim."""
    if inputs.ndim < 1 or inputs.shape[-1] != module.embedding_dim:
        last = inputs.shape[-1] if inputs.ndim else None
        raise ValueError(
            f"{type(module).__name__}: inputs.shape[-1]={last} (inputs.shape="
            f"{inputs.shape}) does not match the config field "
            f"embedding_dim={module.embedding_dim}."
        )
    if not jnp.issubdtype(inputs.dtype, jnp.floating):
        raise ValueError(f"{type(module).__name__}: inputs must be floating point, got dtype {inputs.dtype}.")


def flatten_mask(module: Any, batch_shape: tuple[int, ...], mask: Array | None) -> Array | None:
    """A mask whose shape is a prefix of ``batch_shape`` -> flat ``(N,)``."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != batch_shape[: mask.ndim]:
        raise ValueError(
            f"{type(module).__name__}: mask.shape={mask.shape} must be a prefix of "
            f"inputs.shape[:-1]={batch_shape} (e.g. (B,) for padded examples)."
        )
    mask = mask.reshape(mask.shape + (1,) * (len(batch_shape) - mask.ndim))
    flat_mask = jnp.broadcast_to(mask.astype(jnp.float32), batch_shape)
    return flat_mask.reshape(-1)


def _flatten_inputs(module: Any, inputs: Array, mask: Array | None):
    """Validates inputs/mask; returns (flat (N, D) inputs, flat (N,) mask)."""
    inputs = jnp.asarray(inputs)
    check_inputs(module, inputs)
    flat_inputs = inputs.reshape(-1, module.embedding_dim)
    return flat_inputs, flatten_mask(module, inputs.shape[:-1], mask)


def _code_dim(module: Any) -> int:
    return module.embedding_dim if module.codebook_dim is None else module.codebook_dim


def _to_code_space(module: Any, inputs: Array) -> Array:
    """Inputs -> the space of the codes: projection, then l2 normalisation."""
    z = inputs
    if module.codebook_dim is not None:
        z = module.project_in(z)
    if module.l2_normalize:
        z = codebook_ops.l2_normalize(z)
    return z


def _from_code_space(module: Any, codes: Array, output_dtype: Dtype) -> Array:
    if module.codebook_dim is not None:
        codes = module.project_out(codes)
    return codes.astype(output_dtype)


def _output_dtype(module: Any, inputs: Array) -> Dtype:
    return module.dtype if module.dtype is not None else inputs.dtype


def _outputs(
    module: Any, inputs: Array, z: Array, codebook: Array, flat_mask: Array | None
) -> tuple[dict[str, Array], Array]:
    """Assignment, estimator output, losses and logging outputs.

    ``z`` is the input in the code space (``inputs`` itself unless projected or
    normalised) and ``codebook`` the ``(K, d)`` codes it is compared with.
    """
    num_codes = module.num_embeddings
    batch_shape = inputs.shape[:-1]
    flat_z = z.reshape(-1, z.shape[-1])
    outputs = {}
    if module.chunk_size is None:
        distances = core.squared_distances(flat_z, codebook)
        flat_indices = core.argmin_last_axis(distances)
        outputs["distances"] = distances.reshape(batch_shape + (num_codes,))
    else:
        flat_indices, _ = core.nearest_code(flat_z, jax.lax.stop_gradient(codebook), module.chunk_size)
    flat_quantized = jnp.take(codebook, flat_indices, axis=0)
    losses = core.vq_losses(flat_z, flat_quantized, flat_mask)

    output_dtype = _output_dtype(module, inputs)
    quantized = flat_quantized.reshape(z.shape)
    if module.codebook_dim is None:
        quantize = estimators.estimate(module.gradient_estimator, z.astype(output_dtype), quantized)
    else:
        quantize = _from_code_space(
            module, estimators.estimate(module.gradient_estimator, z, quantized), output_dtype
        )
    encoding_indices = flat_indices.reshape(batch_shape)
    outputs.update(
        quantize=quantize,
        perplexity=core.perplexity(flat_indices, num_codes, flat_mask),
        encoding_indices=encoding_indices,
        encodings=jax.nn.one_hot(encoding_indices, num_codes, dtype=jnp.float32),
        **losses,
    )
    return outputs, flat_indices


class VectorQuantizer(nn.Module):
    """VQ-VAE bottleneck with a gradient-trained codebook (eq. 1-3).

    The codebook is the ``'params'`` entry ``codebook`` of shape ``(K, d)``
    (Sonnet/Haiku: ``(D, K)``, transposed), initialised ``U(-sqrt(3/d),
    sqrt(3/d))``, with ``d = codebook_dim or embedding_dim``. The loss is
    eq. (3) without the reconstruction term::

      loss = q_latent_loss + commitment_cost * e_latent_loss
           = |sg[z_e] - e|^2 + beta |z_e - sg[e]|^2     (means over N*d)

    Attributes:
      num_embeddings: codebook size K.
      embedding_dim: input dimension D (the last axis of the inputs).
      commitment_cost: beta of eq. (3) (0.25 in the paper).
      chunk_size: if set, the nearest code is found scanning the codebook in
        chunks of this many codes (memory O(N*chunk_size)); the ``distances``
        output is then omitted.
      dtype: dtype of ``quantize``; None means the inputs' dtype. Distances,
        argmin and losses are float32 regardless.
      codebook_dim: if set, factorised codes of this dimension (``project_in``
        / ``project_out`` Dense layers in ``'params'``).
      l2_normalize: cosine codes (unit-length inputs and codes).
      gradient_estimator: ``'straight_through'`` or ``'rotation_trick'``.
    """

    num_embeddings: int
    embedding_dim: int
    commitment_cost: float = 0.25
    chunk_size: int | None = None
    dtype: Dtype | None = None
    codebook_dim: int | None = None
    l2_normalize: bool = False
    gradient_estimator: str = estimators.STRAIGHT_THROUGH

    def __post_init__(self):
        _validate_common_fields(self)
        super().__post_init__()

    @property
    def num_codebooks(self) -> int:
        """Index streams per position (1: ``encoding_indices`` has no extra axis)."""
        return 1

    @property
    def codebook_size(self) -> int:
        return self.num_embeddings

    def setup(self):
        self.codebook = self.param(
            "codebook", uniform_codebook_init, (self.num_embeddings, _code_dim(self)), jnp.float32
        )
        if self.codebook_dim is not None:
            self.project_in = nn.Dense(self.codebook_dim, name="project_in")
            self.project_out = nn.Dense(self.embedding_dim, name="project_out")

    def codes(self) -> Array:
        """The ``(K, d)`` codes inputs are compared with (normalised if cosine)."""
        if self.l2_normalize:
            return codebook_ops.l2_normalize(self.codebook)
        return self.codebook

    def __call__(self, inputs: Array, *, train: bool, mask: Array | None = None) -> dict[str, Array]:
        """Quantises ``inputs`` of shape ``(..., D)``.

        Args:
          inputs: encoder outputs ``z_e(x)``, shape ``(..., D)``, any float dtype.
          train: unused (kept for a uniform quantizer interface).
          mask: optional weights with a shape that is a prefix of
            ``inputs.shape[:-1]`` (e.g. ``(B,)``); 0 marks padding, which is then
            excluded from the losses and the perplexity (its vectors are still
            quantised).

        Returns:
          Dict with ``quantize`` (inputs' shape, straight-through, ``dtype``),
          ``loss`` (float32 scalar), ``e_latent_loss``, ``q_latent_loss``,
          ``perplexity``, ``encoding_indices`` (int32, ``inputs.shape[:-1]``),
          ``encodings`` (float32 one-hot, ``inputs.shape[:-1] + (K,)``) and, when
          ``chunk_size`` is None, ``distances`` (float32, ``inputs.shape[:-1] +
          (K,)``). Sonnet returns ``encodings``/``distances`` flattened to
          ``(N, K)``. Under ``jit`` unused outputs (the one-hot) are never
          computed; outside ``jit`` they are, so with a large ``N * K`` jit the
          ``init`` (as the trainers do) or initialise on a small batch.
        """
        del train
        inputs = jnp.asarray(inputs)
        _, flat_mask = _flatten_inputs(self, inputs, mask)
        z = _to_code_space(self, inputs)
        outputs, _ = _outputs(self, inputs, z, self.codes(), flat_mask)
        outputs["loss"] = outputs["q_latent_loss"] + self.commitment_cost * outputs["e_latent_loss"]
        return outputs

    def lookup(self, indices: Array) -> Array:
        """Codes to vectors: ``codebook[indices]``, shape ``indices.shape + (D,)``.

        Out-of-range indices are clamped (``jnp.take`` semantics under jit).
        """
        vectors = jnp.take(self.codes(), jnp.asarray(indices), axis=0)
        if self.codebook_dim is not None:
            vectors = self.project_out(vectors)
        return vectors if self.dtype is None else vectors.astype(self.dtype)


class VectorQuantizerEMA(nn.Module):
    """VQ-VAE bottleneck with an EMA-updated codebook (appendix A.1).

    The codebook and its EMA statistics live in the variable collection
    ``'vq_ema'`` (never in ``'params'``, so optimisers never see them):
    ``codebook`` ``(K, d)``, ``ema_cluster_size_hidden`` ``(K,)``,
    ``ema_dw_hidden`` ``(K, d)``, the int32 update ``counter`` and, with
    ``kmeans_init``, the int32 flag ``kmeans_initialized``. The update
    (`core.ema_update`, Sonnet/Haiku ``VectorQuantizerEMA``) runs when
    ``train=True`` and ``'vq_ema'`` is mutable::

      out, updates = model.apply(variables, x, train=True, mutable=['vq_ema'],
                                 rngs={'quantizer': key})  # key: restarts only

    It is skipped during ``init``. ``quantize`` uses the codebook from before
    the update (after the k-means initialisation on the first step). The loss
    is only the commitment term, ``loss = commitment_cost * e_latent_loss``;
    ``q_latent_loss`` is returned for logging only.

    Under ``jax.jit`` with batch-sharded inputs (GSPMD) the EMA statistics,
    k-means and restarts use the global batch, so replicated state stays
    identical across devices (and equal to one device).

    Attributes:
      num_embeddings: codebook size K.
      embedding_dim: input dimension D.
      commitment_cost: beta of eq. (3).
      decay: EMA decay gamma in [0, 1).
      epsilon: Laplace smoothing of the cluster sizes (> 0).
      chunk_size: see `VectorQuantizer`.
      dtype: see `VectorQuantizer`.
      codebook_dim: see `VectorQuantizer` (the projections are ``'params'``,
        trained by the commitment loss and the decoder's gradient).
      l2_normalize: see `VectorQuantizer`; the EMA averages unit vectors and
        the codes are re-normalised when used.
      gradient_estimator: see `VectorQuantizer`.
      dead_code_threshold: restart codes used by fewer than this many inputs
        per batch (EMA); 0 disables restarts. Adds ``dead_codes`` (codes below
        the threshold, restarted when training) to the outputs.
      kmeans_init: initialise the codebook by k-means on the first training
        batch.
      kmeans_iterations: Lloyd iterations of that k-means.
    """

    num_embeddings: int
    embedding_dim: int
    commitment_cost: float = 0.25
    decay: float = 0.99
    epsilon: float = 1e-5
    chunk_size: int | None = None
    dtype: Dtype | None = None
    codebook_dim: int | None = None
    l2_normalize: bool = False
    gradient_estimator: str = estimators.STRAIGHT_THROUGH
    dead_code_threshold: float = 0.0
    kmeans_init: bool = False
    kmeans_iterations: int = 10

    def __post_init__(self):
        _validate_common_fields(self)
        ema_codebook.validate_ema_fields(self)
        super().__post_init__()

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def codebook_size(self) -> int:
        return self.num_embeddings

    def setup(self):
        self.ema = ema_codebook.declare_variables(
            self, (), self.num_embeddings, _code_dim(self), self.kmeans_init
        )
        if self.codebook_dim is not None:
            self.project_in = nn.Dense(self.codebook_dim, name="project_in")
            self.project_out = nn.Dense(self.embedding_dim, name="project_out")

    def codes(self) -> Array:
        """The ``(K, d)`` codes inputs are compared with (normalised if cosine)."""
        codebook = self.ema[core.CODEBOOK].value
        if self.l2_normalize:
            return codebook_ops.l2_normalize(codebook)
        return codebook

    def __call__(self, inputs: Array, *, train: bool, mask: Array | None = None) -> dict[str, Array]:
        """Quantises ``inputs`` and, in training, updates the codebook by EMA.

        Args:
          inputs: encoder outputs, shape ``(..., D)``, any float dtype.
          train: whether to apply the EMA update (requires
            ``mutable=['vq_ema']``, and ``rngs={'quantizer': key}`` when
            ``kmeans_init`` or ``dead_code_threshold`` is set).
          mask: optional weights with a shape that is a prefix of
            ``inputs.shape[:-1]``; masked vectors are excluded from the loss, the
            perplexity, the EMA statistics, k-means and restarts.

        Returns:
          The same dict as `VectorQuantizer.__call__`, with
          ``loss = commitment_cost * e_latent_loss`` (plus ``dead_codes`` when
          ``dead_code_threshold > 0``).

        Raises:
          ValueError: on a dimension mismatch, if ``train=True`` while
            ``'vq_ema'`` is not mutable, or if a needed ``'quantizer'`` RNG is
            missing.
        """
        inputs = jnp.asarray(inputs)
        _, flat_mask = _flatten_inputs(self, inputs, mask)
        update = ema_codebook.should_update(self, train)
        z = _to_code_space(self, inputs)
        flat_z = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1])
        key = None
        if update and ema_codebook.needs_rng(self):
            key = ema_codebook.quantizer_key(self)
        if update and self.kmeans_init:
            kmeans_key, key = jax.random.split(key)
            ema_codebook.maybe_kmeans_init(
                self.ema,
                lambda: ema_codebook.kmeans_codebook(
                    flat_z, self.num_embeddings, kmeans_key, self, flat_mask, spherical=self.l2_normalize
                ),
            )
        codebook = jax.lax.stop_gradient(self.codes())
        outputs, flat_indices = _outputs(self, inputs, z, codebook, flat_mask)
        outputs["loss"] = self.commitment_cost * outputs["e_latent_loss"]
        if update:
            new_state, num_dead = ema_codebook.ema_step(
                ema_codebook.read_state(self.ema),
                flat_z,
                flat_indices,
                key,
                self,
                self.num_embeddings,
                flat_mask,
            )
            ema_codebook.write_state(self.ema, new_state)
        elif self.dead_code_threshold > 0:
            usage = codebook_ops.ema_usage(self._ema_state(), self.decay)
            num_dead = jnp.sum((usage < self.dead_code_threshold).astype(jnp.float32))
        if self.dead_code_threshold > 0:
            outputs["dead_codes"] = num_dead
        return outputs

    def _ema_state(self) -> dict[str, Array]:
        return ema_codebook.read_state(self.ema)

    def lookup(self, indices: Array) -> Array:
        """Codes to vectors: ``codes[indices]``, ``indices.shape + (D,)``."""
        vectors = jnp.take(self.codes(), jnp.asarray(indices), axis=0)
        if self.codebook_dim is not None:
            vectors = self.project_out(vectors)
        return vectors if self.dtype is None else vectors.astype(self.dtype)
