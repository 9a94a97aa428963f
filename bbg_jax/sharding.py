"""Device mesh, shardings and global-batch assembly.

Decision (DESIGN.md): jit over a Mesh, not pmap. The batch is split along one mesh axis, ``data``;
parameters and the rest of the train state are replicated. Batch statistics computed under jit
over the global batch are therefore cross-replica for free.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bbg_jax.configs import ConfigError

DATA_AXIS = "data"


class DistributedConfigError(ValueError):
    """The multi-process environment variables are wrong or incomplete."""


_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def distributed_args(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """``jax.distributed.initialize`` arguments for this process, or None for a single process.

    * TPU pod (TPU_WORKER_HOSTNAMES lists several workers) and SLURM (SLURM_NTASKS > 1): jax
      discovers the coordinator, the process count and id itself; JAX_COORDINATOR_ADDRESS may
      name the coordinator (launch/tpu_pod.sh sets it).
    * Elsewhere: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID, all
      three. BBG_JAX_DISTRIBUTED=1 forces the call where none of these signals is visible.
    """
    given = {k: environ[k].strip() for k in _ENV if environ.get(k, "").strip()}
    slurm = int(environ.get("SLURM_NTASKS", "1") or 1) > 1
    tpu_pod = environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    if not (given or slurm or tpu_pod or environ.get("BBG_JAX_DISTRIBUTED") == "1"):
        return None
    args: dict[str, Any] = {}
    address = given.get("JAX_COORDINATOR_ADDRESS")
    if address is not None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise DistributedConfigError(
                f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port (e.g. 10.0.0.2:8476).")
        args["coordinator_address"] = address
    counts = [k for k in _ENV[1:] if k in given]
    if counts or not (slurm or tpu_pod):
        missing = [k for k in _ENV if k not in given]
        if missing:
            raise DistributedConfigError(
                f"Multi-process launch outside a TPU pod or SLURM needs {', '.join(_ENV)}; "
                f"missing {', '.join(missing)} (set: {', '.join(given) or 'none'}).")
        for k in _ENV[1:]:
            if not given[k].isdigit():
                raise DistributedConfigError(f"{k}={given[k]!r} must be a non-negative integer.")
        num, pid = int(given["JAX_NUM_PROCESSES"]), int(given["JAX_PROCESS_ID"])
        if num < 1 or pid >= num:
            raise DistributedConfigError(
                f"JAX_PROCESS_ID={pid} must be in [0, JAX_NUM_PROCESSES={num}).")
        args.update(num_processes=num, process_id=pid)
    return args


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> None:
    """Joins a multi-process run when launched as one (TPU pod, SLURM, or the JAX_* variables of
    ``distributed_args``). A single process on one machine needs nothing."""
    args = distributed_args(os.environ if environ is None else environ)
    if args is not None:
        jax.distributed.initialize(**args)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The 1-D mesh over all (or the given) devices with the batch axis ``data``: the one mesh
    that training, evaluation, the benchmark and ``compile_check`` use.

    Devices in physical order where they have coordinates (TPU), so the data axis follows the
    torus; as given elsewhere. Built with ``Mesh`` directly: ``jax.make_mesh`` would default to
    Explicit axis types, under which unconstrained intermediates must be sharded by hand.
    """
    devices = jax.devices() if devices is None else list(devices)
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh((len(devices),), devices)
    except Exception:  # noqa: BLE001 -- devices without coordinates (CPU) keep their order
        arr = np.asarray(devices)
    return Mesh(arr, (DATA_AXIS,))


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
    """The global batch (``data.batch_size``) splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if global_batch % n:
        raise ConfigError(f"data.batch_size={global_batch}: allowed a multiple of {n} (the "
                          f"global batch is split evenly over the {n} devices)")


def global_batch_from_local(local: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Assembles global arrays from each process's local part of the batch (numpy pytree)."""
    sharding = batch_sharding(mesh, batch_axis)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local
    )
