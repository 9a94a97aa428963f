"""Device mesh, shardings and global-batch assembly.

Decision (DESIGN.md): jit over a Mesh, not pmap. The batch is split along one mesh axis, ``data``;
parameters and the rest of the train state are replicated. Batch statistics computed under jit
over the global batch are therefore cross-replica for free.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Joins a multi-process run when launched as one (TPU pod, SLURM, or explicit env vars).

    ``jax.distributed.initialize()`` discovers the coordinator on TPU VMs and under SLURM; elsewhere
    set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (launch/tpu_pod.sh sets the
    address). BBG_JAX_DISTRIBUTED=1 forces the call where none of these signals is visible. A
    single process on one machine needs nothing.
    """
    explicit = ("JAX_COORDINATOR_ADDRESS" in os.environ
                or os.environ.get("BBG_JAX_DISTRIBUTED") == "1")
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = int(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",")) > 0
    if explicit or slurm or tpu_pod:
        jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (or the given) devices with the batch axis ``data``.

    Built with ``Mesh`` directly: ``jax.make_mesh`` would default to Explicit axis types, under
    which unconstrained intermediates must be sharded by hand.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Splits axis ``batch_axis`` over ``data``; other axes are whole on every device."""
    return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def shard_like_batch(x: jax.Array, mesh: Mesh | None, batch_axis: int = 0) -> jax.Array:
    """Constrains an array created inside jit (z, encoder noise) to the batch's sharding.

    Without it, random latents drawn in the step are replicated and every device would run G on
    the whole batch.
    """
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, batch_axis))


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(
            f"The global batch ({global_batch}) must be divisible by the number of devices ({n}): "
            f"set config.train.batch_size to a multiple of {n}."
        )


def global_batch_from_local(local: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Assembles global arrays from each process's local part of the batch (numpy pytree)."""
    sharding = batch_sharding(mesh, batch_axis)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local
    )
