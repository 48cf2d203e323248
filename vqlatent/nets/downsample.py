"""Strided convolutions whose input gradient is computed per phase of the kernel taps.

A convolution with stride s computes y[i] = sum_t xp[s i + t] w[t] (xp: the padded input). Splitting
each tap t = s p + a by its phase a turns it into a sum of s*s stride-1 convolutions, one per phase
(a, b) of rows and columns::

  y = sum_{a,b} conv_1(xp[a::s, b::s], w[a::s, b::s])      (each cropped to y's size)

(the space-to-depth identity). XLA:CPU differentiates a strided convolution with respect to its
input as one convolution over the output gradient dilated with s-1 zeros between elements, so three
quarters of its multiply-adds at s = 2 are with zeros; the per-phase form's input gradient is four
stride-1 input gradients, a quarter of the work each, interleaved. It is faster on XLA:CPU for the
large layers of the VQ-VAE-2 at 256x256 and no faster for small maps (`benchmarks/downsample_bench.py`,
docs/lab/speed.md); it equals XLA's to float32 rounding (summation order).

`conv_phase_grad` keeps XLA's strided convolution for the forward (bit-identical values) and XLA's
kernel gradient (the per-phase kernel gradient was not faster), and only replaces
the input gradient. `PhaseGradConv` is `nn.Conv` with it: same parameter names and shapes, so the
config field `model.downsample` switches forms on any checkpoint. cuDNN and the TPU compute strided
input gradients natively, so 'auto' picks the per-phase form on the CPU only, and there only for the
layer sizes where it was measured faster (`downsampling_layer`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vqlatent import backend

# The forms; 'auto' picks per backend and by layer size as `backend.CHOICES['downsample']` says (on the
# CPU the per-phase input gradient only for the layer sizes where benchmarks/downsample_bench.py
# measured it faster; an autoencoder never differentiates its image input anyway).
DOWNSAMPLERS = backend.CHOICES["downsample"].forms
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def _strided(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """The convolution as `nn.Conv` computes it (XLA's strided convolution)."""
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSIONS)


def phase_sum(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """The same function as `_strided`, as a sum of stride-1 convolutions over the taps' phases."""
    (sh, sw), (kh, kw) = strides, kernel.shape[:2]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    out_h, out_w = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    y = None
    for a in range(min(sh, kh)):
        for b in range(min(sw, kw)):
            part = lax.conv_general_dilated(
                xp[:, a::sh, b::sw], kernel[a::sh, b::sw], (1, 1), "VALID", dimension_numbers=_DIMENSIONS
            )[:, :out_h, :out_w]
            y = part if y is None else y + part
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_phase_grad(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """XLA's strided convolution, differentiated with respect to `x` through `phase_sum`."""
    return _strided(x, kernel, strides, padding)


def _forward(x, kernel, strides, padding):
    return _strided(x, kernel, strides, padding), (x, kernel)


def _phase_input_gradient(x: jax.Array, kernel: jax.Array, strides, padding, g: jax.Array) -> jax.Array:
    """d(sum y * g)/dx through `phase_sum`: one stride-1 input gradient per phase, interleaved.

    When the stride divides the kernel and the padded input, phase (a, b) of the padded input has
    exactly one row and column per output position plus the kernel's reach, so each phase's gradient
    is a whole stride-1 input gradient (no crop) and the phases interleave by a reshape. Otherwise
    JAX differentiates `phase_sum` itself (strided slices, then pads).
    """
    (sh, sw), (kh, kw) = strides, kernel.shape[:2]
    n, h, w, c = x.shape
    hp, wp = h + sum(padding[0]), w + sum(padding[1])
    if kh % sh or kw % sw or hp % sh or wp % sw:
        return jax.vjp(lambda x_: phase_sum(x_, kernel, strides, padding), x)[1](g)[0]
    phase_shape = jax.ShapeDtypeStruct((n, hp // sh, wp // sw, c), x.dtype)
    rows = []
    for a in range(sh):
        columns = []
        for b in range(sw):

            def conv(v, k=kernel[a::sh, b::sw]):  # Phase (a, b) of `phase_sum`: linear in v.
                return lax.conv_general_dilated(v, k, (1, 1), "VALID", dimension_numbers=_DIMENSIONS)

            columns.append(jax.linear_transpose(conv, phase_shape)(g)[0])
        rows.append(jnp.stack(columns, axis=3))  # (n, hp/sh, wp/sw, sw, c)
    padded = jnp.stack(rows, axis=2).reshape(n, hp, wp, c)  # (n, hp/sh, sh, wp/sw, sw, c) interleaved
    return padded[:, padding[0][0] : padding[0][0] + h, padding[1][0] : padding[1][0] + w]


def _backward(strides, padding, residuals, g):
    x, kernel = residuals
    dx = _phase_input_gradient(x, kernel, strides, padding, g)
    (dkernel,) = jax.vjp(lambda k: _strided(x, k, strides, padding), kernel)[1](g)
    return dx, dkernel


conv_phase_grad.defvjp(_forward, _backward)


class PhaseGradConv(nn.Module):
    """`nn.Conv` (NHWC, no dilation or groups) whose input gradient is `phase_sum`'s.

    Parameters are named and shaped as `nn.Conv`'s (`kernel` (kh, kw, Cin, Cout), `bias` (Cout,)), and
    the forward values are nn.Conv's bit for bit.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int]
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        shape = (kh, kw, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        strides = tuple(int(s) for s in self.strides)
        if isinstance(self.padding, str):
            pads = lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, self.padding)
        else:
            pads = self.padding
        y = conv_phase_grad(x, kernel, strides, tuple((int(lo), int(hi)) for lo, hi in pads))
        if bias is not None:
            y = y + bias.reshape((1, 1, 1, -1))
        return y


def downsampling_layer(
    kind: str,
    features: int,
    dtype: Any,
    name: str,
    padding: str | Sequence[tuple[int, int]],
    input_shape: Sequence[int],
    use_bias: bool = True,
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal(),
) -> nn.Module:
    """A 4x4, stride-2 convolution in the form `kind` names: 'conv' is `nn.Conv`, 'phase_grad'
    `PhaseGradConv` (the same function, values and parameters). 'auto' (config `model.downsample`)
    picks the backend's form, and `nn.Conv` for an NHWC `input_shape` of fewer than
    `backend.MIN_PHASE_GRAD_PIXELS` pixels or `backend.MIN_PHASE_GRAD_CHANNELS` channels
    (`backend.CHOICES['downsample']`)."""
    _, height, width, channels = input_shape
    kind = backend.resolve("model.downsample", kind, input_pixels=height * width, input_channels=channels)
    cls = PhaseGradConv if kind == "phase_grad" else nn.Conv
    return cls(
        features,
        (4, 4),
        strides=(2, 2),
        padding=padding,
        use_bias=use_bias,
        kernel_init=kernel_init,
        dtype=dtype,
        name=name,
    )
