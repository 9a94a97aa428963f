"""Device mesh, shardings and global-batch assembly.

Decision: jit over a Mesh, not pmap. The batch is split along one mesh axis, ``data``;
parameters and the rest of the train state are replicated. Batch statistics computed under jit
over the global batch are therefore cross-replica for free.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
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
# What jax 0.10.2's SlurmCluster needs (jax/_src/clusters/slurm_cluster.py): srun sets them all.
_SLURM_ENV = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The cluster environment ``jax.distributed.initialize()`` detects (``detect_cluster``)."""

    name: str  # jax's ClusterEnv class, e.g. GceTpuCluster, GkeTpuCluster, SlurmCluster
    process_count: int
    # The class's ``name``, jax's ``cluster_detection_method`` for it ("" for K8sCluster).
    method: str = ""


def detect_cluster() -> Cluster | None:
    """The cluster ``jax.distributed.initialize()`` would auto-detect here, or None.

    jax's own detection, in its own order (``ClusterEnv.auto_detect_unset_distributed_params``
    with no ``cluster_detection_method``: the first class that is not opt-in and whose
    ``is_env_present()`` is True). It reads ``os.environ`` and, on a Cloud TPU VM, the VM's
    metadata server (``GceTpuCluster``: the workers of the slice and this worker's number; no
    TPU_WORKER_HOSTNAMES there, that variable is GKE's). Elsewhere it looks at variables only.
    """
    from jax._src import clusters

    for env in clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method:
            continue
        try:
            with warnings.catch_warnings():  # K8sCluster warns where the kubernetes package is
                warnings.simplefilter("ignore")  # missing; it is then simply not detected
                if not env.is_env_present():
                    continue
            count = env.get_process_count()
        except Exception as e:  # noqa: BLE001 -- e.g. an unreachable metadata server
            raise DistributedConfigError(
                f"jax's cluster detection ({env.__name__}) failed: {type(e).__name__}: "
                f"{' '.join(str(e).split())}") from None
        return Cluster(env.__name__, int(count), env.name)
    return None


def _hints(environ: Mapping[str, str]) -> list[str]:
    """Variables that say a launcher meant several processes (jax's detection decides)."""
    hints = []
    if int(environ.get("SLURM_NTASKS", "1") or 1) > 1:
        hints.append(f"SLURM_NTASKS={environ['SLURM_NTASKS']}")
    for k in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        if environ.get(k, "").count(",") > 0:
            hints.append(f"{k}={environ[k]}")
    return hints


def distributed_args(environ: Mapping[str, str], cluster: Cluster | None = None
                     ) -> dict[str, Any] | None:
    """``jax.distributed.initialize`` arguments for this process, or None for a single process.

    * ``cluster``: what jax detects (``detect_cluster``): a Cloud TPU VM slice (the metadata
      server), a GKE TPU pod (TPU_WORKER_HOSTNAMES), SLURM (srun's SLURM_* variables), Open MPI.
      There jax finds the coordinator, the process count and id itself (and, under SLURM on
      GPUs, the one GPU each task drives: SLURM_LOCALID), told which cluster it is
      (``cluster_detection_method``: the same class, without asking the others again; on GKE
      jax would first wait 3 s for the TPU VM metadata). JAX_COORDINATOR_ADDRESS may still
      name the coordinator. A detected cluster of one process needs nothing.
    * Elsewhere: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID, all
      three. BBG_JAX_DISTRIBUTED=1 forces the call where none of these signals is visible.
    * SLURM_NTASKS > 1 or several TPU_WORKER_HOSTNAMES also count as a cluster launch here;
      ``check_detected`` then requires jax to detect it (``maybe_initialize_distributed``).
    """
    given = {k: environ[k].strip() for k in _ENV if environ.get(k, "").strip()}
    hints = _hints(environ)
    managed = cluster is not None or bool(hints)
    several = (cluster is not None and cluster.process_count > 1) or bool(hints)
    if not (given or several or environ.get("BBG_JAX_DISTRIBUTED") == "1"):
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
    if counts or not managed:
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
    if cluster is not None and cluster.method:
        args["cluster_detection_method"] = cluster.method
    return args


def check_detected(args: dict[str, Any] | None, cluster: Cluster | None,
                   environ: Mapping[str, str]) -> None:
    """A launch that leaves the process count to jax (``args`` without it) needs a cluster jax
    detects: otherwise one line naming what jax looks for, instead of jax's own ValueError."""
    if args is None or "num_processes" in args or cluster is not None:
        return
    missing = [k for k in _SLURM_ENV if k not in environ]
    slurm = (f"a SLURM step (srun sets {', '.join(_SLURM_ENV)}"
             + (f"; missing {', '.join(missing)})" if missing else ")"))
    raise DistributedConfigError(
        f"{', '.join(_hints(environ)) or 'BBG_JAX_DISTRIBUTED=1'} asks for several processes, "
        f"but jax {jax.__version__} detects no cluster here. Allowed: {slurm}, a Cloud TPU VM "
        "slice (its metadata server lists the workers), a GKE TPU pod (TPU_WORKER_HOSTNAMES "
        f"and TPU_WORKER_ID on a TPU node), or all of {', '.join(_ENV)}.")


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> None:
    """Joins a multi-process run when launched as one (a cluster jax detects, or the JAX_*
    variables of ``distributed_args``). A single process on one machine needs nothing.

    jax's detection reads ``os.environ`` (and a Cloud TPU VM's metadata server) whatever
    ``environ`` is; ``environ`` is what this module reads.
    """
    environ = os.environ if environ is None else environ
    cluster = detect_cluster()
    args = distributed_args(environ, cluster)
    check_detected(args, cluster, environ)
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
