"""The one place that builds a Mesh and names axes; shard and replicate helpers."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """1-D data-parallel mesh over the first `num_devices` devices (all of them by default)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"asked for {num_devices} devices, {len(devices)} available")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def shard_batch(x, mesh: Mesh):
    """Places a host batch [B, ...] with B divisible by the mesh size, split over devices."""
    n = mesh.devices.size
    if x.shape[0] % n:
        raise ValueError(f"batch {x.shape[0]} is not divisible by {n} devices")
    return jax.device_put(x, batch_sharded(mesh))
