"""A bound on how far the host runs ahead of the devices.

JAX dispatches asynchronously: `state, metrics = train_step(state, batch)` returns as soon as the
step is queued, and a loop that never reads a result can queue hundreds of steps. Accelerators need
only a few queued steps to hide the dispatch latency, and XLA:CPU deadlocks beyond about 32 with
several devices (jaxlib 0.10.2): its PJRT client admits at most 32 computations per device in flight,
a launch past that waits for a slot on one of the threads of its work pool, and that pool has
exactly as many threads as there are devices, all of which one computation with a collective holds
at once. The program whose partitions hold the threads waits in its all-reduce for the partition
that cannot get a thread, until XLA ends the process ("Termination timeout for `all reduce` ... only
7 of them arrived"). docs/lab/testing.md has the stacks and the reproducer.

`DispatchWindow(size)` keeps at most `size` steps in flight: after queuing a step, the loop pushes
one of its outputs, and the push waits for the step `size` places back to finish. Nothing is copied
to the host.
"""

from __future__ import annotations

import collections
from typing import Any

import jax

# Steps queued ahead of the devices: enough to hide dispatch on an accelerator, and at up to two
# programs per step (an evaluation batch: its step and the running sum) half XLA:CPU's 32 per device.
STEPS_IN_FLIGHT = 8


class DispatchWindow:
    """At most `size` dispatched steps not yet finished (see the module docstring)."""

    def __init__(self, size: int = STEPS_IN_FLIGHT):
        if size < 1:
            raise ValueError(f"DispatchWindow(size={size}): size must be at least 1.")
        self.size = size
        self._queued: collections.deque[Any] = collections.deque()

    def push(self, outputs: Any) -> None:
        """Records a step just queued (any of its outputs); waits for the one `size` places back."""
        self._queued.append(outputs)
        while len(self._queued) > self.size:
            jax.block_until_ready(self._queued.popleft())

    def __len__(self) -> int:
        return len(self._queued)
