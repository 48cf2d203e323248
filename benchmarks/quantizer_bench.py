r"""Our VectorQuantizerEMA against DeepMind Haiku's, side by side.

Two parts (`--mode=agreement|speed|memory|all`):

agreement  Random data; the same initial codebook in both (Haiku stores it
           transposed, (D, K)). For hk.nets.VectorQuantizerEMA, over 10
           training updates: encoding indices (exactly equal), quantize, loss,
           perplexity and the EMA state after every update (codebook, hidden
           cluster sizes, hidden dw, counter), max |difference|. For
           hk.nets.VectorQuantizer: indices, quantize, loss, perplexity and the
           gradients w.r.t. the inputs and the codebook.
speed      Forward + backward of one training step (EMA update included;
           gradient of sum(w * quantize) + loss w.r.t. the inputs), jitted, for
           N = 8192..65536 vectors, D = 64, K = 512..65536. The two
           implementations are called alternately (ours, Haiku, ours, ...) in
           one process, so both see the same machine load; the table gives
           medians and the ratio Haiku / ours (> 1: ours is faster).
memory     XLA's compiled memory analysis of the same step
           (`jit(f).lower(...).compile().memory_analysis()`: temp + argument +
           output bytes, the buffers live during the step) for both, also for
           shapes Haiku cannot run here (its N x K distance and one-hot
           matrices), and the peak RSS of a fresh process that runs only our
           K = 65536, N = 65536 step (VmHWM of /proc/self/status, which
           includes the Python/JAX runtime, the inputs and compilation).

Run in the venv made by benchmarks/haiku_env.sh (Haiku is not a dependency), or in any venv with
dm-haiku installed, from the repository root:

  bash benchmarks/haiku_env.sh VENV
  PYTHONPATH=. VENV/bin/python benchmarks/quantizer_bench.py --mode=all

Our quantizer scans the codebook in chunks of `--chunk_budget_mb` worth of
distances (chunk_size = budget / (4 N), a power of two, at most K), so its
memory is O(N x chunk) instead of O(N x K).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent import backend
from vqlatent.quantizers import VectorQuantizer, VectorQuantizerEMA

backend.set_cpu_xla_flags()  # A command line: the XLA:CPU flags `python -m vqlatent.main` sets.

SHAPES = [  # (N vectors, K codes); D = 64.
    (8192, 512),
    (8192, 4096),
    (8192, 65536),
    (65536, 512),
    (65536, 4096),
    (65536, 65536),
]
DIM = 64
GIB = 2.0**30


def chunk_size_for(num_vectors: int, num_codes: int, budget_mb: float) -> int | None:
    """Largest power-of-two chunk whose (N, chunk) float32 distances fit the budget."""
    chunk = 1
    while chunk * 2 * num_vectors * 4 <= budget_mb * 2**20:
        chunk *= 2
    return None if chunk >= num_codes else chunk


# -- the two implementations, as the same jitted step ----------------------------


def ours_step_fn(num_codes: int, dim: int, chunk_size: int | None):
    module = VectorQuantizerEMA(
        num_codes, dim, commitment_cost=0.25, decay=0.99, epsilon=1e-5, chunk_size=chunk_size
    )

    def init(codebook_kd, x):
        # Initialise on one vector: eager init would build the (N, K) one-hot.
        variables = module.init(jax.random.key(0), x[:1], train=False)
        return {"vq_ema": {**variables["vq_ema"], "codebook": jnp.asarray(codebook_kd)}}

    def step(variables, x, w):
        def loss(x):
            out, updates = module.apply(variables, x, train=True, mutable=["vq_ema"])
            return jnp.sum(w * out["quantize"]) + out["loss"], (updates, out)

        grad_x, (updates, out) = jax.grad(loss, has_aux=True)(x)
        return grad_x, updates, out["loss"], out["perplexity"]

    return init, step, module


def haiku_step_fn(num_codes: int, dim: int):
    import haiku as hk  # pylint: disable=g-import-not-at-top

    def forward(x, is_training):
        return hk.nets.VectorQuantizerEMA(
            embedding_dim=dim,
            num_embeddings=num_codes,
            commitment_cost=0.25,
            decay=0.99,
            epsilon=1e-5,
            name="vq",
        )(x, is_training=is_training)

    model = hk.transform_with_state(forward)

    def init(codebook_kd, x):
        # One vector: Haiku's init runs the (N, K) distances eagerly.
        params, state = model.init(jax.random.PRNGKey(0), x[:1], True)
        state = jax.tree.map(jnp.asarray, state)
        state["vq"]["embeddings"] = jnp.asarray(codebook_kd).T
        return params, state

    def step(params_state, x, w):
        params, state = params_state

        def loss(x):
            out, new_state = model.apply(params, state, None, x, True)
            return jnp.sum(w * out["quantize"]) + out["loss"], (new_state, out)

        grad_x, (new_state, out) = jax.grad(loss, has_aux=True)(x)
        return grad_x, (params, new_state), out["loss"], out["perplexity"]

    return init, step, model


# -- agreement ---------------------------------------------------------------------


def agreement(num_vectors=1024, num_codes=512, dim=DIM, updates=10, seed=0) -> dict:
    import haiku as hk  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(seed)
    limit = np.sqrt(3.0 / dim)
    codebook = rng.uniform(-limit, limit, size=(num_codes, dim)).astype(np.float32)
    report = {"shape": dict(N=num_vectors, D=dim, K=num_codes), "ema": [], "vq": {}}

    ours_init, ours_step, module = ours_step_fn(num_codes, dim, None)
    hk_init, hk_step, hk_model = haiku_step_fn(num_codes, dim)
    x0 = jnp.asarray(rng.normal(size=(num_vectors, dim)), jnp.float32)
    ours_vars = ours_init(codebook, x0)
    hk_vars = hk_init(codebook, x0)

    @jax.jit
    def ours_train(variables, x):
        out, updates = module.apply(variables, x, train=True, mutable=["vq_ema"])
        return out, updates

    @jax.jit
    def hk_train(params_state, x):
        params, state = params_state
        out, new_state = hk_model.apply(params, state, None, x, True)
        return out, (params, new_state)

    for step in range(updates):
        # Inputs around a few centres so that codes are shared and the EMA moves.
        x = jnp.asarray(
            rng.normal(size=(num_vectors, dim)) * 0.5
            + rng.normal(size=(8, dim))[rng.integers(0, 8, num_vectors)],
            jnp.float32,
        )
        ours_out, ours_vars = ours_train(ours_vars, x)
        hk_out, hk_vars = hk_train(hk_vars, x)
        state = ours_vars["vq_ema"]
        hk_state = hk_vars[1]
        row = {
            "update": step + 1,
            "indices_equal": bool(np.array_equal(ours_out["encoding_indices"], hk_out["encoding_indices"])),
            "quantize": float(jnp.max(jnp.abs(ours_out["quantize"] - hk_out["quantize"]))),
            "loss": float(abs(ours_out["loss"] - hk_out["loss"])),
            "perplexity": float(abs(ours_out["perplexity"] - hk_out["perplexity"])),
            "codebook": float(jnp.max(jnp.abs(state["codebook"] - hk_state["vq"]["embeddings"].T))),
            "ema_cluster_size_hidden": float(
                jnp.max(
                    jnp.abs(state["ema_cluster_size_hidden"] - hk_state["vq/~/ema_cluster_size"]["hidden"])
                )
            ),
            "ema_dw_hidden": float(
                jnp.max(jnp.abs(state["ema_dw_hidden"] - hk_state["vq/~/ema_dw"]["hidden"].T))
            ),
            "counter_equal": int(state["counter"]) == int(hk_state["vq/~/ema_dw"]["counter"]),
        }
        report["ema"].append(row)

    # Non-EMA VectorQuantizer: values and gradients.
    def hk_vq(x):
        return hk.nets.VectorQuantizer(
            embedding_dim=dim, num_embeddings=num_codes, commitment_cost=0.25, name="vq"
        )(x, is_training=True)

    hk_vq_model = hk.transform(hk_vq)
    ours_vq = VectorQuantizer(num_codes, dim, commitment_cost=0.25)
    x = jnp.asarray(rng.normal(size=(num_vectors, dim)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(num_vectors, dim)), jnp.float32)

    def ours_loss(codebook_kd, x):
        out = ours_vq.apply({"params": {"codebook": codebook_kd}}, x, train=True)
        return jnp.sum(w * out["quantize"]) + out["loss"], out

    def hk_loss(codebook_kd, x):
        out = hk_vq_model.apply({"vq": {"embeddings": codebook_kd.T}}, None, x)
        return jnp.sum(w * out["quantize"]) + out["loss"], out

    (ours_gc, ours_gx), ours_out = jax.jit(jax.grad(ours_loss, (0, 1), has_aux=True))(
        jnp.asarray(codebook), x
    )
    (hk_gc, hk_gx), hk_out = jax.jit(jax.grad(hk_loss, (0, 1), has_aux=True))(jnp.asarray(codebook), x)
    report["vq"] = {
        "indices_equal": bool(np.array_equal(ours_out["encoding_indices"], hk_out["encoding_indices"])),
        "quantize": float(jnp.max(jnp.abs(ours_out["quantize"] - hk_out["quantize"]))),
        "loss": float(abs(ours_out["loss"] - hk_out["loss"])),
        "perplexity": float(abs(ours_out["perplexity"] - hk_out["perplexity"])),
        "grad_inputs": float(jnp.max(jnp.abs(ours_gx - hk_gx))),
        "grad_codebook": float(jnp.max(jnp.abs(ours_gc - hk_gc))),
    }
    worst = {
        k: max(r[k] for r in report["ema"])
        for k in ("quantize", "loss", "perplexity", "codebook", "ema_cluster_size_hidden", "ema_dw_hidden")
    }
    report["ema_summary"] = {
        "all_indices_equal": all(r["indices_equal"] for r in report["ema"]),
        "all_counters_equal": all(r["counter_equal"] for r in report["ema"]),
        "max_abs_difference": worst,
    }
    return report


# -- speed and memory ------------------------------------------------------------------


def _memory(jitted, *args) -> dict:
    analysis = jitted.lower(*args).compile().memory_analysis()
    total = (
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    return {"temp_gib": analysis.temp_size_in_bytes / GIB, "total_gib": total / GIB}


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def speed_and_memory(
    shapes, repeats: int, budget_mb: float, haiku_limit_gib: float, seed: int = 0
) -> list[dict]:
    rows = []
    for num_vectors, num_codes in shapes:
        rng = np.random.default_rng(seed)
        limit = np.sqrt(3.0 / DIM)
        codebook = rng.uniform(-limit, limit, size=(num_codes, DIM)).astype(np.float32)
        x = jnp.asarray(rng.normal(size=(num_vectors, DIM)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(num_vectors, DIM)), jnp.float32)
        chunk = chunk_size_for(num_vectors, num_codes, budget_mb)
        ours_init, ours_step, _ = ours_step_fn(num_codes, DIM, chunk)
        hk_init, hk_step, _ = haiku_step_fn(num_codes, DIM)
        ours_vars, hk_vars = ours_init(codebook, x), hk_init(codebook, x)
        ours_jit, hk_jit = jax.jit(ours_step), jax.jit(hk_step)
        row = {
            "N": num_vectors,
            "K": num_codes,
            "D": DIM,
            "chunk_size": chunk,
            "ours_memory": _memory(ours_jit, ours_vars, x, w),
            "haiku_memory": _memory(hk_jit, hk_vars, x, w),
        }
        run_haiku = row["haiku_memory"]["total_gib"] <= haiku_limit_gib
        _timed(ours_jit, ours_vars, x, w)  # Compile and warm up.
        if run_haiku:
            _timed(hk_jit, hk_vars, x, w)
        ours_times, hk_times = [], []
        for _ in range(repeats):  # Alternate, so both see the same load.
            ours_times.append(_timed(ours_jit, ours_vars, x, w))
            if run_haiku:
                hk_times.append(_timed(hk_jit, hk_vars, x, w))
        row["ours_ms"] = 1e3 * statistics.median(ours_times)
        row["haiku_ms"] = 1e3 * statistics.median(hk_times) if run_haiku else None
        row["haiku_over_ours"] = (row["haiku_ms"] / row["ours_ms"]) if run_haiku else None
        # Same step, same inputs: the indices and losses must agree where both ran.
        if run_haiku:
            _, _, ours_loss, ours_ppl = ours_jit(ours_vars, x, w)
            _, _, hk_loss, hk_ppl = hk_jit(hk_vars, x, w)
            row["loss_abs_diff"] = float(abs(ours_loss - hk_loss))
            row["perplexity_abs_diff"] = float(abs(ours_ppl - hk_ppl))
        rows.append(row)
        print(json.dumps(row), flush=True)
        del ours_vars, hk_vars
    return rows


def peak_rss_kib() -> int:
    """This process's peak resident set size (VmHWM), in KiB.

    Read from /proc/self/status: unlike getrusage's ru_maxrss, which Linux
    carries over from the parent across fork and exec, VmHWM belongs to the
    process's own address space.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only).")


