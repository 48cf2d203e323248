"""The device mesh and the placement of batches and state on it.

One code path for one CPU, one GPU, 8 GPUs and a pod: the mesh has a `data` axis
over all devices of all processes; batches are split along it and the train
state is replicated (`P()`). Under `jax.jit` with these shardings, reductions over
the batch (losses, EMA codebook statistics, BatchNorm moments) are computed over
the global batch by XLA's SPMD partitioner: no explicit `psum` is needed.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_data_devices: int = -1) -> Mesh:
  """A 1-D mesh named `data` over all devices (or the first `num_data_devices`).

  Built with the `Mesh` constructor, whose axes are `AxisType.Auto`: under
  `jax.make_mesh`'s default `Explicit` axes in jax 0.10, gathers such as
  `codebook[indices]` fail at trace time.
  """
  devices = np.array(jax.devices())
  if num_data_devices not in (-1, None):
    if not 1 <= num_data_devices <= devices.size:
      raise ValueError(f"mesh.data={num_data_devices} but {devices.size} devices are visible; "
                       f"use -1 for all of them.")
    devices = devices[:num_data_devices]
  return Mesh(devices, (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(f"{field}={global_batch_size} is not divisible by the {n} devices of the mesh; "
                     f"choose a multiple of {n}.")


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's local part, split over `data`."""
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
