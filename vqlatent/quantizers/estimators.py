"""Gradient estimators through the (non-differentiable) code assignment.

Two interchangeable ``custom_vjp`` functions ``f(x, q)`` that return ``q`` in
the forward pass and differ only in the gradient they send to the encoder
output ``x`` (the selected code ``q`` always gets a zero cotangent: codebooks
learn from the codebook loss or the EMA update, never through this path):

* ``straight_through`` (van den Oord et al. 2017, section 3.2, the first term of eq. (3)):
  ``dL/dx = dL/dq``.
* ``rotation_trick`` (Fifty et al. 2024, "Restructuring Vector Quantization
  with the Rotation Trick", arXiv:2410.06424, eq. 4 and section 4.2): the
  forward pass is written as ``q = sg[lambda R] x`` with ``lambda = |q|/|x|``
  and ``R`` the rotation in the plane of ``x`` and ``q`` that turns ``x/|x|``
  into ``q/|q|``, and the gradient is the one of that linear map:
  ``dL/dx = lambda R^T dL/dq``. With ``x_hat = x/|x|``, ``q_hat = q/|q|`` and
  ``r = (x_hat + q_hat) / |x_hat + q_hat|`` (eq. 5, the Householder form)::

    R   = I - 2 r r^T + 2 q_hat x_hat^T
    R^T g = g - 2 (r . g) r + 2 (q_hat . g) x_hat

  so no ``D x D`` matrix is ever formed. The gradient's angle to ``x`` equals
  the decoder gradient's angle to ``q``, and its norm is scaled by
  ``|q|/|x|``.

Both work row-wise on the last axis of arrays of any shape; the rotation is
computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

STRAIGHT_THROUGH = "straight_through"
ROTATION_TRICK = "rotation_trick"

# Rows whose rotation is ill-defined fall back to straight-through (see
# `rotation_trick`): |x| or |q| below this, or x_hat nearly equal to -q_hat.
_DEGENERATE_NORM = 1e-12
_DEGENERATE_SUM_NORM = 1e-6


@jax.custom_vjp
def _straight_through(x: Array, q: Array) -> Array:
    del x
    return q


def _straight_through_fwd(x: Array, q: Array):
    del x
    return q, None


def _straight_through_bwd(residuals, cotangent):
    del residuals
    return cotangent, jnp.zeros_like(cotangent)


_straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def straight_through(x: Any, q: Any) -> Array:
    """Straight-through estimator of eq. (3)'s first term.

    In the forward pass this is ``z_q(x) = q`` (written ``x + sg[q - x]`` in the reference
    implementations, but returned exactly as ``q``). In the backward pass the decoder's gradient
    ``dL/dz_q`` is copied unchanged to the encoder output ``z_e(x) = x`` ("we approximate the
    gradient similar to the straight-through estimator and just copy gradients from decoder input
    z_q(x) to encoder output z_e(x)") and ``q`` receives a zero cotangent: the codebook learns only
    from the codebook term of eq. (3) (or the EMA update).

    Args:
      x: encoder outputs.
      q: quantised vectors, same shape as ``x``; cast to ``x.dtype``.

    Returns:
      ``q`` with the dtype of ``x``, differentiable only w.r.t. ``x``.
    """
    x = jnp.asarray(x)
    q = jnp.asarray(q)
    if x.shape != q.shape:
        raise ValueError(f"straight_through needs x and q of the same shape; got {x.shape} and {q.shape}.")
    return _straight_through(x, q.astype(x.dtype))


def _rotation_factors(x32: Array, q32: Array):
    """(lambda, x_hat, q_hat, r, degenerate) for row-wise rotations of x to q."""
    x_norm = jnp.linalg.norm(x32, axis=-1, keepdims=True)
    q_norm = jnp.linalg.norm(q32, axis=-1, keepdims=True)
    x_hat = x32 / jnp.maximum(x_norm, _DEGENERATE_NORM)
    q_hat = q32 / jnp.maximum(q_norm, _DEGENERATE_NORM)
    half_way = x_hat + q_hat
    half_way_norm = jnp.linalg.norm(half_way, axis=-1, keepdims=True)
    r = half_way / jnp.maximum(half_way_norm, _DEGENERATE_SUM_NORM)
    scale = q_norm / jnp.maximum(x_norm, _DEGENERATE_NORM)
    degenerate = (
        (x_norm <= _DEGENERATE_NORM) | (q_norm <= _DEGENERATE_NORM) | (half_way_norm <= _DEGENERATE_SUM_NORM)
    )
    return scale, x_hat, q_hat, r, degenerate


@jax.custom_vjp
def _rotation_trick(x: Array, q: Array) -> Array:
    del x
    return q


def _rotation_trick_fwd(x: Array, q: Array):
    factors = _rotation_factors(x.astype(jnp.float32), q.astype(jnp.float32))
    return q, (factors, jnp.zeros((), x.dtype), jnp.zeros((), q.dtype))


def _rotation_trick_bwd(residuals, cotangent):
    (scale, x_hat, q_hat, r, degenerate), x_dtype_carrier, q_dtype_carrier = residuals
    g = cotangent.astype(jnp.float32)
    rotated = (
        g
        - 2.0 * jnp.sum(r * g, axis=-1, keepdims=True) * r
        + 2.0 * jnp.sum(q_hat * g, axis=-1, keepdims=True) * x_hat
    )
    grad_x = jnp.where(degenerate, g, scale * rotated)
    return (grad_x.astype(x_dtype_carrier.dtype), jnp.zeros(cotangent.shape, q_dtype_carrier.dtype))


_rotation_trick.defvjp(_rotation_trick_fwd, _rotation_trick_bwd)


def rotation_trick(x: Any, q: Any) -> Array:
    """The rotation-trick estimator of Fifty et al. (2024), eq. (4)-(5).

    Forward: exactly ``q`` (cast to ``x.dtype``). Backward: the encoder output
    receives ``|q|/|x| * R^T dL/dq`` (row-wise, last axis), where ``R`` rotates
    ``x/|x|`` onto ``q/|q|``; ``q`` receives zero. Rows where the rotation is
    undefined (``x = 0``, ``q = 0`` or ``x/|x| = -q/|q|``) get the
    straight-through gradient ``dL/dq`` instead.

    Args:
      x: encoder outputs ``(..., D)``.
      q: selected codes, same shape as ``x``.

    Returns:
      ``q`` with the dtype of ``x``.
    """
    x = jnp.asarray(x)
    q = jnp.asarray(q)
    if x.shape != q.shape:
        raise ValueError(f"rotation_trick needs x and q of the same shape; got {x.shape} and {q.shape}.")
    return _rotation_trick(x, q.astype(x.dtype))


GRADIENT_ESTIMATORS: dict[str, Callable[[Any, Any], Array]] = {
    STRAIGHT_THROUGH: straight_through,
    ROTATION_TRICK: rotation_trick,
}


def validate_gradient_estimator(name: Any) -> None:
    """Raises ValueError unless ``name`` is a key of `GRADIENT_ESTIMATORS`."""
    if name not in GRADIENT_ESTIMATORS:
        raise ValueError(f"unknown gradient_estimator {name!r}; choose one of {sorted(GRADIENT_ESTIMATORS)}.")


def estimate(name: str, x: Any, q: Any) -> Array:
    """``GRADIENT_ESTIMATORS[name](x, q)``: ``q`` forward, a chosen gradient."""
    validate_gradient_estimator(name)
    return GRADIENT_ESTIMATORS[name](x, q)
