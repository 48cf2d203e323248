r"""XLA:CPU's deadlock when the host runs far ahead of several devices, and the bound that avoids it.

  XLA_FLAGS="--xla_force_host_platform_device_count=8 \
    --xla_cpu_collective_call_terminate_timeout_seconds=30" \
    python experiments/cpu_collective_runahead.py --window=0     # aborts after 30 s
  ... python experiments/cpu_collective_runahead.py --window=8  # finishes in a few seconds

Dispatches `--steps` steps of one jitted program with an all-reduce over all devices (a 256x256
matmul chain per device, then `pmean`), never reading a result when --window=0, or through
`vqlatent.parallel.dispatch.DispatchWindow(window)`. On jaxlib 0.10.2 with 8 CPU devices a window of
30 steps finishes and 33 deadlocks: the PJRT CPU client admits 32 computations per device in flight
(vqlatent/parallel/dispatch.py says why more deadlock). Prints the final value and its expectation.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vqlatent.parallel import dispatch

_WINDOW = flags.DEFINE_integer("window", dispatch.STEPS_IN_FLIGHT, "Steps in flight (0: unbounded).")
_STEPS = flags.DEFINE_integer("steps", 300, "Steps dispatched.")


def main(argv):
    del argv
    mesh = Mesh(np.array(jax.devices()), ("d",))

    def step(w, x):
        def per_device(w, x):
            for _ in range(4):
                x = jnp.tanh(x @ w)
            return w + 1.0, x + jax.lax.pmean(jnp.zeros(()), "d")

        return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("d")), out_specs=(P(), P("d")))(w, x)

    step = jax.jit(step)
    w = jnp.eye(256) * 0.5
    x = jax.device_put(jnp.ones((len(jax.devices()) * 256, 256)), NamedSharding(mesh, P("d")))
    window = dispatch.DispatchWindow(_WINDOW.value) if _WINDOW.value else None
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        w, x = step(w, x)
        if window is not None:
            window.push(w)
    diagonal = float(w[0, 0])
    print(
        f"devices={len(jax.devices())} window={_WINDOW.value} steps={_STEPS.value} "
        f"w[0,0]={diagonal} expected={0.5 + _STEPS.value} seconds={time.perf_counter() - start:.2f}"
    )


if __name__ == "__main__":
    app.run(main)
