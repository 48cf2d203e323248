"""Test setup: 8 CPU devices for the sharding tests (must run before jax is imported)."""

import os

# XLA:CPU aborts the whole process ("Fatal Python error: Aborted", "Termination timeout for `all
# reduce ...` of 40 seconds exceeded ... only 7 of them arrived") when one of the 8 simulated devices
# reaches a collective more than 40 s after the others (openxla/xla#32115 made the limit a flag). On
# a loaded 2-core machine a device can lag that much: the tests wait up to 5 minutes. (A device that
# never arrives is a deadlock, not a lag: vqlatent/parallel/dispatch.py, docs/lab/testing.md.)
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=300",
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
