"""JAX's persistent compilation cache, kept under the workdir (`config.compilation_cache_dir`).

XLA:CPU spends seconds compiling a model's jitted init and train step (for the
256x256 VQ-VAE-2 of `configs/vqvae2.py:imagenet256` almost all of it is LLVM
code generation of its fused kernels, not reduced by XLA's optimisation flags
without changing the numbers). A resumed run, `--mode=eval` or
`--mode=extract_codes` in the same workdir compiles the same programs again;
with the cache they are read back instead, several times faster, and the results
are the same executables, so the numbers are bit-identical.

`config.compilation_cache_dir`:
  * a relative path (default 'compilation_cache'): under the workdir;
  * an absolute path (or a URL such as gs://...): shared, e.g. by several
    workdirs of the same model (JAX keys entries by program, compile options,
    device and library versions, so sharing is safe);
  * '' : leave JAX's own setting alone (off, unless the JAX_COMPILATION_CACHE_DIR
    environment variable sets one).
JAX caches only programs that took at least
`jax_persistent_cache_min_compile_time_secs` (1 s by default) to compile. The
cache directory is trusted code: do not point it at a directory others can write.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

DEFAULT_DIR = "compilation_cache"


def resolve(value: Any, workdir: str) -> str | None:
    """The cache directory `config.compilation_cache_dir` names for `workdir`, or None ('')."""
    if not isinstance(value, str):
        raise ValueError(
            f"config.compilation_cache_dir={value!r}: expected a path (relative to the workdir, "
            f"or absolute), or '' to leave JAX's persistent compilation cache alone."
        )
    if not value:
        return None
    value = os.path.expanduser(value)
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.join(workdir, value)


def enable(value: Any, workdir: str) -> str | None:
    """Points JAX's persistent compilation cache at the resolved directory; returns it (None: untouched).

    Call before the first compilation of the run. Pointing it elsewhere later (a
    second run in the same process) resets JAX's cache object, so that the new
    directory is used.
    """
    path = resolve(value, workdir)
    if path is None:
        return None
    previous = jax.config.jax_compilation_cache_dir
    if previous != path:
        jax_cache.set_cache_dir(path)
        if previous:  # JAX may hold a cache object for the previous directory.
            jax_cache.reset_cache()
    return path
