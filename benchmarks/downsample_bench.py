r"""The 4x4 / stride-2 convolutions of the models: XLA's gradients against the per-phase ones.

  taskset -c 0 python benchmarks/downsample_bench.py [--repeats=7] [--rounds=3] [--clock=process] [--smoke]

For every strided convolution shape of the MNIST VQ-VAE, the VQ-VAE-2 at 64x64 and 256x256 and InfoGAN's
discriminator, times (median ms, forms alternating in each round, the best round reported):
  - `dx`: the input gradient alone, `nn.Conv` (XLA: one convolution over the zero-dilated output
    gradient) against `PhaseGradConv` (`vqlatent.nets.downsample`: four stride-1 input gradients);
  - `all`: forward + input, kernel and bias gradients of each layer (what a train step pays);
  - `dw`: the kernel gradient alone, XLA's against a per-phase kernel gradient (four stride-1 kernel
    gradients over the phases of the padded input; not used: it is not faster, see the output).
Each row also prints the largest relative difference of the per-phase results from XLA's.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax import lax  # noqa: E402

import vqlatent  # noqa: E402,F401  (the package's XLA:CPU flags, before JAX starts)
from vqlatent import backend
from vqlatent.nets.downsample import PhaseGradConv  # noqa: E402

backend.set_cpu_xla_flags()  # A command line: the XLA:CPU flags `python -m vqlatent.main` sets.

_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per form and round (median).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (the best is reported).")
_CLOCK = flags.DEFINE_enum("clock", "process", ["process", "wall"], "Process CPU time or wall time.")
_SMOKE = flags.DEFINE_bool("smoke", False, "One tiny shape (proves the script runs; numbers mean nothing).")

PAD1 = ((1, 1), (1, 1))
# (label, input shape NHWC, output channels, padding)
SHAPES = (
    ("MNIST VQ-VAE down_1, b128 14x14 64->128", (128, 14, 14, 64), 128, PAD1),
    ("InfoGAN D conv0, b128 28x28 1->64 (image: stays nn.Conv)", (128, 28, 28, 1), 64, "SAME"),
    ("InfoGAN D conv1, b128 14x14 64->128", (128, 14, 14, 64), 128, "SAME"),
    ("VQ-VAE-2 64x64 down_1, b16 32x32 64->128", (16, 32, 32, 64), 128, PAD1),
    ("VQ-VAE-2 64x64 top down_0, b16 16x16 128->128", (16, 16, 16, 128), 128, PAD1),
    ("VQ-VAE-2 256x256 down_1, b4 128x128 64->128", (4, 128, 128, 64), 128, PAD1),
    ("VQ-VAE-2 256x256 top down_0, b4 64x64 128->128", (4, 64, 64, 128), 128, PAD1),
)
DN = ("NHWC", "HWIO", "NHWC")


def _clock() -> float:
    return time.process_time() if _CLOCK.value == "process" else time.perf_counter()


def _median_ms(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_REPEATS.value):
        start = _clock()
        jax.block_until_ready(fn(*args))
        times.append(_clock() - start)
    return 1000 * float(np.median(times))


def _kernel_gradient_per_phase(kernel, x, g):
    """d(sum y * g)/dkernel as four stride-1 kernel gradients over the padded input's phases (PAD1)."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = []
    for a in (0, 1):
        columns = []
        for b in (0, 1):
            xab = xp[:, a::2, b::2]

            def conv(k, xab=xab):
                return lax.conv_general_dilated(xab, k, (1, 1), "VALID", dimension_numbers=DN)

            columns.append(jax.vjp(conv, kernel[a::2, b::2])[1](g)[0])
        rows.append(jnp.stack(columns, axis=2))  # (2, 2, b, Cin, Cout) over (p, q, b)
    return jnp.stack(rows, axis=1).reshape(kernel.shape)  # (p, a, q, b) -> tap (2p + a, 2q + b)


def _grads_all(module):
    """Forward + gradients w.r.t. the parameters and the input, for an output cotangent."""
    return jax.jit(lambda v, x, g: jax.vjp(module.apply, v, x)[1](g))


def _grads_x(module):
    """Forward + gradient w.r.t. the input only."""
    return jax.jit(lambda v, x, g: jax.vjp(lambda x_: module.apply(v, x_), x)[1](g))


def _relative(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


def main(argv):
    del argv
    print(f"clock={_CLOCK.value}, repeats={_REPEATS.value}, rounds={_ROUNDS.value}, {jax.devices()[0]}")
    print(
        "| layer | dx: XLA | dx: per phase | x | all: XLA | all: per phase | x | dw: XLA | dw: per phase | x | rel. diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    shapes = (("smoke", (2, 8, 8, 16), 16, PAD1),) if _SMOKE.value else SHAPES
    for label, shape, features, padding in shapes:
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], shape)
        kwargs = dict(strides=(2, 2), padding=padding)
        xla, phase = nn.Conv(features, (4, 4), **kwargs), PhaseGradConv(features, (4, 4), **kwargs)
        variables = xla.init(keys[1], x)
        g = jax.random.normal(keys[2], xla.apply(variables, x).shape)

        kernel = variables["params"]["kernel"]
        pads = padding if padding != "SAME" else lax.padtype_to_pads(shape[1:3], (4, 4), (2, 2), "SAME")

        def dw_xla(k, x, g, pads=tuple(pads)):
            return jax.vjp(lambda k_: lax.conv_general_dilated(x, k_, (2, 2), pads, dimension_numbers=DN), k)[
                1
            ](g)

        forms = {
            "dx_xla": (_grads_x(xla), (variables, x, g)),
            "dx_phase": (_grads_x(phase), (variables, x, g)),
            "all_xla": (_grads_all(xla), (variables, x, g)),
            "all_phase": (_grads_all(phase), (variables, x, g)),
            "dw_xla": (jax.jit(dw_xla), (kernel, x, g)),
        }
        if tuple(pads) == PAD1:
            forms["dw_phase"] = (jax.jit(_kernel_gradient_per_phase), (kernel, x, g))
        best = {name: float("inf") for name in forms}
        for _ in range(_ROUNDS.value):
            for name, (fn, args) in forms.items():
                best[name] = min(best[name], _median_ms(fn, *args))
        diff = _relative(forms["dx_xla"][0](variables, x, g)[0], forms["dx_phase"][0](variables, x, g)[0])
        if "dw_phase" in forms:
            diff = max(
                diff, _relative(forms["dw_xla"][0](kernel, x, g)[0], forms["dw_phase"][0](kernel, x, g))
            )
        dw_phase = best.get("dw_phase")
        cells = [
            f"{best['dx_xla']:.1f}",
            f"{best['dx_phase']:.1f}",
            f"{best['dx_xla'] / best['dx_phase']:.2f}x",
            f"{best['all_xla']:.1f}",
            f"{best['all_phase']:.1f}",
            f"{best['all_xla'] / best['all_phase']:.2f}x",
            f"{best['dw_xla']:.1f}",
            "-" if dw_phase is None else f"{dw_phase:.1f}",
            "-" if dw_phase is None else f"{best['dw_xla'] / dw_phase:.2f}x",
            f"{diff:.1e}",
        ]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    app.run(main)
