"""What every quantiser module shares: field validation, input checks, EMA state in linen.

`Quantizer` is the base of every linen quantiser. Subclasses declare their configuration as
dataclass fields (which become the accepted config keys, `vqlatent.quantizers.config_fields`), call
the validators below from ``__post_init__``, and return the common output dict
(`COMMON_OUTPUT_KEYS`) from ``__call__(inputs, *, train, mask=None)``, with a ``lookup(indices)`` that
inverts ``encoding_indices`` and the properties ``num_codebooks`` (index streams per position) and
``codebook_size``.

`EMAQuantizer` adds the EMA codebook state (`vqlatent.quantizers.ema`) as linen variables in the
``'vq_ema'`` collection -- ``codebook``, ``ema_cluster_size_hidden``, ``ema_dw_hidden``, ``counter``
(stacked along a leading axis for banks of codebooks), plus the int32 flag ``kmeans_initialized``
with k-means initialisation -- and the training-time steps around it. Randomness (k-means seeds,
dead-code restarts) comes from the flax RNG stream ``'quantizer'`` (`QUANTIZER_RNG`): the trainer
passes ``rngs={'quantizer': fold_in(state.rng, state.step)}`` so a resumed run draws the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vqlatent.quantizers import ema, estimators, search

Array = jax.Array
Dtype = Any

EMA_COLLECTION = "vq_ema"
QUANTIZER_RNG = "quantizer"
KMEANS_INITIALIZED = "kmeans_initialized"

# Keys in the output dict of every quantiser. Single-codebook VQ adds Sonnet's `encodings` (and
# `distances` when unchunked); EMA quantisers with restarts add `dead_codes`.
COMMON_OUTPUT_KEYS = ("quantize", "loss", "perplexity", "encoding_indices", "e_latent_loss", "q_latent_loss")


# -- field validation ------------------------------------------------------------------------------


def validate_int_at_least_one(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field_name} must be an integer >= 1, got {value!r}.")


def validate_bool(field_name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{field_name} must be True or False, got {value!r}.")


def validate_commitment_cost(beta: Any) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"commitment_cost must be a finite number >= 0, got {beta!r}.")


def validate_non_negative(field_name: str, value: Any, hint: str = "") -> None:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{field_name} must be a finite number >= 0{hint}, got {value!r}.")


def validate_positive(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{field_name} must be a finite number > 0, got {value!r}.")


def validate_ema_fields(module: Any) -> None:
    """Checks decay, epsilon and the codebook-health fields of an EMA quantiser."""
    decay, epsilon = module.decay, module.epsilon
    if not (isinstance(decay, (int, float)) and 0 <= decay < 1):
        raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}.")
    validate_non_negative("dead_code_threshold", module.dead_code_threshold, " (0 disables restarts)")
    validate_bool("kmeans_init", module.kmeans_init)
    iterations = module.kmeans_iterations
    if isinstance(iterations, bool) or not isinstance(iterations, int) or (iterations < 1):
        raise ValueError(f"kmeans_iterations must be an integer >= 1, got {iterations!r}.")


def validate_hot_paths(module: Any) -> None:
    """Resolves the per-backend fields once, so a typo fails at construction, not at trace time."""
    search.resolve_argmin_form(module.argmin_form)
    search.resolve_distance_precision(module.distance_precision)
    if hasattr(module, "ema_statistics"):
        ema.resolve_ema_statistics(module.ema_statistics, 1)


def check_trailing_indices(indices: Array, count: int, owner: str, axis_name: str) -> Array:
    """``indices`` as an array whose trailing axis holds ``count`` index streams (groups, stages),
    or a clear error naming ``owner`` and ``axis_name``."""
    indices = jnp.asarray(indices)
    if indices.ndim == 0 or indices.shape[-1] != count:
        raise ValueError(f"{owner} indices must end in the {count} {axis_name}; got shape {indices.shape}.")
    return indices


def uniform_codebook_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """``U(-sqrt(3/D), sqrt(3/D))`` for a ``(..., K, D)`` codebook.

    The distribution of Haiku's ``VarianceScaling(1.0, 'fan_in', 'uniform')`` applied to its
    ``(D, K)`` embeddings (fan_in = D).
    """
    limit = math.sqrt(3.0 / shape[-1])
    return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)


# -- the base classes ------------------------------------------------------------------------------


class Quantizer(nn.Module):
    """Base of the quantiser modules: input and mask checks, output dtype, nearest-code search."""

    @property
    def num_codebooks(self) -> int:
        """Index streams per position (1: ``encoding_indices`` has no extra axis)."""
        return 1

    @property
    def codebook_size(self) -> int:
        return self.num_embeddings

    @nn.nowrap
    def check_inputs(self, inputs: Array) -> None:
        """Raises unless ``inputs`` is floating point with last axis ``embedding_dim``."""
        if inputs.ndim < 1 or inputs.shape[-1] != self.embedding_dim:
            last = inputs.shape[-1] if inputs.ndim else None
            raise ValueError(
                f"{type(self).__name__}: inputs.shape[-1]={last} (inputs.shape={inputs.shape}) does not "
                f"match the config field embedding_dim={self.embedding_dim}."
            )
        if not jnp.issubdtype(inputs.dtype, jnp.floating):
            raise ValueError(
                f"{type(self).__name__}: inputs must be floating point, got dtype {inputs.dtype}."
            )

    @nn.nowrap
    def flatten_mask(self, batch_shape: tuple[int, ...], mask: Array | None) -> Array | None:
        """A mask whose shape is a prefix of ``batch_shape`` -> flat float32 ``(N,)``."""
        if mask is None:
            return None
        mask = jnp.asarray(mask)
        if mask.shape != batch_shape[: mask.ndim]:
            raise ValueError(
                f"{type(self).__name__}: mask.shape={mask.shape} must be a prefix of "
                f"inputs.shape[:-1]={batch_shape} (e.g. (B,) for padded examples)."
            )
        mask = mask.reshape(mask.shape + (1,) * (len(batch_shape) - mask.ndim))
        return jnp.broadcast_to(mask.astype(jnp.float32), batch_shape).reshape(-1)

    @nn.nowrap
    def output_dtype(self, inputs: Array) -> Dtype:
        return self.dtype if self.dtype is not None else inputs.dtype

    @nn.nowrap
    def random_features(self) -> list[str]:
        """The fields that make a training call draw random numbers (empty: none)."""
        return []

    @nn.nowrap
    def needs_rng(self) -> bool:
        """Whether a training call draws random numbers."""
        return bool(self.random_features())

    def quantizer_key(self) -> Array:
        """A key from the ``'quantizer'`` RNG stream, or a clear error naming what needs it."""
        if not self.has_rng(QUANTIZER_RNG):
            raise ValueError(
                f"{type(self).__name__} with {' and '.join(self.random_features())} needs random numbers "
                f"in training: pass rngs={{'{QUANTIZER_RNG}': key}} to apply() (derive the key from the "
                f"step, e.g. jax.random.fold_in(rng, step), to keep runs resumable)."
            )
        return self.make_rng(QUANTIZER_RNG)

    @nn.nowrap
    def nearest(self, x: Array, codebook: Array) -> Array:
        """int32 ``(N,)`` nearest codes of ``(N, d)`` rows (`search.nearest_code`, this module's forms)."""
        indices, _ = search.nearest_code(
            x,
            codebook,
            self.chunk_size,
            argmin_form=search.resolve_argmin_form(self.argmin_form),
            precision=search.resolve_distance_precision(self.distance_precision),
        )
        return indices


class ProjectedQuantizer(Quantizer):
    """A quantiser of ``code_dim``-channel codes (FSQ, LFQ and their residual forms) that maps inputs
    of ``embedding_dim`` channels to and from the codes with Dense layers ``project_in`` /
    ``project_out`` (``'params'``) when the two differ (Mentzer et al. 2023, section 3; Yu et al. 2023,
    section 3.1), and passes them unchanged when they are equal."""

    @property
    def code_dim(self) -> int:
        raise NotImplementedError

    @property
    def _projects(self) -> bool:
        return self.embedding_dim != self.code_dim

    def setup(self):
        if self._projects:
            self.project_in = nn.Dense(self.code_dim, name="project_in")
            self.project_out = nn.Dense(self.embedding_dim, name="project_out")

    def prepare(self, inputs: Any, mask: Array | None) -> tuple[Array, Array | None, Array]:
        """Checks ``inputs`` ``(..., embedding_dim)``; returns them as an array, the flattened mask
        (`flatten_mask`) and their ``(..., code_dim)`` projection (`to_codes`)."""
        inputs = jnp.asarray(inputs)
        self.check_inputs(inputs)
        return inputs, self.flatten_mask(inputs.shape[:-1], mask), self.to_codes(inputs)

    def to_codes(self, inputs: Array) -> Array:
        """``(..., embedding_dim)`` -> ``(..., code_dim)`` (``project_in``, or the inputs)."""
        return self.project_in(inputs) if self._projects else inputs

    def from_codes(self, values: Array) -> Array:
        """``(..., code_dim)`` -> ``(..., embedding_dim)`` (``project_out``, or the values)."""
        return self.project_out(values) if self._projects else values


class EMAQuantizer(Quantizer):
    """A quantiser whose codebooks are EMA-updated (appendix A.1), with k-means init and restarts.

    The fields below are those every EMA quantiser shares, declared once here and keyword-only, so
    that a subclass declares only its own (positional first: e.g. ``num_groups, num_embeddings,
    embedding_dim``). Subclasses keep the variable dict of `declare_ema_variables` as ``self.ema``.

    Attributes:
      commitment_cost: beta of eq. (3) of van den Oord et al. (2017).
      decay: EMA decay gamma in [0, 1).
      epsilon: Laplace smoothing of the cluster sizes (> 0).
      chunk_size: codes per chunk of the nearest-code search (None: unchunked; `search`).
      dtype: dtype of ``quantize`` (None: the inputs').
      gradient_estimator: ``'straight_through'`` or ``'rotation_trick'`` (`estimators`).
      dead_code_threshold: restart codes used by fewer than this many inputs per batch (EMA); 0
        disables restarts. Adds ``dead_codes`` (codes below the threshold) to the outputs.
      kmeans_init: initialise the codebook by k-means on the first training batch.
      kmeans_iterations: Lloyd iterations of that k-means.
      argmin_form, distance_precision, ema_statistics: the per-backend hot paths (`search`, `ema`;
        ``'auto'``: the backend's default, every form gives the same codes).
    """

    _: dataclasses.KW_ONLY
    commitment_cost: float = 0.25
    decay: float = 0.99
    epsilon: float = 1e-5
    chunk_size: int | None = None
    dtype: Dtype | None = None
    gradient_estimator: str = estimators.STRAIGHT_THROUGH
    dead_code_threshold: float = 0.0
    kmeans_init: bool = False
    kmeans_iterations: int = 10
    argmin_form: str = "auto"
    distance_precision: str = "auto"
    ema_statistics: str = "auto"

    def declare_ema_variables(
        self, leading_shape: tuple[int, ...], num_codes: int, dim: int
    ) -> dict[str, nn.Variable]:
        """The EMA state variables (call from ``setup``); each gets a freshly created array
        (initialising one from another would share a buffer, which ``donate_argnums`` rejects)."""
        shape = tuple(leading_shape)
        variables = {
            ema.CODEBOOK: self.variable(
                EMA_COLLECTION,
                ema.CODEBOOK,
                lambda: uniform_codebook_init(self.make_rng("params"), shape + (num_codes, dim)),
            ),
            ema.EMA_CLUSTER_SIZE_HIDDEN: self.variable(
                EMA_COLLECTION,
                ema.EMA_CLUSTER_SIZE_HIDDEN,
                lambda: jnp.zeros(shape + (num_codes,), jnp.float32),
            ),
            ema.EMA_DW_HIDDEN: self.variable(
                EMA_COLLECTION, ema.EMA_DW_HIDDEN, lambda: jnp.zeros(shape + (num_codes, dim), jnp.float32)
            ),
            ema.COUNTER: self.variable(EMA_COLLECTION, ema.COUNTER, lambda: jnp.zeros(shape, jnp.int32)),
        }
        if self.kmeans_init:
            variables[KMEANS_INITIALIZED] = self.variable(
                EMA_COLLECTION, KMEANS_INITIALIZED, lambda: jnp.zeros((), jnp.int32)
            )
        return variables

    def read_ema_state(self) -> dict[str, Array]:
        return {key: self.ema[key].value for key in ema.EMA_STATE_KEYS}

    def write_ema_state(self, state: dict[str, Array]) -> None:
        for key in ema.EMA_STATE_KEYS:
            self.ema[key].value = state[key]

    def should_update(self, train: bool) -> bool:
        """Whether this call updates the EMA state (training, not init); raises if ``train=True``
        but the ``'vq_ema'`` collection is not mutable."""
        update = train and not self.is_initializing()
        if update and not self.is_mutable_collection(EMA_COLLECTION):
            raise ValueError(
                f"{type(self).__name__}(train=True) updates its codebook in the '{EMA_COLLECTION}' "
                f"collection, which is not mutable in this call: pass mutable=['{EMA_COLLECTION}'] to "
                f"apply() (or train=False for evaluation)."
            )
        return update

    @nn.nowrap
    def random_features(self) -> list[str]:
        features = super().random_features()
        if self.kmeans_init:
            features.append("kmeans_init=True")
        if self.dead_code_threshold > 0:
            features.append(f"dead_code_threshold={self.dead_code_threshold}")
        return features

    def maybe_kmeans_init(self, codebook_fn: Callable[[], Array]) -> Array:
        """Runs ``codebook_fn()`` (the k-means codebook) once, on the first training call.

        Both branches of a ``lax.cond`` are in the one compiled step; the flag
        ``kmeans_initialized`` selects which runs. Returns the codebook to use now.
        """
        flag = self.ema[KMEANS_INITIALIZED]
        stored = self.ema[ema.CODEBOOK].value
        codebook = lax.cond(flag.value > 0, lambda: stored, codebook_fn)
        self.ema[ema.CODEBOOK].value = codebook
        flag.value = jnp.ones((), jnp.int32)
        return codebook

    @nn.nowrap
    def kmeans_codebook(
        self, x: Array, num_codes: int, key: Array, mask: Array | None, spherical: bool = False
    ) -> Array:
        centroids, _ = ema.kmeans(
            x,
            num_codes,
            key,
            iterations=self.kmeans_iterations,
            mask=mask,
            chunk_size=self.chunk_size,
            spherical=spherical,
            argmin_form=search.resolve_argmin_form(self.argmin_form),
            precision=search.resolve_distance_precision(self.distance_precision),
        )
        return centroids

    @nn.nowrap
    def ema_step(
        self,
        state: dict[str, Array],
        x: Array,
        indices: Array,
        key: Array | None,
        num_codes: int,
        mask: Array | None,
    ) -> tuple[dict[str, Array], Array]:
        """`ema.ema_update` then, if enabled, `ema.restart_dead_codes`; returns (state, num_dead)."""
        state = ema.ema_update(
            state,
            x,
            indices,
            decay=self.decay,
            epsilon=self.epsilon,
            num_codes=num_codes,
            mask=mask,
            statistics_form=ema.resolve_ema_statistics(self.ema_statistics, num_codes),
        )
        if self.dead_code_threshold > 0:
            return ema.restart_dead_codes(
                state, x, key, decay=self.decay, threshold=self.dead_code_threshold, mask=mask
            )
        return state, jnp.zeros((), jnp.float32)

    def dead_code_count(self, stacked: bool) -> Array:
        """float32 number of codes whose EMA usage is below the threshold (evaluation calls)."""
        state = self.read_ema_state()
        usage_fn = jax.vmap(ema.ema_usage, (0, None)) if stacked else ema.ema_usage
        usage = usage_fn(state, self.decay)
        return jnp.sum((usage < self.dead_code_threshold).astype(jnp.float32))
