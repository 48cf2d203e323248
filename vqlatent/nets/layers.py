"""Building blocks shared by the VQ-VAE, VQ-VAE-2 and InfoGAN networks.

`SubpixelConvTranspose` is the one non-obvious piece: it computes exactly the
function of `flax.linen.ConvTranspose(features, kernel, strides, padding='SAME')`
(same parameters, same values, same gradients) but as one stride-1 convolution
to `s*s*features` channels followed by depth-to-space ("sub-pixel" convolution,
Shi et al. 2016), or as one stride-1 convolution per output phase with only
that phase's taps (the default: less than half the work for kernel 4 / stride
2). XLA:CPU computes the kernel gradient of a strided transposed convolution
one to two orders of magnitude slower than PyTorch (docs/lab/speed.md); both
forms avoid that path entirely.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqlatent import backend


def depth_to_space(x: jax.Array, block: tuple[int, int]) -> jax.Array:
    """(B, H, W, sh*sw*C) -> (B, H*sh, W*sw, C); channel index = (rh*sw + rw)*C + c."""
    b, h, w, ch = x.shape
    sh, sw = block
    c = ch // (sh * sw)
    x = x.reshape(b, h, w, sh, sw, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * sh, w * sw, c)


def _same_transpose_padding(kernel: int, stride: int) -> int:
    """Low-side padding that `lax.conv_transpose(..., padding='SAME')` applies."""
    pad_len = kernel + stride - 2
    return kernel - 1 if stride > kernel - 1 else int(np.ceil(pad_len / 2))


def _phase_taps(kernel: int, stride: int) -> tuple[np.ndarray, int, int]:
    """Where each kernel tap goes in the stride-1 sub-pixel kernel (one axis).

    A transposed convolution (no kernel flip, as in flax) with 'SAME' padding
    computes y[s*i + r] = sum_t x[i + d] w[t] over the taps t with
    s*d = t - pad_lo + r. Output phase r is therefore an ordinary correlation of x
    with the taps of phase r placed at offsets d. Returns `table` of shape
    (stride, width) holding the tap index t (or -1) for phase r and offset
    d = d_min + column, together with d_min and d_max.
    """
    pad_lo = _same_transpose_padding(kernel, stride)
    offsets = {}
    for r in range(stride):
        for t in range(kernel):
            if (t - pad_lo + r) % stride == 0:
                offsets[(r, t)] = (t - pad_lo + r) // stride
    d_min = min(offsets.values())
    d_max = max(offsets.values())
    table = -np.ones((stride, d_max - d_min + 1), dtype=np.int64)
    for (r, t), d in offsets.items():
        table[r, d - d_min] = t
    return table, d_min, d_max


def subpixel_kernel(kernel: jax.Array, strides: tuple[int, int]) -> tuple[jax.Array, list[tuple[int, int]]]:
    """Rearranges a ConvTranspose kernel (kh, kw, Cin, Cout) for the sub-pixel form.

    Returns the stride-1 kernel (mh, mw, Cin, sh*sw*Cout) and the input padding.
    """
    kh, kw, cin, cout = kernel.shape
    (sh, sw) = strides
    table_h, dmin_h, dmax_h = _phase_taps(kh, sh)
    table_w, dmin_w, dmax_w = _phase_taps(kw, sw)
    # Append one zero tap so that index -1 (no tap) gathers zeros.
    padded = jnp.concatenate([kernel, jnp.zeros((1, kw, cin, cout), kernel.dtype)], axis=0)
    padded = jnp.concatenate([padded, jnp.zeros((kh + 1, 1, cin, cout), kernel.dtype)], axis=1)
    th = np.where(table_h < 0, kh, table_h)  # (sh, mh)
    tw = np.where(table_w < 0, kw, table_w)  # (sw, mw)
    # gathered[rh, a, rw, b] = kernel[th[rh, a], tw[rw, b]]
    gathered = padded[th[:, :, None, None], tw[None, None, :, :]]  # (sh, mh, sw, mw, Cin, Cout)
    gathered = gathered.transpose(1, 3, 4, 0, 2, 5)  # (mh, mw, Cin, sh, sw, Cout)
    mh, mw = gathered.shape[:2]
    stride1 = gathered.reshape(mh, mw, cin, sh * sw * cout)
    padding = [(-dmin_h, dmax_h), (-dmin_w, dmax_w)]
    return stride1, padding


def _phase_windows(kernel: int, stride: int) -> list[tuple[np.ndarray, tuple[int, int]]] | None:
    """One axis: for each output phase r, its taps as a window and the padding that aligns it.

    With kernel 4 and stride 2 (every VQ-VAE upsampling) the sub-pixel kernel spans
    3 offsets, but phase 0 uses only the offsets (-1, 0) and phase 1 only (0, 1).
    Phase r's window covers its offsets d_start .. d_start + m - 1; `taps` (m,)
    holds the kernel tap of each (the index `kernel`, a zero tap, where there is
    none), and the padding (-d_start, d_start + m - 1) makes a stride-1
    correlation of x with those taps return phase r at every input position.
    None if some phase has no tap at all (kernel < stride).
    """
    table, d_min, _ = _phase_taps(kernel, stride)
    windows = []
    for row in table:
        columns = np.nonzero(row >= 0)[0]
        if not columns.size:
            return None
        first, last = columns[0], columns[-1]
        taps = np.where(row[first : last + 1] < 0, kernel, row[first : last + 1])
        d_start, m = d_min + first, last - first + 1
        windows.append((taps, (int(-d_start), int(d_start + m - 1))))
    return windows


def phase_kernels(kernel: jax.Array, strides: tuple[int, int]) -> list[list[tuple[jax.Array, list]]] | None:
    """A ConvTranspose kernel (kh, kw, Cin, Cout) as one stride-1 kernel per output phase.

    Returns `out[rh][rw] = (k, padding)`: a stride-1 correlation of the input with
    `k` (mh, mw, Cin, Cout) under `padding` gives output pixels (s_h i + rh,
    s_w j + rw) for every input position (i, j). For kernel 4 / stride 2 these are
    four 2x2 kernels: 16 multiply-adds per input pixel and channel pair instead of
    the 36 of the 3x3 sub-pixel kernel (which holds every phase's taps over the
    union of their offsets, mostly zeros). None when `_phase_windows` is None.
    """
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    windows_h, windows_w = _phase_windows(kh, sh), _phase_windows(kw, sw)
    if windows_h is None or windows_w is None:
        return None
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # Index kh / kw: a zero tap.
    return [
        [(padded[taps_h[:, None], taps_w[None, :]], [pad_h, pad_w]) for taps_w, pad_w in windows_w]
        for taps_h, pad_h in windows_h
    ]


class SubpixelConvTranspose(nn.Module):
    """`nn.ConvTranspose(padding='SAME')` computed as stride-1 convolutions + depth-to-space.

    By default one convolution per output phase, each with only that phase's taps
    (`phase_kernels`; kernel 4 / stride 2: four 2x2 convolutions); with
    `per_phase=False` one convolution with the sub-pixel kernel holding every
    phase (`subpixel_kernel`; kernel 4 / stride 2: one 3x3 convolution to 4x the
    channels). Measured on a 2-core CPU (docs/lab/speed.md): the
    per-phase form's forward + backward takes about half the sub-pixel form's time.

    Parameters are named and shaped exactly as in `nn.ConvTranspose`
    (`kernel` (kh, kw, Cin, Cout), `bias` (Cout,)), so checkpoints and the
    equivalence test can swap one for the other.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int]
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    per_phase: bool = (
        True  # One convolution per output phase (`phase_kernels`); False: one 3x3-style sub-pixel conv.
    )

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        sh, sw = self.strides
        cin = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, cin, self.features), self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        kernels = phase_kernels(kernel, (sh, sw)) if self.per_phase else None
        if kernels is None:
            stride1, padding = subpixel_kernel(kernel, (sh, sw))
            y = jax.lax.conv_general_dilated(
                x, stride1, window_strides=(1, 1), padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            y = depth_to_space(y, (sh, sw))
        else:  # One convolution per output phase, interleaved (`phase_kernels`).
            phases = jnp.stack(
                [
                    jnp.stack(
                        [
                            jax.lax.conv_general_dilated(
                                x,
                                k,
                                window_strides=(1, 1),
                                padding=pad,
                                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                            )
                            for k, pad in row
                        ],
                        axis=3,
                    )
                    for row in kernels
                ],
                axis=3,
            )  # (B, H, W, sh, sw, C)
            b, h, w = x.shape[:3]
            y = phases.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * sh, w * sw, self.features)
        if bias is not None:
            y = y + bias
        return y


