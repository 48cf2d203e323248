r"""Per-kernel speed of the models' convolutions under XLA:CPU flag sets, beside PyTorch's.

  python experiments/xla_cpu_flags_bench.py [--rounds=3] [--repeats=5] [--core=0] \
      [--sets=default,no_ynn_xnn,...] [--layers=mnist,vqvae2_64] [--json_out=FILE]

XLA reads `XLA_FLAGS` once, when its backend starts, so each flag set runs in its own process
(this script with `--worker`), pinned to one core (`taskset -c CORE`); the sets and PyTorch (one
thread) alternate round by round so that all see the same machine. Every kernel is timed
alone, jitted: the forward convolution, its input gradient and its kernel gradient, for the layers
of the MNIST VQ-VAE (batch 128) and the VQ-VAE-2 at 64x64 (batch 16). The clock is the process's
CPU time (`time.process_time`: all its threads, on its one core), which on a shared machine
measures the work of the kernel rather than the time other processes held the core; on a quiet
machine it equals wall time. Prints GFLOP/s per kernel and set (median over rounds), and checks
that every set computes the same values as the jaxlib default (max |difference| relative to max |value|).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (one process per set and round).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per kernel in a process (median).")
_CORE = flags.DEFINE_integer("core", 0, "The CPU core every process is pinned to.")
_SETS = flags.DEFINE_string("sets", None, "Comma-separated flag-set names (default: all).")
_LAYERS = flags.DEFINE_string("layers", "mnist,vqvae2_64", "Layer groups: mnist, vqvae2_64.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time PyTorch's convolutions (one thread).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write all results to this JSON file.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: 'jax' or 'torch' (time the layers, print JSON).")

_OFF = "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_xnn_fusion_type="
# name -> XLA_FLAGS. 'default' is jaxlib 0.10.2's own behaviour (YNNPACK/XNNPACK library fusions on).
FLAG_SETS = {
    "default": "",
    "no_ynn": "--xla_cpu_experimental_ynn_fusion_type=",
    "no_ynn_xnn": _OFF,
    "no_ynn_xnn+onednn": _OFF + " --xla_cpu_use_onednn=true",
    "no_ynn_xnn+onednn_fusion": _OFF
    + " --xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "no_ynn_xnn+onednn_custom_call": _OFF + " --xla_cpu_experimental_onednn_custom_call=true",
    "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "ynn_dot_only": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT "
    "--xla_cpu_experimental_xnn_fusion_type=",
}

# (group, name, input NHWC, kernel HWIO, stride, padding (low, high) per spatial dim)
LAYERS = (
    ("mnist", "enc 4x4/2 1->64 28x28", (128, 28, 28, 1), (4, 4, 1, 64), 2, (1, 1)),
    ("mnist", "enc 4x4/2 64->128 14x14", (128, 14, 14, 64), (4, 4, 64, 128), 2, (1, 1)),
    ("mnist", "3x3 128->128 7x7", (128, 7, 7, 128), (3, 3, 128, 128), 1, (1, 1)),
    ("mnist", "res 3x3 128->32 7x7", (128, 7, 7, 128), (3, 3, 128, 32), 1, (1, 1)),
    ("mnist", "res 1x1 32->128 7x7", (128, 7, 7, 32), (1, 1, 32, 128), 1, (0, 0)),
    ("mnist", "up phase 2x2 128->64 7x7", (128, 7, 7, 128), (2, 2, 128, 64), 1, (1, 0)),
    ("vqvae2_64", "enc 4x4/2 3->64 64x64", (16, 64, 64, 3), (4, 4, 3, 64), 2, (1, 1)),
    ("vqvae2_64", "enc 4x4/2 64->128 32x32", (16, 32, 32, 64), (4, 4, 64, 128), 2, (1, 1)),
    ("vqvae2_64", "3x3 128->128 16x16", (16, 16, 16, 128), (3, 3, 128, 128), 1, (1, 1)),
    ("vqvae2_64", "res 3x3 128->32 16x16", (16, 16, 16, 128), (3, 3, 128, 32), 1, (1, 1)),
    ("vqvae2_64", "up phase 2x2 128->64 32x32", (16, 32, 32, 128), (2, 2, 128, 64), 1, (1, 0)),
    ("vqvae2_64", "3x3 128->128 64x64", (16, 64, 64, 128), (3, 3, 128, 128), 1, (1, 1)),
)
KINDS = ("fwd", "dx", "dw")


def _layers(groups: str):
    wanted = set(groups.split(","))
    return [layer for layer in LAYERS if layer[0] in wanted]


def _flops(x_shape, w_shape, stride) -> float:
    b, h, w, _ = x_shape
    kh, kw, cin, cout = w_shape
    return 2.0 * b * (h // stride) * (w // stride) * kh * kw * cin * cout


def _cpu_median(fn, repeats: int) -> float:
    fn()  # Warm-up (compiles).
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def _jax_worker(groups: str, repeats: int) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    out = {}
    for _, name, xs, ws, stride, pad in _layers(groups):
        pads = [pad, pad]

        def conv(x, w, stride=stride, pads=pads):
            return jax.lax.conv_general_dilated(
                x, w, (stride,) * 2, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        x = jax.random.normal(jax.random.key(0), xs)
        w = jax.random.normal(jax.random.key(1), ws) / (ws[0] * ws[1] * ws[2]) ** 0.5
        g = jax.random.normal(jax.random.key(2), jax.eval_shape(conv, x, w).shape)
        fns = {
            "fwd": jax.jit(conv),
            "dx": jax.jit(jax.grad(lambda x, w, g=g, conv=conv: jnp.sum(conv(x, w) * g), 0)),
            "dw": jax.jit(jax.grad(lambda x, w, g=g, conv=conv: jnp.sum(conv(x, w) * g), 1)),
        }
        for kind, fn in fns.items():
            value = fn(x, w)
            seconds = _cpu_median(lambda fn=fn, x=x, w=w: jax.block_until_ready(fn(x, w)), repeats)
            out[f"{name}|{kind}"] = {
                "seconds": seconds,
                "gflops": _flops(xs, ws, stride) / seconds / 1e9,
                "checksum": [float(v) for v in jnp.ravel(value)[:: max(1, value.size // 4096)][:4096]],
            }
    return out


def _torch_worker(groups: str, repeats: int) -> dict:
    import torch  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(1)
    out = {}
    for _, name, xs, ws, stride, pad in _layers(groups):
        x = torch.randn(xs[0], xs[3], xs[1], xs[2], requires_grad=True)
        w = torch.randn(ws[3], ws[2], ws[0], ws[1], requires_grad=True)
        # PyTorch pads symmetrically; an asymmetric (1, 0) pad is an explicit F.pad first (as our port does).
        x_in = (lambda t: torch.nn.functional.pad(t, (1, 0, 1, 0))) if pad == (1, 0) else (lambda t: t)
        padding = 0 if pad == (1, 0) else pad[0]

        def fwd(x=x, w=w, x_in=x_in, padding=padding, stride=stride):
            return torch.nn.functional.conv2d(x_in(x), w, stride=stride, padding=padding)

        y = fwd()
        g = torch.randn_like(y)

        def run(kind, fwd=fwd, y=y, g=g, x=x, w=w):
            if kind == "fwd":
                with torch.no_grad():
                    fwd()
                return
            # The backward kernel alone: the graph of one forward is kept and differentiated again.
            torch.autograd.grad(y, (x,) if kind == "dx" else (w,), g, retain_graph=True)

        for kind in KINDS:
            seconds = _cpu_median(lambda kind=kind: run(kind), repeats)
            out[f"{name}|{kind}"] = {"seconds": seconds, "gflops": _flops(xs, ws, stride) / seconds / 1e9}
    return out


def _run_worker(kind: str, xla_flags: str | None) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", VQLATENT_XLA_FLAGS="0")
    env.pop("XLA_FLAGS", None)
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    cmd = ["taskset", "-c", str(_CORE.value), sys.executable, os.path.abspath(__file__), f"--worker={kind}"]
    cmd += [f"--layers={_LAYERS.value}", f"--repeats={_REPEATS.value}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} with XLA_FLAGS={xla_flags!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if _WORKER.value:
        fn = _jax_worker if _WORKER.value == "jax" else _torch_worker
        print(json.dumps(fn(_LAYERS.value, _REPEATS.value)))
        return
    names = _SETS.value.split(",") if _SETS.value else list(FLAG_SETS)
    unknown = [n for n in names if n not in FLAG_SETS]
    if unknown:
        raise app.UsageError(f"Unknown --sets {unknown}; choose from {list(FLAG_SETS)}.")
    runs: dict[str, list[dict]] = {n: [] for n in names + (["torch"] if _TORCH.value else [])}
    for r in range(_ROUNDS.value):
        for name in names:
            runs[name].append(_run_worker("jax", FLAG_SETS[name]))
        if _TORCH.value:
            runs["torch"].append(_run_worker("torch", None))
        print(f"round {r + 1}/{_ROUNDS.value} done", file=sys.stderr, flush=True)

    keys = list(runs[names[0]][0])
    table = {n: {k: statistics.median(run[k]["gflops"] for run in runs[n]) for k in keys} for n in runs}
    reference = runs[names[0]][0]
    exact = {}
    for n in names:
        worst = 0.0
        for k in keys:
            a, b = reference[k]["checksum"], runs[n][0][k]["checksum"]
            scale = max(abs(v) for v in a) or 1.0
            worst = max(worst, max(abs(x - y) for x, y in zip(a, b)) / scale)
        exact[n] = worst
    cols = list(runs)
    print("GFLOP/s per kernel (median of rounds; process CPU time, one core)\n")
    print("| layer | kernel | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for k in keys:
        layer, kind = k.split("|")
        print(f"| {layer} | {kind} | " + " | ".join(f"{table[c][k]:.1f}" for c in cols) + " |")
    totals = {c: sum(statistics.median(run[k]["seconds"] for run in runs[c]) for k in keys) for c in cols}
    print("| **all kernels, seconds** | | " + " | ".join(f"{totals[c]:.3f}" for c in cols) + " |")
    print("\nmax |difference| / max |value| against " + names[0] + ": " + json.dumps(exact))
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
            json.dump(
                {"flag_sets": {n: FLAG_SETS[n] for n in names}, "gflops": table, "exact": exact}, f, indent=1
            )


if __name__ == "__main__":
    app.run(main)
