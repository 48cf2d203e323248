"""Linen vector-quantiser modules, thin wrappers around `core`.

`VectorQuantizer` learns its codebook by gradient descent on the codebook term
of eq. (3) of van den Oord et al. (2017); `VectorQuantizerEMA` replaces that
term by the exponential-moving-average update of appendix A.1. Both follow
Sonnet's/Haiku's ``VectorQuantizer``/``VectorQuantizerEMA`` and return the same
kind of output dict.

Layout: the codebook is stored as ``(K, D)`` (one code per row) so that
``codebook[indices]`` decodes a code map directly. Sonnet and Haiku store the
transpose, ``(D, K)``; transpose when porting checkpoints.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqlatent.quantizers import core

Array = jax.Array
Dtype = Any

EMA_COLLECTION = 'vq_ema'


def uniform_codebook_init(key: Array,
                          shape: tuple[int, int],
                          dtype: Dtype = jnp.float32) -> Array:
  """``U(-sqrt(3/D), sqrt(3/D))`` for a ``(K, D)`` codebook.

  The same distribution as Haiku's ``VarianceScaling(1.0, 'fan_in',
  'uniform')`` applied to its ``(D, K)`` embeddings (fan_in = D).
  """
  _, dim = shape
  limit = math.sqrt(3.0 / dim)
  return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)


def _validate_int_at_least_one(field_name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{field_name} must be an integer >= 1, got {value!r}.')


def _validate_common_fields(module: Any) -> None:
  _validate_int_at_least_one('num_embeddings', module.num_embeddings)
  _validate_int_at_least_one('embedding_dim', module.embedding_dim)
  core.validate_chunk_size(module.chunk_size)
  beta = module.commitment_cost
  if not (isinstance(beta, (int, float)) and math.isfinite(beta) and
          beta >= 0):
    raise ValueError(
        f'commitment_cost must be a finite number >= 0, got {beta!r}.')


def _flatten_inputs(module: Any, inputs: Array, mask: Optional[Array]):
  """Validates inputs/mask; returns (flat (N, D) inputs, flat (N,) mask)."""
  inputs = jnp.asarray(inputs)
  if inputs.ndim < 1 or inputs.shape[-1] != module.embedding_dim:
    last = inputs.shape[-1] if inputs.ndim else None
    raise ValueError(
        f'{type(module).__name__}: inputs.shape[-1]={last} (inputs.shape='
        f'{inputs.shape}) does not match the config field '
        f'embedding_dim={module.embedding_dim}.')
  if not jnp.issubdtype(inputs.dtype, jnp.floating):
    raise ValueError(
        f'{type(module).__name__}: inputs must be floating point, got dtype '
        f'{inputs.dtype}.')
  flat_inputs = inputs.reshape(-1, module.embedding_dim)
  if mask is None:
    return flat_inputs, None
  mask = jnp.asarray(mask)
  batch_shape = inputs.shape[:-1]
  if mask.shape != batch_shape[:mask.ndim]:
    raise ValueError(
        f'{type(module).__name__}: mask.shape={mask.shape} must be a prefix of '
        f'inputs.shape[:-1]={batch_shape} (e.g. (B,) for padded examples).')
  mask = mask.reshape(mask.shape + (1,) * (len(batch_shape) - mask.ndim))
  flat_mask = jnp.broadcast_to(mask.astype(jnp.float32), batch_shape)
  return flat_inputs, flat_mask.reshape(-1)


def _outputs(module: Any, inputs: Array, flat_inputs: Array, codebook: Array,
             flat_mask: Optional[Array]) -> tuple[dict[str, Array], Array]:
  """Assignment, straight-through output, losses and logging outputs."""
  num_codes = module.num_embeddings
  batch_shape = inputs.shape[:-1]
  outputs = {}
  if module.chunk_size is None:
    distances = core.squared_distances(flat_inputs, codebook)
    flat_indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    outputs['distances'] = distances.reshape(batch_shape + (num_codes,))
  else:
    flat_indices, _ = core.nearest_code(
        flat_inputs, jax.lax.stop_gradient(codebook), module.chunk_size)
  flat_quantized = jnp.take(codebook, flat_indices, axis=0)
  losses = core.vq_losses(flat_inputs, flat_quantized, flat_mask)

  output_dtype = module.dtype if module.dtype is not None else inputs.dtype
  quantized = flat_quantized.reshape(inputs.shape)
  encoding_indices = flat_indices.reshape(batch_shape)
  outputs.update(
      quantize=core.straight_through(inputs.astype(output_dtype), quantized),
      perplexity=core.perplexity(flat_indices, num_codes, flat_mask),
      encoding_indices=encoding_indices,
      encodings=jax.nn.one_hot(encoding_indices, num_codes,
                               dtype=jnp.float32),
      **losses,
  )
  return outputs, flat_indices


class VectorQuantizer(nn.Module):
  """VQ-VAE bottleneck with a gradient-trained codebook (eq. 1-3).

  The codebook is the ``'params'`` entry ``codebook`` of shape ``(K, D)``
  (Sonnet/Haiku: ``(D, K)``, transposed), initialised ``U(-sqrt(3/D),
  sqrt(3/D))``. The loss is eq. (3) without the reconstruction term::

    loss = q_latent_loss + commitment_cost * e_latent_loss
         = |sg[z_e] - e|^2 + beta |z_e - sg[e]|^2     (means over N*D)

  Attributes:
    num_embeddings: codebook size K.
    embedding_dim: code dimension D (the last axis of the inputs).
    commitment_cost: beta of eq. (3) (0.25 in the paper).
    chunk_size: if set, the nearest code is found scanning the codebook in
      chunks of this many codes (memory O(N*chunk_size)); the ``distances``
      output is then omitted.
    dtype: dtype of ``quantize``; None means the inputs' dtype. Distances,
      argmin and losses are float32 regardless.
  """
  num_embeddings: int
  embedding_dim: int
  commitment_cost: float = 0.25
  chunk_size: Optional[int] = None
  dtype: Optional[Dtype] = None

  def __post_init__(self):
    _validate_common_fields(self)
    super().__post_init__()

  def setup(self):
    self.codebook = self.param('codebook', uniform_codebook_init,
                               (self.num_embeddings, self.embedding_dim),
                               jnp.float32)

  def __call__(self,
               inputs: Array,
               *,
               train: bool,
               mask: Optional[Array] = None) -> dict[str, Array]:
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
      ``(N, K)``.
    """
    del train
    flat_inputs, flat_mask = _flatten_inputs(self, inputs, mask)
    outputs, _ = _outputs(self, jnp.asarray(inputs), flat_inputs,
                          self.codebook, flat_mask)
    outputs['loss'] = (outputs['q_latent_loss']
                       + self.commitment_cost * outputs['e_latent_loss'])
    return outputs

  def lookup(self, indices: Array) -> Array:
    """Codes to vectors: ``codebook[indices]``, shape ``indices.shape + (D,)``.

    Out-of-range indices are clamped (``jnp.take`` semantics under jit).
    """
    vectors = jnp.take(self.codebook, jnp.asarray(indices), axis=0)
    return vectors if self.dtype is None else vectors.astype(self.dtype)