class ResidualStack(nn.Module):
    """Residual blocks of the VQ-VAE paper (section 4.1): ReLU, 3x3 conv, ReLU, 1x1 conv, add.

    As in the paper and the Sonnet example, a final ReLU follows the stack.
    """

    num_hiddens: int
    num_residual_layers: int
    num_residual_hiddens: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        for i in range(self.num_residual_layers):
            r = nn.relu(h)
            r = nn.Conv(
                self.num_residual_hiddens, (3, 3), padding="SAME", dtype=self.dtype, name=f"res3x3_{i}"
            )(r)
            r = nn.relu(r)
            r = nn.Conv(self.num_hiddens, (1, 1), dtype=self.dtype, name=f"res1x1_{i}")(r)
            h = h + r
        return nn.relu(h)


# 4x4 / stride-2 upsampling: `SubpixelConvTranspose` (per-phase) or `nn.ConvTranspose`, the same
# function with the same parameters; which one 'auto' picks per backend, and why: `backend.CHOICES`.
UPSAMPLERS = backend.CHOICES["upsample"].forms


def upsampling_layer(
    kind: str,
    features: int,
    dtype: Any,
    name: str,
    use_bias: bool = True,
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal(),
) -> nn.Module:
    """A 4x4, stride-2 transposed convolution ('SAME') in the form `kind` names (config `model.upsample`:
    'auto' picks the backend's default, `vqlatent.backend.CHOICES['upsample']`)."""
    kind = backend.resolve("model.upsample", kind)
    kwargs = dict(use_bias=use_bias, kernel_init=kernel_init, dtype=dtype, name=name)
    if kind == "subpixel":
        return SubpixelConvTranspose(features, (4, 4), (2, 2), **kwargs)
    return nn.ConvTranspose(features, (4, 4), (2, 2), padding="SAME", **kwargs)
