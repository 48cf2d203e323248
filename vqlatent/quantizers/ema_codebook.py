"""EMA codebook state inside linen modules: variables, k-means init, restarts.

Shared by `VectorQuantizerEMA` (one codebook), `ResidualVQ` (one per stage)
and `ProductVQ` (one per group). A module declares its state with
`declare_variables` in the ``'vq_ema'`` collection: the four arrays of
`core.init_ema_state` (``codebook``, ``ema_cluster_size_hidden``,
``ema_dw_hidden``, ``counter``), stacked along a leading axis for banks of
codebooks, plus the int32 flag ``kmeans_initialized`` when k-means
initialisation is on.

Randomness (k-means seeds, dead-code restarts) comes from the flax RNG stream
``'quantizer'`` (`QUANTIZER_RNG`): the trainer passes
``rngs={'quantizer': fold_in(state.rng, state.step)}`` so a resumed run draws
the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vqlatent.quantizers import codebook_ops, core

Array = jax.Array

EMA_COLLECTION = "vq_ema"
QUANTIZER_RNG = "quantizer"
KMEANS_INITIALIZED = "kmeans_initialized"


def uniform_codebook_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """``U(-sqrt(3/D), sqrt(3/D))`` for a ``(..., K, D)`` codebook.

    The same distribution as Haiku's ``VarianceScaling(1.0, 'fan_in',
    'uniform')`` applied to its ``(D, K)`` embeddings (fan_in = D).
    """
    dim = shape[-1]
    limit = math.sqrt(3.0 / dim)
    return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)


def validate_ema_fields(module: Any) -> None:
    """Checks decay, epsilon and the codebook-health fields of ``module``."""
    decay, epsilon = module.decay, module.epsilon
    if not (isinstance(decay, (int, float)) and 0 <= decay < 1):
        raise ValueError(f"decay must be in [0, 1), got {decay!r}.")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}.")
    threshold = module.dead_code_threshold
    if not (
        isinstance(threshold, (int, float))
        and not isinstance(threshold, bool)
        and math.isfinite(threshold)
        and threshold >= 0
    ):
        raise ValueError(
            f"dead_code_threshold must be a finite number >= 0 (0 disables restarts), got {threshold!r}."
        )
    if not isinstance(module.kmeans_init, bool):
        raise ValueError(f"kmeans_init must be True or False, got {module.kmeans_init!r}.")
    iterations = module.kmeans_iterations
    if isinstance(iterations, bool) or not isinstance(iterations, int) or (iterations < 1):
        raise ValueError(f"kmeans_iterations must be an integer >= 1, got {iterations!r}.")


def declare_variables(
    module: nn.Module, leading_shape: tuple[int, ...], num_codes: int, dim: int, kmeans_init: bool
) -> dict[str, nn.Variable]:
    """The EMA state variables of ``module`` (call from ``setup``).

    Each variable gets a freshly created array: initialising one from another
    would make them share a buffer, which ``donate_argnums`` rejects.
    """
    shape = tuple(leading_shape)
    variables = {
        core.CODEBOOK: module.variable(
            EMA_COLLECTION,
            core.CODEBOOK,
            lambda: uniform_codebook_init(module.make_rng("params"), shape + (num_codes, dim)),
        ),
        core.EMA_CLUSTER_SIZE_HIDDEN: module.variable(
            EMA_COLLECTION, core.EMA_CLUSTER_SIZE_HIDDEN, lambda: jnp.zeros(shape + (num_codes,), jnp.float32)
        ),
        core.EMA_DW_HIDDEN: module.variable(
            EMA_COLLECTION, core.EMA_DW_HIDDEN, lambda: jnp.zeros(shape + (num_codes, dim), jnp.float32)
        ),
        core.COUNTER: module.variable(EMA_COLLECTION, core.COUNTER, lambda: jnp.zeros(shape, jnp.int32)),
    }
    if kmeans_init:
        variables[KMEANS_INITIALIZED] = module.variable(
            EMA_COLLECTION, KMEANS_INITIALIZED, lambda: jnp.zeros((), jnp.int32)
        )
    return variables


def read_state(variables: dict[str, nn.Variable]) -> dict[str, Array]:
    """The EMA state (`core.EMA_STATE_KEYS`) as a dict of arrays."""
    return {key: variables[key].value for key in core.EMA_STATE_KEYS}


def write_state(variables: dict[str, nn.Variable], state: dict[str, Array]) -> None:
    for key in core.EMA_STATE_KEYS:
        variables[key].value = state[key]


def should_update(module: nn.Module, train: bool) -> bool:
    """Whether this call updates the EMA state (training, not init); raises if
    ``train=True`` but the ``'vq_ema'`` collection is not mutable."""
    update = train and not module.is_initializing()
    if update and not module.is_mutable_collection(EMA_COLLECTION):
        raise ValueError(
            f"{type(module).__name__}(train=True) updates its codebook in the "
            f"'{EMA_COLLECTION}' collection, which is not mutable in this call: "
            f"pass mutable=['{EMA_COLLECTION}'] to apply() (or train=False for "
            f"evaluation)."
        )
    return update


def needs_rng(module: Any) -> bool:
    """Whether a training call of ``module`` draws random numbers."""
    return module.kmeans_init or module.dead_code_threshold > 0


def quantizer_key(module: nn.Module) -> Array:
    """A key from the ``'quantizer'`` RNG stream, or a clear error."""
    if not module.has_rng(QUANTIZER_RNG):
        features = []
        if module.kmeans_init:
            features.append("kmeans_init=True")
        if module.dead_code_threshold > 0:
            features.append(f"dead_code_threshold={module.dead_code_threshold}")
        raise ValueError(
            f"{type(module).__name__} with {' and '.join(features)} needs random "
            f"numbers in training: pass rngs={{'{QUANTIZER_RNG}': key}} to "
            f"apply() (derive the key from the step, e.g. "
            f"jax.random.fold_in(rng, step), to keep runs resumable)."
        )
    return module.make_rng(QUANTIZER_RNG)


def maybe_kmeans_init(variables: dict[str, nn.Variable], codebook_fn) -> Array:
    """Runs ``codebook_fn()`` once, on the first training call, via ``lax.cond``.

    ``codebook_fn`` returns the k-means codebook (same shape as the stored one).
    Both branches are in the one compiled step; the flag
    ``kmeans_initialized`` selects which runs. Returns the codebook to use now.
    """
    flag = variables[KMEANS_INITIALIZED]
    stored = variables[core.CODEBOOK].value
    codebook = lax.cond(flag.value > 0, lambda: stored, codebook_fn)
    variables[core.CODEBOOK].value = codebook
    flag.value = jnp.ones((), jnp.int32)
    return codebook


def kmeans_codebook(
    x: Array, num_codes: int, key: Array, module: Any, mask: Array | None, spherical: bool = False
) -> Array:
    centroids, _ = codebook_ops.kmeans(
        x,
        num_codes,
        key,
        iterations=module.kmeans_iterations,
        mask=mask,
        chunk_size=module.chunk_size,
        spherical=spherical,
    )
    return centroids


def ema_step(
    state: dict[str, Array],
    x: Array,
    indices: Array,
    key: Array | None,
    module: Any,
    num_codes: int,
    mask: Array | None,
) -> tuple[dict[str, Array], Array]:
    """`core.ema_update` then, if enabled, `codebook_ops.restart_dead_codes`.

    Returns the new state and the number of restarted (dead) codes.
    """
    state = core.ema_update(
        state, x, indices, decay=module.decay, epsilon=module.epsilon, num_codes=num_codes, mask=mask
    )
    if module.dead_code_threshold > 0:
        state, num_dead = codebook_ops.restart_dead_codes(
            state, x, key, decay=module.decay, threshold=module.dead_code_threshold, mask=mask
        )
    else:
        num_dead = jnp.zeros((), jnp.float32)
    return state, num_dead
