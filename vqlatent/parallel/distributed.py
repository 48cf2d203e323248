"""Several processes, one program: `jax.distributed` start-up and preemption notices.

A run on a TPU pod slice, a SLURM allocation or several machines is one process
per host (TPU) or per GPU (SLURM), all running the same command. They find each
other through `jax.distributed.initialize()`, after which `jax.devices()` lists
the devices of every process and one jitted step runs on all of them. On Cloud
TPU VMs, in SLURM job steps (`srun`) and under Open MPI, JAX reads the
coordinator address, the process count and the process id from the
environment; elsewhere they are given by `--coordinator_address`,
`--num_processes` and `--process_id`. On CPU the processes exchange data with
gloo over TCP (`jax_cpu_collectives_implementation`, the default in jax 0.10).

Preemption: the cluster sends SIGTERM, possibly to one host only and at any
moment. With several processes every process must save the *same* step, so the
notice goes through JAX's coordination service, which agrees on a step
(`multihost_utils.reached_preemption_sync_point`); a single process just turns
SIGTERM into a flag.

Ctrl-C (SIGINT) is handled the same way: the current step is finished, saved, and the run stops
(without a KeyboardInterrupt traceback, and without breaking into an asynchronous save). A second
Ctrl-C exits at once (status 130); the newest committed checkpoint stays, and orbax's half-written
directory is removed by the next run.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import signal
import sys
from collections.abc import Mapping

import jax
from absl import logging
from jax.experimental import multihost_utils


def on_cloud_tpu_vm() -> bool:
    """A Cloud TPU VM: libtpu installed and TPU chips attached (JAX's own test)."""
    return importlib.util.find_spec("libtpu") is not None and bool(
        glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
    )


def detect_cluster(environ: Mapping[str, str], tpu_vm: bool) -> tuple[str | None, int | None]:
    """The launcher whose environment JAX can read the process layout from.

    Args:
      environ: the process environment.
      tpu_vm: whether this is a Cloud TPU VM (`on_cloud_tpu_vm()`).

    Returns:
      (name, number of processes it says, or None if it does not say):
      ('coordinator_env', None) when JAX_COORDINATOR_ADDRESS is set, ('tpu', None)
      on a Cloud TPU VM (JAX reads the slice's workers from the metadata),
      ('slurm', tasks of the `srun` step) inside a SLURM step, ('openmpi', ranks)
      under mpirun, else (None, None).
    """

    def count(name: str) -> int | None:
        try:
            return int(environ[name])
        except (KeyError, ValueError):
            return None

    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return "coordinator_env", None
    if tpu_vm:
        return "tpu", None
    if "SLURM_JOB_ID" in environ and "SLURM_PROCID" in environ:
        # SLURM_STEP_NUM_TASKS is the srun step's task count; a batch script run without srun
        # has no step tasks and is one process, whatever the job's --ntasks.
        return "slurm", count("SLURM_STEP_NUM_TASKS") or 1
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return "openmpi", count("OMPI_COMM_WORLD_SIZE")
    return None, None


def initialize_kwargs(
    enable: bool | None,
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    environ: Mapping[str, str],
    tpu_vm: bool,
) -> dict | None:
    """Decides whether (and how) to call `jax.distributed.initialize`.

    Args:
      enable: `--distributed` (True), `--nodistributed` (False), or None (not
        given: initialize when coordinator flags are given, or a launcher is
        detected that runs several processes, or on a Cloud TPU VM).
      coordinator_address: `--coordinator_address` ('host:port') or None.
      num_processes: `--num_processes` or None.
      process_id: `--process_id` or None.
      environ: the process environment.
      tpu_vm: whether this is a Cloud TPU VM.

    Returns:
      Keyword arguments for `jax.distributed.initialize` (the explicit ones;
      JAX detects the rest from the launcher), or None for a single process.

    Raises:
      ValueError: contradictory or invalid flags, or flags missing that no
        launcher provides.
    """
    explicit = {
        k: v
        for k, v in dict(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        ).items()
        if v is not None
    }
    if enable is False:
        if explicit:
            raise ValueError(
                f"--nodistributed contradicts {', '.join(f'--{k}' for k in explicit)}; drop one or the other."
            )
        return None
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num_processes={num_processes} must be at least 1.")
    if process_id is not None and (
        process_id < 0 or (num_processes is not None and process_id >= num_processes)
    ):
        raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes}).")
    cluster, launcher_processes = detect_cluster(environ, tpu_vm)
    if (
        enable is None
        and not explicit
        and (cluster is None or (launcher_processes is not None and launcher_processes < 2))
    ):
        return None
    missing = [f"--{k}" for k in ("coordinator_address", "num_processes", "process_id") if k not in explicit]
    if missing and cluster is None:
        raise ValueError(
            f"A multi-process run was requested but no launcher environment (Cloud TPU "
            f"VM, SLURM srun step, Open MPI) was found to read {', '.join(missing)} from; "
            f"give them on the command line."
        )
    return explicit