class VectorQuantizerEMA(nn.Module):
  """VQ-VAE bottleneck with an EMA-updated codebook (appendix A.1).

  The codebook and its EMA statistics live in the variable collection
  ``'vq_ema'`` (never in ``'params'``, so optimisers never see them):
  ``codebook`` ``(K, D)``, ``ema_cluster_size_hidden`` ``(K,)``,
  ``ema_dw_hidden`` ``(K, D)`` and the int32 update ``counter``. The update
  (`core.ema_update`, Sonnet/Haiku ``VectorQuantizerEMA``) runs when
  ``train=True`` and ``'vq_ema'`` is mutable::

    out, updates = model.apply(variables, x, train=True, mutable=['vq_ema'])

  It is skipped during ``init``. ``quantize`` uses the codebook from before
  the update. The loss is only the commitment term,
  ``loss = commitment_cost * e_latent_loss``; ``q_latent_loss`` is returned
  for logging only.

  Under ``jax.jit`` with batch-sharded inputs (GSPMD) the EMA statistics are
  global sums, so replicated state stays identical across devices.

  Attributes:
    num_embeddings: codebook size K.
    embedding_dim: code dimension D.
    commitment_cost: beta of eq. (3).
    decay: EMA decay gamma in [0, 1).
    epsilon: Laplace smoothing of the cluster sizes (> 0).
    chunk_size: see `VectorQuantizer`.
    dtype: see `VectorQuantizer`.
  """
  num_embeddings: int
  embedding_dim: int
  commitment_cost: float = 0.25
  decay: float = 0.99
  epsilon: float = 1e-5
  chunk_size: Optional[int] = None
  dtype: Optional[Dtype] = None

  def __post_init__(self):
    _validate_common_fields(self)
    if not (isinstance(self.decay, (int, float)) and 0 <= self.decay < 1):
      raise ValueError(f'decay must be in [0, 1), got {self.decay!r}.')
    if not (isinstance(self.epsilon, (int, float)) and
            math.isfinite(self.epsilon) and self.epsilon > 0):
      raise ValueError(f'epsilon must be > 0, got {self.epsilon!r}.')
    super().__post_init__()

  def setup(self):
    num_codes, dim = self.num_embeddings, self.embedding_dim
    # Each variable gets its own freshly created array (no shared buffers).
    self.codebook = self.variable(
        EMA_COLLECTION, core.CODEBOOK,
        lambda: uniform_codebook_init(self.make_rng('params'),
                                      (num_codes, dim), jnp.float32))
    self.ema_cluster_size_hidden = self.variable(
        EMA_COLLECTION, core.EMA_CLUSTER_SIZE_HIDDEN,
        lambda: jnp.zeros((num_codes,), jnp.float32))
    self.ema_dw_hidden = self.variable(
        EMA_COLLECTION, core.EMA_DW_HIDDEN,
        lambda: jnp.zeros((num_codes, dim), jnp.float32))
    self.counter = self.variable(EMA_COLLECTION, core.COUNTER,
                                 lambda: jnp.zeros((), jnp.int32))

  def __call__(self,
               inputs: Array,
               *,
               train: bool,
               mask: Optional[Array] = None) -> dict[str, Array]:
    """Quantises ``inputs`` and, in training, updates the codebook by EMA.

    Args:
      inputs: encoder outputs, shape ``(..., D)``, any float dtype.
      train: whether to apply the EMA update (requires
        ``mutable=['vq_ema']``).
      mask: optional weights with a shape that is a prefix of
        ``inputs.shape[:-1]``; masked vectors are excluded from the loss, the
        perplexity and the EMA statistics.

    Returns:
      The same dict as `VectorQuantizer.__call__`, with
      ``loss = commitment_cost * e_latent_loss``.

    Raises:
      ValueError: on a dimension mismatch, or if ``train=True`` while
        ``'vq_ema'`` is not mutable.
    """
    inputs = jnp.asarray(inputs)
    flat_inputs, flat_mask = _flatten_inputs(self, inputs, mask)
    update = train and not self.is_initializing()
    if update and not self.is_mutable_collection(EMA_COLLECTION):
      raise ValueError(
          f"{type(self).__name__}(train=True) updates its codebook in the "
          f"'{EMA_COLLECTION}' collection, which is not mutable in this call: "
          f"pass mutable=['{EMA_COLLECTION}'] to apply() (or train=False for "
          f"evaluation).")
    codebook = jax.lax.stop_gradient(self.codebook.value)
    outputs, flat_indices = _outputs(self, inputs, flat_inputs, codebook,
                                     flat_mask)
    outputs['loss'] = self.commitment_cost * outputs['e_latent_loss']
    if update:
      new_state = core.ema_update(
          self._ema_state(),
          jax.lax.stop_gradient(flat_inputs),
          flat_indices,
          decay=self.decay,
          epsilon=self.epsilon,
          num_codes=self.num_embeddings,
          mask=flat_mask)
      self.codebook.value = new_state[core.CODEBOOK]
      self.ema_cluster_size_hidden.value = new_state[
          core.EMA_CLUSTER_SIZE_HIDDEN]
      self.ema_dw_hidden.value = new_state[core.EMA_DW_HIDDEN]
      self.counter.value = new_state[core.COUNTER]
    return outputs

  def _ema_state(self) -> dict[str, Array]:
    return {
        core.CODEBOOK: self.codebook.value,
        core.EMA_CLUSTER_SIZE_HIDDEN: self.ema_cluster_size_hidden.value,
        core.EMA_DW_HIDDEN: self.ema_dw_hidden.value,
        core.COUNTER: self.counter.value,
    }

  def lookup(self, indices: Array) -> Array:
    """Codes to vectors: ``codebook[indices]``, ``indices.shape + (D,)``."""
    vectors = jnp.take(self.codebook.value, jnp.asarray(indices), axis=0)
    return vectors if self.dtype is None else vectors.astype(self.dtype)
