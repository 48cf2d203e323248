"""Test setup: 8 CPU devices for the sharding tests (must run before jax is imported)."""

import os
import pathlib

import pytest

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


def _pin_xdist_worker() -> None:
    """Gives each pytest-xdist worker its own share of this process's CPUs (before jax is imported).

    XLA:CPU sizes its thread pools by the CPUs a process may run on. Two workers on 2 cores each
    start pools of 2 threads (more with the 8 simulated devices), and their threads preempt each
    other; pinned, each worker's XLA runs on its own core, and so do the child processes it starts
    (docs/lab/testing.md: the suite's wall time, both ways). Nothing changes without xdist, or with
    fewer CPUs than workers.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= count:
        os.sched_setaffinity(0, cpus[int(worker[2:]) % count :: count])


_pin_xdist_worker()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir():
    """The real MNIST idx files (../shared/data/mnist); tests needing them skip if absent."""
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    return MNIST_DIR