def peak_rss_of_our_largest_step(budget_mb: float) -> dict:
    """Runs our N = K = 65536 step in a fresh process; returns its peak RSS."""
    code = f"""
import jax, jax.numpy as jnp, numpy as np, sys
sys.path.insert(0, {os.getcwd()!r})
from benchmarks.quantizer_bench import ours_step_fn, chunk_size_for, peak_rss_kib
base = peak_rss_kib()
n = k = 65536
chunk = chunk_size_for(n, k, {budget_mb})
init, step, _ = ours_step_fn(k, 64, chunk)
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(n, 64)), jnp.float32)
w = jnp.asarray(rng.normal(size=(n, 64)), jnp.float32)
v = init(rng.uniform(-0.2, 0.2, size=(k, 64)).astype(np.float32), x)
after_setup = peak_rss_kib()
jax.block_until_ready(jax.jit(step)(v, x, w))
peak = peak_rss_kib()
print(base, after_setup, peak, chunk)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    base, after_setup, peak, chunk = out.stdout.split()[-4:]
    return {
        "N": 65536,
        "K": 65536,
        "chunk_size": int(chunk),
        "peak_rss_gib": int(peak) / 2**20,
        "rss_after_imports_gib": int(base) / 2**20,
        "rss_after_setup_gib": int(after_setup) / 2**20,
    }


def _markdown(rows) -> str:
    lines = [
        "| N | K | chunk | ours ms | Haiku ms | Haiku/ours | ours GiB (XLA) | Haiku GiB (XLA) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hk_ms = f"{r['haiku_ms']:.1f}" if r["haiku_ms"] is not None else "not run"
        ratio = f"{r['haiku_over_ours']:.2f}x" if r["haiku_over_ours"] is not None else "-"
        lines.append(
            f"| {r['N']} | {r['K']} | {r['chunk_size'] or 'none'} | {r['ours_ms']:.1f} | "
            f"{hk_ms} | {ratio} | {r['ours_memory']['total_gib']:.3f} | "
            f"{r['haiku_memory']['total_gib']:.3f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="all", choices=["agreement", "speed", "memory", "all"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk_budget_mb", type=float, default=256.0)
    parser.add_argument(
        "--haiku_limit_gib",
        type=float,
        default=8.0,
        help="skip running Haiku where XLA says its step needs more memory",
    )
    parser.add_argument("--shapes", default="", help="e.g. 8192x512,65536x4096 (default: all)")
    parser.add_argument("--output", default="", help="write the results as JSON here")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs", flush=True)
    results = {}
    if args.mode in ("agreement", "all"):
        results["agreement"] = agreement()
        print(json.dumps(results["agreement"]["ema_summary"]), flush=True)
        print(json.dumps(results["agreement"]["vq"]), flush=True)
    if args.mode in ("speed", "all"):
        shapes = (
            SHAPES
            if not args.shapes
            else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        )
        results["speed"] = speed_and_memory(shapes, args.repeats, args.chunk_budget_mb, args.haiku_limit_gib)
        print(_markdown(results["speed"]), flush=True)
    if args.mode in ("memory", "all"):
        results["peak_rss"] = peak_rss_of_our_largest_step(args.chunk_budget_mb)
        print(json.dumps(results["peak_rss"]), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
