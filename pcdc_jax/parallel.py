"""The one place that builds a Mesh and names axes; shard and replicate helpers; multi-host start.

One process per host: `initialize` joins the processes (jax.distributed), after which
`jax.devices()` is every device of every process, a mesh spans all of them, and each process
feeds only its own slice of the global batch (`shard_batch`).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """jax.distributed.initialize when more than one process is asked for (else nothing).
    (On CPU the processes exchange data through JAX's default gloo collectives.)"""
    if not num_processes or num_processes == 1:
        return
    if coordinator is None or process_id is None:
        raise ValueError("multi-process training needs a coordinator address and a process id")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not in [0, {num_processes})")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def is_primary() -> bool:
    """True in the process that writes logs and exports (process 0)."""
    return jax.process_index() == 0


def make_mesh(num_devices: int | None = None, *, local: bool = False) -> Mesh:
    """1-D data-parallel mesh over the first `num_devices` devices (all of them by default).

    Multi-process, the mesh spans every device of every process; with `local=True` it spans only
    this process's own devices, for work each process does alone, such as decoding its share of
    an archive."""
    devices = jax.local_devices() if local else jax.devices()
    if num_devices is not None:
        if not local and jax.process_count() > 1 and num_devices != len(devices):
            raise ValueError("a multi-process mesh uses every device of every process")
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


def abstract_replicated(tree, mesh: Mesh):
    """Shapes and dtypes of `tree`'s arrays, replicated over `mesh`: what to restore a replicated
    checkpoint onto without computing a state first (e.g. `training.abstract_state(cfg)`)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated(mesh)), tree)


def shard_batch(x, mesh: Mesh):
    """This process's slice [b, ...] of the global batch -> the global array [b * processes, ...]
    split over the mesh; b must be divisible by the process's devices in the mesh."""
    n = mesh.devices.size // jax.process_count()
    if x.shape[0] % n:
        raise ValueError(f"batch {x.shape[0]} is not divisible by {n} devices")
    return jax.make_array_from_process_local_data(batch_sharded(mesh), x)


def simulated_devices_env(n: int, env: dict | None = None) -> dict:
    """A copy of `env` (default os.environ) for a child process that sees n CPU devices
    (XLA_FLAGS); on accelerator backends the flag only affects the host platform."""
    env = dict(os.environ if env is None else env)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    return env
