"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import jax


def median_seconds(fn, *args, repeats: int) -> float:
    """Median wall seconds of `fn(*args)` (outputs ready) over `repeats` calls, after one warm-up
    call (which compiles a jitted `fn`)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)
