"""The device mesh and the placement of batches and train state on it.

One code path for one CPU, one GPU, 8 GPUs and a pod. The mesh has two axes,

  data  the batch is split over it; the state is replicated along it;
  fsdp  the batch is split over it too, and the large arrays of the train
        state (parameters, optimizer moments, codebooks) are split over it
        instead of replicated (fully sharded data parallelism, "ZeRO-3"):
        each device then stores 1/fsdp of them, and XLA gathers a weight
        just before it is used.

`config.mesh = {data: -1, fsdp: 1}` (the default) is plain data parallelism over
all devices of all processes; `{data: -1, fsdp: 8}` shards the state over groups
of 8 consecutive devices (within a host when a host has 8 or more) and
replicates it across the groups.

Under `jax.jit` with these shardings XLA's SPMD partitioner (GSPMD) inserts
every collective: reductions over the batch (losses, EMA codebook statistics,
BatchNorm moments) are global, gradients are reduce-scattered onto the fsdp
shards and weights all-gathered for use. The model code never calls `psum`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
# The batch is split over both axes: every device sees a different slice.
BATCH_AXES = MESH_AXES

# Arrays with fewer elements stay replicated under fsdp: gathering a small
# bias or a scalar costs more latency than storing it saves (2**16 float32
# values are 256 KiB; big_vision's default threshold is of the same order).
FSDP_MIN_SIZE = 2**16


def make_mesh(data: int = -1, fsdp: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over all devices of all processes.

    Args:
      data: size of the `data` axis; -1 means all devices not used by `fsdp`.
        A positive value smaller than the device count uses only the first
        `data * fsdp` devices (single-process tests and debugging).
      fsdp: size of the `fsdp` axis (1: no parameter sharding).
      devices: the devices to use (default `jax.devices()`, every process's).

    Returns:
      A `Mesh` with `AxisType.Auto` axes (under jax 0.10's default `Explicit`
      axes, gathers such as `codebook[indices]` fail at trace time), the device
      order chosen by `jax.make_mesh` (physical topology on TPU).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if isinstance(fsdp, bool) or not isinstance(fsdp, int) or fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp!r} must be a positive divisor of the {n} devices.")
    if data in (-1, None):
        data = n // fsdp
    if isinstance(data, bool) or not isinstance(data, int) or not 1 <= data * fsdp <= n:
        raise ValueError(
            f"mesh.data={data!r} with mesh.fsdp={fsdp} needs data*fsdp devices but "
            f"{n} are visible; use mesh.data=-1 for all of them."
        )
    used = devices[: data * fsdp]
    if len(used) < n and jax.process_count() > 1:
        raise ValueError(
            f"mesh.data={data} x mesh.fsdp={fsdp} uses {len(used)} of the {n} devices of "
            f"{jax.process_count()} processes; with several processes the mesh must span "
            f"them all (mesh.data=-1)."
        )
    return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=used)


def mesh_from_config(mesh_cfg: Any) -> Mesh:
    """`config.mesh` ({data, fsdp}; fsdp may be absent, meaning 1) -> Mesh."""
    unknown = sorted(set(mesh_cfg.keys()) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"Unknown config.mesh fields {unknown}; the mesh axes are {list(MESH_AXES)}.")
    return make_mesh(mesh_cfg.get(DATA_AXIS, -1), mesh_cfg.get(FSDP_AXIS, 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """The batch sharding: leading axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_partition_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int | None = None) -> P:
    """Shards the largest dimension divisible by `fsdp_size` over `fsdp`, or replicates.

    Ties go to the later dimension (for conv kernels (kh, kw, in, out) and dense
    kernels (in, out) that is the output features).
    """
    min_size = FSDP_MIN_SIZE if min_size is None else min_size
    if fsdp_size == 1 or not shape or int(np.prod(shape, dtype=np.int64)) < max(min_size, 1):
        return P()
    divisible = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
    if not divisible:
        return P()
    axis = max(divisible, key=lambda i: (shape[i], i))
    return P(*(FSDP_AXIS if i == axis else None for i in range(len(shape))))


def state_sharding(abstract_state: Any, mesh: Mesh, min_size: int | None = None) -> Any:
    """A NamedSharding for every leaf of `abstract_state` (shapes suffice).

    Replicated when the mesh's fsdp axis has size 1; otherwise each array of at
    least `min_size` (default `FSDP_MIN_SIZE`) elements is split over `fsdp` along its largest divisible
    dimension. Adam's moments have their parameter's shape and hence its
    sharding, so optimizer state is sharded exactly like the parameters.
    """
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, fsdp_partition_spec(tuple(np.shape(leaf)), fsdp_size, min_size)),
        abstract_state,
    )


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"{field}={global_batch_size} is not divisible by the {n} devices of the mesh; "
            f"choose a multiple of {n}."
        )


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global batch from each process's local part, split over the mesh.

    Process p's rows land on p's devices, so the global batch is the
    processes' local batches concatenated in the order their devices appear in
    the mesh (process order on CPU and GPU; TPU meshes follow the topology).
    """
    sharding = data_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
