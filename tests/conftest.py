"""Test setup: 8 CPU devices for the sharding tests (must run before jax is imported)."""

import os

# XLA:CPU aborts the whole process ("Fatal Python error: Aborted", "Termination timeout for `all
# reduce ...` of 40 seconds exceeded ... only 7 of them arrived") when one of the 8 simulated devices
# reaches a collective more than 40 s after the others, which happens on a 2-core machine under
# load (openxla/xla#32115 made the limit a flag): the tests wait up to 15 minutes instead.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=900",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir():
    """The real MNIST idx files (../shared/data/mnist); tests needing them skip if absent."""
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    return MNIST_DIR
