r"""What binds the CPU train step after the flags: the layout copies around the kernel gradients.

  python experiments/layout_bench.py [--repeats=30] [--core=0] [--sets=package,fusion_emitters_off,...]

XLA:CPU computes the kernel gradient of an NHWC convolution as a convolution whose "batch" is the
input channel and whose "feature" is the batch, so it first writes every activation that feeds a
kernel gradient a second time, in [C, H, W, N] order: the `transpose_copy_fusion` instructions of
`experiments/profile_step.py`, 28-32% of the thunk time of the MNIST VQ-VAE and the 64x64 VQ-VAE-2
steps. This script times, for the activation shapes of those two models, one core, process CPU time:

1. the elementwise producer alone (bias add + ReLU) and the same with the [C, H, W, N] copy fused
   in (what the step runs), with the bytes per second of the copy, under each XLA flag set
   (one process per set: XLA reads `XLA_FLAGS` once);
2. three ways to compute a convolution's kernel gradient, forward + both gradients, jitted: XLA's own
   (the transposed convolution above), im2col (the kh*kw shifted views concatenated, then one
   matmul over N*H*W) and, for stride 1, per tap (the padded activations flattened to
   [N*Hp*Wp, C], so that the tap (a, b) is the contiguous rows from a*Wp + b: kh*kw matmuls
   contracting over the rows, with no [C, H, W, N] copy), with the largest difference from XLA's.

Flag sets are `package` (vqlatent's CPU flags, `vqlatent.backend.CPU_XLA_FLAGS`) plus one more flag
each; see FLAG_SETS.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed calls per kernel (median).")
_CORE = flags.DEFINE_integer("core", 0, "The CPU core every process is pinned to.")
_SETS = flags.DEFINE_string("sets", None, "Comma-separated flag-set names (default: all).")
_WORKER = flags.DEFINE_string("worker", None, "Internal: 'copies' or 'kernel_gradients'.")

_PACKAGE = (
    "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT "
    "--xla_cpu_experimental_xnn_fusion_type="
)
FLAG_SETS = {
    "package": _PACKAGE,
    "fusion_emitters_off": _PACKAGE + " --xla_cpu_use_fusion_emitters=false",
    "tiling_propagation": _PACKAGE + " --xla_cpu_experimental_enable_tiling_propagation=true",
    "vector_width_512": _PACKAGE + " --xla_cpu_prefer_vector_width=512",
    "ynn_eltwise": _PACKAGE.replace("INDIVIDUAL_DOT", "INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_ELTWISE"),
    "xnn_eltwise": _PACKAGE + "LIBRARY_FUSION_TYPE_ELTWISE",
    "xnn_graph_greedy": _PACKAGE
    + " --xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
}

# Activations that feed a kernel gradient (NHWC).
ACTIVATIONS = (
    ("MNIST 14x14x64 b128", (128, 14, 14, 64)),
    ("MNIST 7x7x128 b128", (128, 7, 7, 128)),
    ("VQ-VAE-2 32x32x64 b16", (16, 32, 32, 64)),
    ("VQ-VAE-2 16x16x128 b16", (16, 16, 16, 128)),
)
# (name, input NHWC, kernel HWIO, stride); padding 1.
CONVS = (
    ("MNIST 3x3 128->128 7x7", (128, 7, 7, 128), (3, 3, 128, 128), 1),
    ("MNIST 4x4/2 64->128 14x14", (128, 14, 14, 64), (4, 4, 64, 128), 2),
    ("VQ-VAE-2 3x3 128->128 16x16", (16, 16, 16, 128), (3, 3, 128, 128), 1),
)


def _median_process_ms(fn, *args) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(_REPEATS.value):
        start = time.process_time()
        jax.block_until_ready(fn(*args))
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def _copies() -> dict:
    import jax
    import jax.numpy as jnp

    out = {}
    for name, shape in ACTIVATIONS:
        x = jax.random.normal(jax.random.PRNGKey(0), shape)
        b = jnp.ones(shape[-1])
        plain = jax.jit(lambda x, b: jax.nn.relu(x + b))
        copied = jax.jit(lambda x, b: jnp.transpose(jax.nn.relu(x + b), (3, 1, 2, 0)))
        out[name] = dict(
            plain_ms=_median_process_ms(plain, x, b), with_copy_ms=_median_process_ms(copied, x, b)
        )
        out[name]["bytes"] = x.size * 4
    return out


def _patches(x, kh, kw, stride):
    import jax.numpy as jnp

    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    views = [
        x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(views, axis=-1)  # (N, Ho, Wo, kh*kw*C), flattened like HWIO


def _taps_kernel_gradient(x, g, kh, kw):
    """dw[a, b] = sum over rows of X[o : o + M]^T G, o = a * Wp + b (stride 1, padding 1)."""
    import jax.numpy as jnp
    from jax import lax

    n, h, w, c = x.shape
    hp, wp = h + 2, w + 2  # Padding 1 on each side; a kh x kw kernel reads rows a .. a + h - 1.
    rows = n * hp * wp
    xf = jnp.pad(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(rows, c), ((0, hp * wp), (0, 0)))
    # The output gradient at the top-left of each padded frame (Ho = h + 3 - kh rows), zeros elsewhere.
    ho, wo = g.shape[1], g.shape[2]
    gf = jnp.pad(g, ((0, 0), (0, hp - ho), (0, wp - wo), (0, 0))).reshape(rows, g.shape[-1])
    taps = [
        lax.dot_general(
            xf[a * wp + b : a * wp + b + rows], gf, (((0,), (0,)), ((), ())), precision=lax.Precision.HIGHEST
        )
        for a in range(kh)
        for b in range(kw)
    ]
    return jnp.stack(taps)


def _kernel_gradients() -> dict:
    import jax
    import jax.numpy as jnp
    from jax import lax

    hi = lax.Precision.HIGHEST
    out = {}
    for name, xshape, wshape, stride in CONVS:

        def conv(x, w, stride=stride):
            return lax.conv_general_dilated(
                x,
                w,
                (stride,) * 2,
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=hi,
            )

        @jax.custom_vjp
        def conv_im2col(x, w):
            return conv(x, w)

        def fwd(x, w):
            return conv(x, w), (x, w)

        def bwd(res, g, stride=stride):
            x, w = res
            dx = jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
            dw = jnp.einsum("nhwk,nhwo->ko", _patches(x, w.shape[0], w.shape[1], stride), g, precision=hi)
            return dx, dw.reshape(w.shape)

        conv_im2col.defvjp(fwd, bwd)

        @jax.custom_vjp
        def conv_taps(x, w):
            return conv(x, w)

        def bwd_taps(res, g):
            x, w = res
            dx = jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
            return dx, _taps_kernel_gradient(x, g, w.shape[0], w.shape[1]).reshape(w.shape)

        conv_taps.defvjp(fwd, bwd_taps)
        forms = (("xla", conv), ("im2col", conv_im2col)) + ((("taps", conv_taps),) if stride == 1 else ())
        x = jax.random.normal(jax.random.PRNGKey(0), xshape)
        w = 0.05 * jax.random.normal(jax.random.PRNGKey(1), wshape)
        steps = {
            label: jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))
            for label, f in forms
        }
        grads = {label: step(x, w) for label, step in steps.items()}
        scale = float(jnp.max(jnp.abs(grads["xla"][1])))
        out[name] = {label: _median_process_ms(step, x, w) for label, step in steps.items()}
        out[name]["max_rel_diff"] = max(
            float(jnp.max(jnp.abs(grads["xla"][1] - grads[label][1]))) / scale for label in steps
        )
    return out


def _run(worker: str, xla_flags: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=xla_flags, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = ["taskset", "-c", str(_CORE.value), sys.executable, __file__, f"--worker={worker}"]
    cmd.append(f"--repeats={_REPEATS.value}")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv) -> None:
    del argv
    if _WORKER.value:
        print(json.dumps(_copies() if _WORKER.value == "copies" else _kernel_gradients()))
        return
    names = _SETS.value.split(",") if _SETS.value else list(FLAG_SETS)
    unknown = sorted(set(names) - set(FLAG_SETS))
    if unknown:
        raise app.UsageError(f"Unknown --sets {unknown}; choose from {sorted(FLAG_SETS)}.")
    print(
        f"1. bias + ReLU alone / with the [C,H,W,N] copy fused in: ms, and the copy's GB/s (core {_CORE.value})"
    )
    print("| flag set | " + " | ".join(name for name, _ in ACTIVATIONS) + " |")
    print("|---|" + "---|" * len(ACTIVATIONS))
    for set_name in names:
        res = _run("copies", FLAG_SETS[set_name])
        cells = []
        for name, _ in ACTIVATIONS:
            r = res[name]
            gbs = r["bytes"] / max(r["with_copy_ms"] - r["plain_ms"], 1e-6) / 1e6
            cells.append(f"{r['plain_ms']:.2f} / {r['with_copy_ms']:.2f} ({gbs:.1f} GB/s)")
        print(f"| {set_name} | " + " | ".join(cells) + " |", flush=True)
    print("\n2. forward + both gradients, ms (package flags): XLA's kernel gradient vs im2col vs per tap")
    print("| convolution | XLA | im2col | per tap | max relative difference of the kernel gradient |")
    print("|---|---|---|---|---|")
    for name, r in _run("kernel_gradients", FLAG_SETS["package"]).items():
        taps = f"{r['taps']:.1f}" if "taps" in r else "(stride 2)"
        print(f"| {name} | {r['xla']:.1f} | {r['im2col']:.1f} | {taps} | {r['max_rel_diff']:.1e} |")


if __name__ == "__main__":
    app.run(main)
