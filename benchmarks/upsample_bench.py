r"""Forward + backward time of one 4x4 / stride-2 upsampling layer, three ways, side by side.

  python benchmarks/upsample_bench.py [--repeats=5] [--conv_transpose]

The three compute the same function with the same parameters (tests/test_nets.py):
  conv_transpose  flax `nn.ConvTranspose(padding='SAME')` (XLA's strided transposed conv);
  subpixel        one stride-1 3x3 convolution to 4x the channels + depth-to-space;
  per_phase       four stride-1 2x2 convolutions, one per output phase, interleaved
                  (`SubpixelConvTranspose`'s default).
Shapes are the upsampling layers of the configs (input H = W, batch, Cin -> Cout).
Each round times every implementation once (median of `--repeats` calls), so all
see the same machine load; the table has the median over rounds.
"""

from __future__ import annotations

import statistics

import bench_timing  # benchmarks/ (the script's directory) is on sys.path.
import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags  # pylint: disable=g-multiple-import

from vqlatent import backend
from vqlatent.nets.layers import SubpixelConvTranspose

backend.set_cpu_xla_flags()  # A command line: the XLA:CPU flags `python -m vqlatent.main` sets.

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per implementation and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
_CONV_T = flags.DEFINE_bool("conv_transpose", False, "Also time nn.ConvTranspose (seconds per call).")
_SMOKE = flags.DEFINE_bool("smoke", False, "One tiny shape (proves the script runs; numbers mean nothing).")

# (name, batch, input size, Cin, Cout)
SHAPES = (
    ("VQ-VAE MNIST decoder 7->14", 128, 7, 128, 64),
    ("VQ-VAE-2 64x64 b16, 16->32", 16, 16, 128, 128),
    ("VQ-VAE-2 64x64 b16, 32->64", 16, 32, 128, 64),
    ("VQ-VAE-2 256x256 b4, 64->128", 4, 64, 128, 64),
)


def main(argv):
    del argv
    impls = {
        "subpixel": lambda c: SubpixelConvTranspose(c, (4, 4), (2, 2), per_phase=False),
        "per_phase": lambda c: SubpixelConvTranspose(c, (4, 4), (2, 2), per_phase=True),
    }
    if _CONV_T.value:
        impls["conv_transpose"] = lambda c: nn.ConvTranspose(c, (4, 4), (2, 2), padding="SAME")
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}, forward + backward (input and kernel "
        f"gradients), median ms"
    )
    print("| layer | " + " | ".join(impls) + " | subpixel / per_phase |")
    print("|---" * (len(impls) + 2) + "|")
    for name, batch, size, cin, cout in (("smoke", 2, 4, 8, 8),) if _SMOKE.value else SHAPES:
        x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
        steps = {}
        for key, make in impls.items():
            module = make(cout)
            params = module.init(jax.random.key(1), x)
            loss = lambda p, x, m=module: jnp.sum(jnp.square(m.apply(p, x)))
            steps[key] = (jax.jit(jax.grad(loss, argnums=(0, 1))), params)
        rounds = {key: [] for key in impls}
        for _ in range(_ROUNDS.value):
            for key, (step, params) in steps.items():
                rounds[key].append(bench_timing.median_seconds(step, params, x, repeats=_REPEATS.value))
        ms = {key: 1e3 * statistics.median(v) for key, v in rounds.items()}
        print(
            f"| {name} | "
            + " | ".join(f"{ms[k]:.1f}" for k in impls)
            + f" | {ms['subpixel'] / ms['per_phase']:.2f}x |"
        )


if __name__ == "__main__":
    app.run(main)
