r"""A tried-and-rejected optimisation, kept measurable: 4x4 / stride-2 convolutions (the
VQ-VAE encoders' downsampling) as space-to-depth + a stride-1 2x2 convolution.

  python experiments/strided_conv_bench.py [--repeats=5]

Both forms compute the same function (checked below on every shape); forward and
forward + backward (input and kernel gradients) are timed side by side. Measured
on a 2-core CPU (docs/lab/speed.md): XLA's strided convolution is as
fast or faster, so the models keep `nn.Conv(strides=2)`.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags  # pylint: disable=g-multiple-import

# Run as a file: the repository root makes `benchmarks` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_timing  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per form and shape.")
_DN = ("NHWC", "HWIO", "NHWC")
# (name, input shape, output channels)
SHAPES = (
    ("VQ-VAE MNIST down_0", (128, 28, 28, 1), 64),
    ("VQ-VAE MNIST down_1", (128, 14, 14, 64), 128),
    ("VQ-VAE-2 64x64 b16 down_0", (16, 64, 64, 3), 64),
    ("VQ-VAE-2 64x64 b16 down_1", (16, 32, 32, 64), 128),
    ("VQ-VAE-2 256x256 b4 down_0", (4, 256, 256, 3), 64),
    ("VQ-VAE-2 256x256 b4 down_1", (4, 128, 128, 64), 128),
)


def strided(x, w):
    """flax nn.Conv(kernel 4, strides 2, padding 'SAME'): low/high padding 1."""
    return jax.lax.conv_general_dilated(x, w, (2, 2), [(1, 1), (1, 1)], dimension_numbers=_DN)


def space_to_depth(x, w):
    """The same: pad 1, fold 2x2 pixel blocks into channels, 2x2 VALID conv with the folded kernel."""
    b, h, width, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    hb, wb = (h + 2) // 2, (width + 2) // 2
    blocks = xp.reshape(b, hb, 2, wb, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hb, wb, 4 * c)
    kernel = w.reshape(2, 2, 2, 2, c, -1).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, -1)
    return jax.lax.conv_general_dilated(blocks, kernel, (1, 1), "VALID", dimension_numbers=_DN)


def main(argv):
    del argv
    print(
        "| layer | strided fwd ms | s2d fwd ms | strided fwd+bwd ms | s2d fwd+bwd ms |\n|---|---|---|---|---|"
    )
    for name, shape, out in SHAPES:
        x = jax.random.normal(jax.random.key(0), shape)
        w = jax.random.normal(jax.random.key(1), (4, 4, shape[-1], out))
        np.testing.assert_allclose(strided(x, w), space_to_depth(x, w), atol=1e-3, rtol=1e-4)
        ms = []
        for form in (strided, space_to_depth):
            grad = jax.grad(lambda x, w, f=form: jnp.sum(jnp.square(f(x, w))), argnums=(0, 1))
            ms.append(
                [
                    1e3 * bench_timing.median_seconds(jax.jit(fn), x, w, repeats=_REPEATS.value)
                    for fn in (form, grad)
                ]
            )
        print(f"| {name} | {ms[0][0]:.1f} | {ms[1][0]:.1f} | {ms[0][1]:.1f} | {ms[1][1]:.1f} |")


if __name__ == "__main__":
    app.run(main)
