"""Any batch size, few compiled shapes: inputs are padded to a power-of-two bucket.

A jitted function compiles once per input shape. `run_bucketed` splits N inputs into chunks of at
most `max_batch` and pads each chunk to the next power of two (1, 2, 4, ..., max_batch), so any
batch size costs at most log2(max_batch) + 1 compilations per image size. Every example is computed
independently of the others in the batch (evaluation mode: no batch statistics), so the padding
rows change nothing and are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

DEFAULT_MAX_BATCH = 256


def bucket(n: int, max_batch: int) -> int:
    """The padded size of a chunk of `n` <= max_batch rows: the next power of two (capped)."""
    return min(1 << max(n - 1, 0).bit_length(), max_batch)


def buckets(max_batch: int) -> list[int]:
    """Every padded size `run_bucketed` can compile for."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


def run_bucketed(fn: Callable[[Any], Any], inputs: Any, max_batch: int = DEFAULT_MAX_BATCH) -> Any:
    """`fn` over a pytree of arrays with a leading batch axis, in padded chunks; numpy outputs.

    Args:
      fn: batch -> pytree of arrays with the same leading axis (e.g. a jitted encoder).
      inputs: pytree of numpy arrays, every leaf with the same leading size N.
      max_batch: the largest chunk (the bound on memory).
    """
    leaves = jax.tree.leaves(inputs)
    n = int(leaves[0].shape[0])
    outputs = []
    for start in range(0, n, max_batch):
        stop = min(start + max_batch, n)
        size = bucket(stop - start, max_batch)

        def chunk(x, start=start, stop=stop, size=size):
            part = x[start:stop]
            if len(part) == size:
                return part
            return np.concatenate([part, np.zeros((size - len(part), *part.shape[1:]), part.dtype)])

        out = jax.device_get(fn(jax.tree.map(chunk, inputs)))
        outputs.append(jax.tree.map(lambda y, k=stop - start: np.asarray(y)[:k], out))
    if not outputs:
        raise ValueError("Empty input: give at least one example.")
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
