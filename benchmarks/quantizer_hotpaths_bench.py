r"""Times every per-backend hot-path form of the quantizers on whatever backend JAX finds.

Each form computes the same function (tests/test_quantizer_hotpaths.py checks them equal on the CPU);
this measures which is fastest where, to set the 'auto' defaults of `vqlatent.quantizers.search` and
`vqlatent.quantizers.ema`:

  argmin         `search.argmin_last_axis` on (N, K) float32 distances: 'two_level' vs 'plain'.
  distance       `search.nearest_code` (distances + argmin) with each matmul precision: 'highest',
                 'high', 'default'; also the fraction of indices that differ from 'highest' (on
                 GPUs/TPUs the lower precisions change the nearest code for some inputs).
  ema_statistics `ema.cluster_statistics` (counts and per-code sums): 'segment_sum' vs 'one_hot'.
  step           one jitted VectorQuantizerEMA training step (forward, backward, EMA update) with
                 each (argmin_form, ema_statistics) pair, and with 'auto'.

From Python (e.g. a GPU check script)::

  from benchmarks.quantizer_hotpaths_bench import time_hot_paths
  rows = time_hot_paths(shapes=((8192, 512), (65536, 4096)), dim=64, repeats=5)
  # rows: [{'section', 'form', 'num_vectors', 'num_codes', 'dim', 'median_ms', 'min_ms',
  #         'backend', 'device', ['auto_form'], ['indices_changed']}, ...]

From the shell::

  PYTHONPATH=. python benchmarks/quantizer_hotpaths_bench.py [--quick] [--json=out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqlatent import backend
from vqlatent.quantizers import VectorQuantizerEMA, ema, search

backend.set_cpu_xla_flags()  # A command line: the XLA:CPU flags `python -m vqlatent.main` sets.

DEFAULT_SHAPES = ((8192, 512), (8192, 4096), (65536, 512), (65536, 4096), (65536, 16384))
QUICK_SHAPES = ((1024, 64), (2048, 512))
SECTIONS = ("argmin", "distance", "ema_statistics", "step")


def _median_ms(fn: Callable[..., Any], args: tuple, repeats: int) -> tuple[float, float]:
    """(median, min) wall milliseconds of ``fn(*args)`` over ``repeats`` calls after a warm-up call."""
    jax.block_until_ready(fn(*args))  # Compile and warm up.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def _step_fn(num_codes: int, dim: int, argmin_form: str, ema_statistics: str):
    module = VectorQuantizerEMA(
        num_codes, dim, decay=0.99, argmin_form=argmin_form, ema_statistics=ema_statistics
    )

    @jax.jit
    def step(variables, x, w):
        def loss(x):
            out, updates = module.apply(variables, x, train=True, mutable=["vq_ema"])
            return jnp.sum(out["quantize"] * w) + out["loss"], updates

        grad, updates = jax.grad(loss, has_aux=True)(x)
        return grad, updates

    return module, step


def time_hot_paths(
    shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES,
    dim: int = 64,
    repeats: int = 5,
    sections: Sequence[str] = SECTIONS,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Times each hot-path form for each ``(num_vectors, num_codes)`` shape; one dict per timing.

    Args:
      shapes: ``(N, K)`` pairs: N input vectors of ``dim`` channels, K codes.
      dim: D, the code dimension.
      repeats: timed calls per measurement (after one untimed compile-and-warm-up call).
      sections: a subset of `SECTIONS`.
      seed: for the random inputs and codebooks.

    Returns:
      A list of dicts with ``section``, ``form``, ``num_vectors``, ``num_codes``, ``dim``,
      ``median_ms``, ``min_ms``, ``backend`` and ``device``; the form ``'auto'`` picks for that
      shape on this backend as ``auto_form`` (argmin, ema_statistics); ``indices_changed`` (the
      fraction of nearest codes that differ from ``'highest'``) in the ``distance`` section.
    """
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {list(SECTIONS)}.")
    device = jax.devices()[0]
    common = {"backend": jax.default_backend(), "device": device.device_kind, "dim": dim}
    rng = np.random.default_rng(seed)
    rows = []
    for num_vectors, num_codes in shapes:
        x = jnp.asarray(rng.normal(size=(num_vectors, dim)), jnp.float32)
        codebook = jnp.asarray(rng.normal(size=(num_codes, dim)), jnp.float32)
        shape = {"num_vectors": num_vectors, "num_codes": num_codes, **common}
        if "argmin" in sections:
            distances = search.squared_distances(x, codebook)
            for form in search.ARGMIN_FORMS:
                fn = jax.jit(lambda d, form=form: search.argmin_last_axis(d, form))
                median, best = _median_ms(fn, (distances,), repeats)
                auto = search.resolve_argmin_form("auto")
                rows.append(
                    dict(section="argmin", form=form, median_ms=median, min_ms=best, auto_form=auto, **shape)
                )
        if "distance" in sections:
            reference = None
            for precision in search.DISTANCE_PRECISIONS:
                fn = jax.jit(lambda x, c, p=precision: search.nearest_code(x, c, precision=p)[0])
                median, best = _median_ms(fn, (x, codebook), repeats)
                indices = np.asarray(fn(x, codebook))
                reference = indices if reference is None else reference
                changed = float(np.mean(indices != reference))
                rows.append(
                    dict(
                        section="distance",
                        form=precision,
                        median_ms=median,
                        min_ms=best,
                        indices_changed=changed,
                        **shape,
                    )
                )
        if "ema_statistics" in sections:
            indices = jnp.asarray(rng.integers(0, num_codes, size=(num_vectors,)), jnp.int32)
            for form in ema.EMA_STATISTICS_FORMS:
                fn = jax.jit(lambda x, i, form=form, k=num_codes: ema.cluster_statistics(x, i, k, None, form))
                median, best = _median_ms(fn, (x, indices), repeats)
                auto = ema.resolve_ema_statistics("auto", num_codes)
                rows.append(
                    dict(
                        section="ema_statistics",
                        form=form,
                        median_ms=median,
                        min_ms=best,
                        auto_form=auto,
                        **shape,
                    )
                )
        if "step" in sections:
            w = jnp.asarray(rng.normal(size=(num_vectors, dim)), jnp.float32)
            forms = [(a, e) for a in search.ARGMIN_FORMS for e in ema.EMA_STATISTICS_FORMS] + [
                ("auto", "auto")
            ]
            for argmin_form, statistics_form in forms:
                module, step = _step_fn(num_codes, dim, argmin_form, statistics_form)
                variables = module.init(jax.random.key(seed), x[:1], train=False)
                median, best = _median_ms(step, (variables, x, w), repeats)
                rows.append(
                    dict(
                        section="step",
                        form=f"{argmin_form}+{statistics_form}",
                        median_ms=median,
                        min_ms=best,
                        **shape,
                    )
                )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of `time_hot_paths` rows."""
    lines = [
        "| section | N | K | form | median ms | min ms | auto picks | indices changed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        changed = r.get("indices_changed")
        lines.append(
            f"| {r['section']} | {r['num_vectors']} | {r['num_codes']} | {r['form']} | {r['median_ms']:.3f} | "
            f"{r['min_ms']:.3f} | {r.get('auto_form', '')} | {'' if changed is None else f'{changed:.2e}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, 2 repeats (a smoke test)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    rows = time_hot_paths(
        shapes, args.dim, 2 if args.quick else args.repeats, [s for s in args.sections.split(",") if s]
    )
    print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} D={args.dim}")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
