"""config.compilation_cache_dir: JAX's persistent compilation cache under the workdir."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest
from helpers import load_config
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from vqlatent.utils import compilation_cache


@pytest.fixture
def restore_jax_cache():
    """Puts JAX's cache settings back as they were, so that other tests do not write a cache."""
    saved_dir = jax.config.jax_compilation_cache_dir
    saved_min = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # Cache even tiny programs.
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved_min)
    jax.config.update("jax_compilation_cache_dir", saved_dir)
    jax_cache.reset_cache()


def test_resolve_paths(tmp_path):
    workdir = str(tmp_path / "run")
    assert compilation_cache.resolve("compilation_cache", workdir) == os.path.join(
        workdir, "compilation_cache"
    )
    assert compilation_cache.resolve("/shared/cache", workdir) == "/shared/cache"
    assert compilation_cache.resolve("gs://bucket/cache", workdir) == "gs://bucket/cache"
    assert compilation_cache.resolve("", workdir) is None
    with pytest.raises(ValueError, match="compilation_cache_dir"):
        compilation_cache.resolve(None, workdir)


def test_default_config_caches_under_the_workdir():
    assert load_config("vqvae").compilation_cache_dir == compilation_cache.DEFAULT_DIR


def _entries(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith("jit_")] if os.path.isdir(directory) else []


def test_enable_writes_compiled_programs_and_follows_a_new_workdir(tmp_path, restore_jax_cache):
    del restore_jax_cache
    first = compilation_cache.enable(compilation_cache.DEFAULT_DIR, str(tmp_path / "a"))
    assert jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.arange(5.0)).shape == (5,)
    assert _entries(first)
    # A second run in the same process, in another workdir, writes there.
    second = compilation_cache.enable(compilation_cache.DEFAULT_DIR, str(tmp_path / "b"))
    assert second != first
    jax.jit(lambda x: jnp.cos(x) + 2.0)(jnp.arange(7.0)).block_until_ready()
    assert _entries(second)


def test_empty_leaves_jax_alone(tmp_path, restore_jax_cache):
    del restore_jax_cache
    before = jax.config.jax_compilation_cache_dir
    assert compilation_cache.enable("", str(tmp_path)) is None
    assert jax.config.jax_compilation_cache_dir == before