def initialize(
    enable: bool | None = None,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` when the run has several processes.

    Must run before anything touches a JAX device. Returns whether it did.
    """
    kwargs = initialize_kwargs(
        enable, coordinator_address, num_processes, process_id, os.environ, on_cloud_tpu_vm()
    )
    if kwargs is None:
        return False
    jax.distributed.initialize(**kwargs)
    return True


class PreemptionNotice:
    """Tells the training loop, at a step all processes agree on, to save and stop.

    Use as a context manager around the loop and call `reached(step)` once per
    step, after the step, on every process:

      with PreemptionNotice() as preemption:
        for step in ...:
          ...
          if preemption.reached(step): save(step); break

    With `jax.distributed` initialized (and JAX's preemption service on, the
    default) JAX's coordination service owns SIGTERM: when any process receives
    it, all processes learn of it and `reached` returns True on all of them at
    the same step. Otherwise SIGTERM sets a local flag, and `reached` returns
    True after the step during which it arrived (the step is never interrupted).

    SIGINT (Ctrl-C) sets `interrupted` and then acts as SIGTERM (with coordination it is
    passed on as SIGTERM to this process, so every process agrees on the step); a second
    SIGINT exits the process at once with status 130.
    """

    def __init__(self):
        self._received = False
        self._previous = None
        self._previous_int = None
        self._installed = False
        self.coordinated = False
        self.interrupted = False

    def __enter__(self) -> PreemptionNotice:
        self.coordinated = jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)
        self._previous_int = None
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # Ignored (nohup, `cmd &`): left so.
            try:
                self._previous_int = signal.signal(signal.SIGINT, self._handle_interrupt)
            except ValueError:  # Not the main thread: Ctrl-C keeps its default.
                self._previous_int = None
        if self.coordinated:
            return self
        if jax.process_count() > 1:
            logging.warning(
                "jax_enable_preemption_service is off: SIGTERM is handled per process, "
                "and processes preempted at different steps will not agree on a checkpoint."
            )
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        except ValueError:  # Not the main thread: leave SIGTERM alone.
            logging.warning("Not in the main thread: SIGTERM will not be turned into a checkpoint.")
        return self

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self._received = True

    def _handle_interrupt(self, signum, frame) -> None:
        del signum, frame
        if self.interrupted:
            sys.stderr.write("\nSecond Ctrl-C: exiting now, without saving this step.\n")
            sys.stderr.flush()
            os._exit(130)  # pylint: disable=protected-access
        self.interrupted = True
        sys.stderr.write(
            "\nCtrl-C: finishing this step, saving it, then stopping (Ctrl-C again exits at once).\n"
        )
        sys.stderr.flush()
        if self.coordinated:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service agrees on the step.
        else:
            self._received = True

    def reached(self, step: int) -> bool:
        if self.coordinated:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._received

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
        if self._previous_int is not None:
            signal.signal(signal.SIGINT, self._previous_int)
            self._previous_int = None
