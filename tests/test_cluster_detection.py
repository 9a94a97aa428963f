"""The launchers' environments through jax's own cluster detection, as a pod job starts.

Each case takes the environment a launcher produces from its ``DRY_RUN=1`` output (tpu_pod.sh's
worker command, slurm.sbatch's #SBATCH lines and srun line), adds what the platform itself
provides (a Cloud TPU VM's metadata server, srun's SLURM_* variables and GPU visibility), and
runs what ``bbg_jax.main`` runs: ``sharding.detect_cluster``, ``distributed_args`` and
``check_detected``, then jax's own ``distributed.State.initialize`` (the code behind
``jax.distributed.initialize``: ``ClusterEnv.auto_detect_unset_distributed_params``, the
cluster classes' ``get_coordinator_address/get_process_count/get_process_id/
get_local_process_id``). Replaced, because this machine is none of those platforms:

* the metadata server: a real HTTP server on loopback (``GCE_METADATA_IP``, which jax's
  ``get_metadata`` reads), answering as the VMs of a 4-worker v5p slice answer;
* ``running_in_cloud_tpu_vm``: jax sets it at import from the TPU chips it finds (none here);
* DNS for GKE's worker hostnames;
* jax's distributed runtime client and service (the network connection to the coordinator):
  the arguments jax passes them are recorded and the start stops there.

One test starts two real processes under metadata stubs, which join as a 2-process run through
``sharding.maybe_initialize_distributed`` and exchange their process ids.

These tests describe jax 0.10.2's detection (``jax/_src/clusters/``): another version fails
``test_jax_is_the_version_these_tests_describe`` until they are checked against it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jax
import pytest
from jax._src import cloud_tpu_init, xla_bridge
from jax._src import distributed as jax_distributed
from jax._src.clusters import cloud_tpu_cluster
from jax._src.clusters import cluster as jax_cluster
from xla_flags import cpu_devices

from bbg_jax import sharding

ROOT = Path(__file__).resolve().parents[1]
TPU_POD = ROOT / "launch" / "tpu_pod.sh"
SLURM = ROOT / "launch" / "slurm.sbatch"
JAX_VERSION = "0.10.2"  # the jax whose jax/_src/clusters/ these tests describe

# Every variable one of jax's cluster classes (or this project) reads to decide.
CLUSTER_VARS = re.compile(r"^(SLURM_|SLURMD_|OMPI_|TPU_|MEGASCALE_|KUBERNETES_|CUDA_VISIBLE|"
                          r"JAX_(COORDINATOR|NUM_PROCESSES|PROCESS_ID|LOCAL_DEVICE|PARTITION|"
                          r"SLICE)|BBG_JAX_DISTRIBUTED$|GCE_METADATA)")


def test_jax_is_the_version_these_tests_describe():
    pod_jax = re.search(r"^JAX_VERSION=(\S+)$", TPU_POD.read_text(), re.M).group(1)
    assert pod_jax == JAX_VERSION, "launch/tpu_pod.sh installs another jax than tested here"
    assert jax.__version__ == JAX_VERSION, (
        f"jax {jax.__version__} is installed; these tests describe jax {JAX_VERSION}'s cluster "
        "detection (jax/_src/clusters/). Read the new version's cloud_tpu_cluster.py, "
        "slurm_cluster.py and cluster.py, update the tests and launchers if needed, then "
        "JAX_VERSION here and in launch/tpu_pod.sh.")


# ---- the environments, from the launchers ----

def _dry_run(script: Path, *args: str, **env: str) -> str:
    result = subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                            timeout=20, env={"PATH": os.environ["PATH"], "DRY_RUN": "1", **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


def _words(line: str) -> list[str]:
    """A `+ ...` line's words, split by bash itself."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {line[2:]}"], capture_output=True,
                         text=True, check=True).stdout
    return out.split("\0")[:-1]


def _split_command(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """``env K=V ... python ...`` -> ({K: V}, [python, ...])."""
    env = {}
    if words and words[0] == "env":
        words = words[1:]
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
    return env, words


def tpu_worker_environment() -> dict[str, str]:
    """What `tpu_pod.sh run` sets for bbg_jax.main on every worker (the remote command's last
    line: ``worker_start RUN LOG_DEST LOG_EVERY [env K=V ...] python -m bbg_jax.main ...``)."""
    out = _dry_run(TPU_POD, "run", PROJECT="proj", ZONE="us-east5-a", TPU_NAME="bbg",
                   BUCKET="gs://bucket", CONFIG="experiments/table1.py:base", RUN="r1")
    [ssh] = [_words(line) for line in out.splitlines() if " ssh " in line]
    remote = ssh[ssh.index("--command") + 1]
    start = shlex.split(remote.splitlines()[-1])
    assert start[0] == "worker_start"
    env, command = _split_command(start[4:])
    assert command[:3] == ["python", "-m", "bbg_jax.main"], command
    return env


def slurm_launch(nodes: int, job_id: int, hosts: list[str], nodelist: str, cpus_on_node: int,
                 script: Path = SLURM) -> tuple[list[dict[str, str]], str]:
    """Every task's environment for `sbatch --nodes=NODES launch/slurm.sbatch`, and the
    script's DRY_RUN=1 output in the batch shell.

    The #SBATCH lines and the srun line come from the script's DRY_RUN=1 output (run in the
    batch shell's environment that sbatch derives from those #SBATCH lines); the per-task
    variables are the ones srun sets (block distribution, Slurm's documented GPU binding:
    --gpus-per-task binds each task to its own GPUs unless --gpu-bind=none).
    """
    directives = {}
    for line in _dry_run(script, **SLURM_VARS).splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.split()[1].lstrip("-").partition("=")
            directives[key] = value
    tasks_per_node = int(directives.get("ntasks-per-node", "1"))
    gpus_per_task = int(directives.get("gpus-per-task", "0"))
    gpus_per_node = int(directives.get("gpus-per-node", "0")) or gpus_per_task * tasks_per_node
    batch = {"SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id),
             "SLURM_JOB_NODELIST": nodelist, "SLURM_NODELIST": nodelist,
             "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes),
             "SLURM_NTASKS": str(nodes * tasks_per_node),
             "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
             "SLURM_GPUS_ON_NODE": str(gpus_per_node), "SLURM_CPUS_ON_NODE": str(cpus_on_node),
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    if "gpus-per-node" in directives:
        batch["SLURM_GPUS_PER_NODE"] = directives["gpus-per-node"]
    out = _dry_run(script, **SLURM_VARS, **batch)
    [srun] = [_words(line) for line in out.splitlines() if line.startswith("+ srun ")]
    options = dict(directives)
    for word in srun[1:]:
        if not word.startswith("--"):
            break
        key, _, value = word[2:].partition("=")
        options[key] = value
    program = next(i for i, word in enumerate(srun[1:], 1) if not word.startswith("--"))
    assert srun[program + 1:program + 3] == ["-m", "bbg_jax.main"], srun
    bind = options.get("gpu-bind", "none" if "gpus-per-task" not in options else
                       f"per_task:{options['gpus-per-task']}")
    ntasks = nodes * tasks_per_node
    tasks = []
    for node in range(nodes):
        for local in range(tasks_per_node):
            if bind == "none":
                visible = list(range(gpus_per_node))
            else:
                per = int(bind.partition(":")[2])
                visible = list(range(local * per, (local + 1) * per))
            tasks.append({
                **batch, "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
                "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks),
                "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_NODELIST": nodelist,
                "SLURM_STEP_NUM_NODES": str(nodes),
                "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
                "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
                "SLURM_PROCID": str(node * tasks_per_node + local), "SLURM_LOCALID": str(local),
                "SLURM_NODEID": str(node), "SLURMD_NODENAME": hosts[node],
                "SLURM_CPUS_PER_TASK": options.get("cpus-per-task", "1"),
                "CUDA_VISIBLE_DEVICES": ",".join(map(str, visible))})
    return tasks, out


SLURM_VARS = {"CONFIG": "experiments/table1.py:base", "WORKDIR": "/shared/runs/base",
              "DATA_DIR": "/shared/tfds"}


# ---- the platforms ----

class MetadataServer:
    """A GCE metadata server on loopback: /computeMetadata/v1/instance/attributes/<key>, only
    with the header ``Metadata-Flavor: Google`` (as the real one)."""

    def __init__(self, attributes: dict[str, str]):
        self.attributes = attributes
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- http.server's name
                key = self.path.removeprefix("/computeMetadata/v1/instance/attributes/")
                server.requests.append(key)
                value = server.attributes.get(key)
                ok = self.headers.get("Metadata-Flavor") == "Google" and value is not None
                body = (value if ok else "not found").encode()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/text")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def v5p_worker(worker: int, ips: list[str]) -> dict[str, str]:
    """A v5p-32 slice's metadata as worker WORKER sees it (4 hosts of 4 chips, one slice)."""
    return {
        "accelerator-type": "v5p-32",
        "agent-worker-number": str(worker),
        "worker-network-endpoints": ",".join(f"unknown:unknown:{ip}" for ip in ips),
        "tpu-env": "\n".join([
            "ACCELERATOR_TYPE: 'v5p-32'", "CHIPS_PER_HOST_BOUNDS: '2,2,1'",
            "HOST_BOUNDS: '1,1,4'", "TOPOLOGY: '2x2x4'", "TYPE: 'V5P'",
            f"WORKER_ID: '{worker}'", "ZONE: 'us-east5-a'"]) + "\n",
    }


@pytest.fixture
def clean_env(monkeypatch):
    """No cluster variable of this machine leaks in; loopback never goes through a proxy."""
    for key in list(os.environ):
        if CLUSTER_VARS.match(key):
            monkeypatch.delenv(key)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return monkeypatch


@pytest.fixture
def tpu_vm(clean_env):
    """What `import jax` finds on a Cloud TPU VM: running_in_cloud_tpu_vm (set from the TPU
    chips; each module keeps its own copy) and no TPU_SKIP_MDS_QUERY (set where there are none).
    """
    for module in (cloud_tpu_init, jax_cluster, cloud_tpu_cluster):
        clean_env.setattr(module, "running_in_cloud_tpu_vm", True)
    return clean_env


class _Stopped(Exception):
    pass


def jax_initialize(args: dict) -> dict:
    """jax's ``distributed.State().initialize(**args)`` up to the connection to the coordinator;
    returns what jax would connect with and which devices it would leave visible."""
    seen: dict = {}

    class Client:
        def connect(self):
            raise _Stopped

    class Runtime:
        @staticmethod
        def get_distributed_runtime_service(address, num_processes, **kwargs):
            seen["service"] = (address, num_processes)

        @staticmethod
        def get_distributed_runtime_client(address, process_id, **kwargs):
            seen.update(coordinator=address, process_id=process_id)
            return Client()

    visible = xla_bridge.CUDA_VISIBLE_DEVICES.value
    saved = jax_distributed._jax
    jax_distributed._jax = Runtime
    state = jax_distributed.State()
    try:
        with pytest.raises(_Stopped):
            state.initialize(**args)
        seen.update(num_processes=state.num_processes,
                    cuda_visible=xla_bridge.CUDA_VISIBLE_DEVICES.value)
    finally:
        jax_distributed._jax = saved
        jax.config.update("jax_cuda_visible_devices", visible)
        jax.config.update("jax_rocm_visible_devices", "all")
    return seen


def bbg_start(environ=None) -> tuple[sharding.Cluster | None, dict | None]:
    """What sharding.maybe_initialize_distributed decides, before it calls jax."""
    environ = os.environ if environ is None else environ
    cluster = sharding.detect_cluster()
    args = sharding.distributed_args(environ, cluster)
    sharding.check_detected(args, cluster, environ)
    return cluster, args


# ---- Cloud TPU VM (tpu_pod.sh) ----

V5P_IPS = ["10.130.0.2", "10.130.0.3", "10.130.0.4", "10.130.0.5"]


@pytest.mark.parametrize("extra", [{}, {"JAX_COORDINATOR_ADDRESS": "10.130.0.2:8476"}],
                         ids=["launcher", "with-old-coordinator-variable"])
def test_cloud_tpu_vm_slice_is_found_from_the_metadata(tpu_vm, extra):
    launcher = tpu_worker_environment()
    assert not any(CLUSTER_VARS.match(k) for k in launcher), launcher  # jax decides
    for key, value in {**launcher, **extra}.items():
        tpu_vm.setenv(key, value)
    assert "TPU_WORKER_HOSTNAMES" not in os.environ  # GKE's, not a TPU VM's
    server = MetadataServer({})
    tpu_vm.setenv("GCE_METADATA_IP", server.address)
    try:
        for worker in range(4):
            server.attributes = v5p_worker(worker, V5P_IPS)
            cluster, args = bbg_start()
            assert cluster == sharding.Cluster("GceTpuCluster", 4, "gcetpu")
            assert args == {"cluster_detection_method": "gcetpu", **(
                {"coordinator_address": extra["JAX_COORDINATOR_ADDRESS"]} if extra else {})}
            got = jax_initialize(args)
            port = "8476" if extra else cloud_tpu_cluster.coordinator_port
            assert got["coordinator"] == f"10.130.0.2:{port}"  # worker 0
            assert (got["num_processes"], got["process_id"]) == (4, worker)
            assert ("service" in got) == (worker == 0)  # worker 0 runs the coordinator
            assert got["cuda_visible"] == "all"  # jax never restricts a TPU VM's devices
        assert "agent-worker-number" in server.requests
    finally:
        server.close()


def test_single_host_tpu_vm_starts_no_distributed_runtime(tpu_vm):
    server = MetadataServer(v5p_worker(0, ["10.130.0.2"]) | {"accelerator-type": "v5p-8"})
    tpu_vm.setenv("GCE_METADATA_IP", server.address)
    try:
        assert bbg_start() == (sharding.Cluster("GceTpuCluster", 1, "gcetpu"), None)
    finally:
        server.close()


# ---- GKE TPU pod (no launcher here: the variables GKE's TPU webhook sets) ----

GKE_HOSTS = [f"bbg-slice-job-0-{i}.bbg" for i in range(4)]


def test_gke_tpu_pod_is_found_from_its_variables(tpu_vm):
    """GKE's node metadata is taken to answer tpu-env but not agent-worker-number, so jax's
    GceTpuCluster (asked first) retries 6 times, 3 s, and says no: 12 s of this test."""
    launcher = tpu_worker_environment()  # the same command, as the container's
    server = MetadataServer({"tpu-env": v5p_worker(0, V5P_IPS)["tpu-env"]})
    tpu_vm.setenv("GCE_METADATA_IP", server.address)
    resolve = cloud_tpu_cluster.socket.gethostbyname
    addresses = dict(zip(GKE_HOSTS, V5P_IPS, strict=True))
    tpu_vm.setattr(cloud_tpu_cluster.socket, "gethostbyname",
                   lambda host: addresses.get(host) or resolve(host))
    try:
        for worker in range(4):
            for key, value in {**launcher, "TPU_WORKER_HOSTNAMES": ",".join(GKE_HOSTS),
                               "TPU_WORKER_ID": str(worker)}.items():
                tpu_vm.setenv(key, value)
            cluster, args = bbg_start()
            assert cluster == sharding.Cluster("GkeTpuCluster", 4, "gketpu")
            assert args == {"cluster_detection_method": "gketpu"}
            got = jax_initialize(args)
            assert got["coordinator"] == f"{GKE_HOSTS[0]}:8482"
            assert (got["num_processes"], got["process_id"]) == (4, worker)
            assert got["cuda_visible"] == "all"
    finally:
        server.close()


# ---- SLURM (slurm.sbatch) ----

SLURM_JOB = {"nodes": 2, "job_id": 731245, "hosts": ["gpu017", "gpu018"],
             "nodelist": "gpu[017-018]", "cpus_on_node": 96}  # as docs/pod.md shows it


def test_slurm_two_nodes_use_every_gpu(clean_env):
    hosts, job_id = SLURM_JOB["hosts"], SLURM_JOB["job_id"]
    tasks, _ = slurm_launch(**SLURM_JOB)
    assert len(tasks) == 16
    port = job_id % 4096 + 61440  # jax's SLURM port
    used: dict[str, set[int]] = {h: set() for h in hosts}
    for task in tasks:
        for key in [k for k in os.environ if CLUSTER_VARS.match(k)]:
            clean_env.delenv(key)
        for key, value in task.items():
            clean_env.setenv(key, value)
        cluster, args = bbg_start()
        assert cluster == sharding.Cluster("SlurmCluster", 16, "slurm")
        assert args == {"cluster_detection_method": "slurm"}
        got = jax_initialize(args)
        assert got["coordinator"] == f"gpu017:{port}"
        assert (got["num_processes"], got["process_id"]) == (16, int(task["SLURM_PROCID"]))
        # jax drives the SLURM_LOCALID-th GPU the task sees (jax_cuda_visible_devices indexes
        # the CUDA-visible GPUs): it must exist, and be this task's own.
        [index] = map(int, got["cuda_visible"].split(","))
        visible = [int(g) for g in task["CUDA_VISIBLE_DEVICES"].split(",")]
        assert index < len(visible), (task["SLURM_LOCALID"], task["CUDA_VISIBLE_DEVICES"])
        assert visible[index] not in used[task["SLURMD_NODENAME"]]
        used[task["SLURMD_NODENAME"]].add(visible[index])
        assert task["SLURM_CPUS_PER_TASK"] == "12"  # 96 CPUs shared by 8 tasks
    assert used == {h: set(range(8)) for h in hosts}  # 8 GPUs per node in use, none idle


# ---- the documented JAX_* variables, and what is refused ----

def test_documented_jax_variables(clean_env):
    for key, value in {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476", "JAX_NUM_PROCESSES": "2",
                       "JAX_PROCESS_ID": "1"}.items():
        clean_env.setenv(key, value)
    cluster, args = bbg_start()
    assert cluster is None
    assert args == {"coordinator_address": "10.0.0.2:8476", "num_processes": 2,
                    "process_id": 1}
    got = jax_initialize(args)
    assert got == {"coordinator": "10.0.0.2:8476", "process_id": 1, "num_processes": 2,
                   "cuda_visible": "all"}
    assert "`JAX_COORDINATOR_ADDRESS=host:port`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`" in (
        ROOT / "docs" / "pod.md").read_text()  # the variables documented there


@pytest.mark.parametrize("env, message", [
    # The case on a machine that is no TPU VM: the old tpu_pod.sh variable alone.
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476"},
     "Multi-process launch outside a TPU pod or SLURM needs JAX_COORDINATOR_ADDRESS, "
     "JAX_NUM_PROCESSES, JAX_PROCESS_ID; missing JAX_NUM_PROCESSES, JAX_PROCESS_ID (set: "
     "JAX_COORDINATOR_ADDRESS)."),
    # python started in the batch shell, not by srun.
    ({"SLURM_NTASKS": "16", "SLURM_JOB_ID": "7"},
     "SLURM_NTASKS=16 asks for several processes, but jax 0.10.2 detects no cluster here. "
     "Allowed: a SLURM step (srun sets SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, "
     "SLURM_PROCID, SLURM_LOCALID; missing SLURM_STEP_NODELIST, SLURM_PROCID, SLURM_LOCALID), a "
     "Cloud TPU VM slice (its metadata server lists the workers), a GKE TPU pod "
     "(TPU_WORKER_HOSTNAMES and TPU_WORKER_ID on a TPU node), or all of "
     "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID."),
    # GKE's variables on a machine without TPUs.
    ({"TPU_WORKER_HOSTNAMES": "w0,w1", "TPU_WORKER_ID": "0"},
     "TPU_WORKER_HOSTNAMES=w0,w1 asks for several processes, but jax 0.10.2 detects no "
     "cluster here."),
])
def test_no_detectable_cluster_is_one_line(clean_env, env, message):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(sharding.DistributedConfigError) as error:
        sharding.maybe_initialize_distributed()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_single_process_here_asks_no_one(clean_env):
    assert bbg_start() == (None, None)  # this machine: no cluster, no variables


# ---- two real processes on one Cloud TPU slice's metadata ----

JOIN = """
import json, os
import jax
from jax._src import cloud_tpu_init
from jax._src.clusters import cloud_tpu_cluster, cluster
# What `import jax` sets on a TPU VM (here it found no TPU chips).
for module in (cloud_tpu_init, cluster, cloud_tpu_cluster):
    module.running_in_cloud_tpu_vm = True
os.environ.pop("TPU_SKIP_MDS_QUERY", None)
from bbg_jax import sharding
sharding.maybe_initialize_distributed()
import numpy as np
from jax.experimental import multihost_utils
ids = multihost_utils.process_allgather(np.array([jax.process_index()]), tiled=True)
print("RESULT", json.dumps({"index": jax.process_index(), "count": jax.process_count(),
      "local": jax.local_device_count(), "global": jax.device_count(), "ids": ids.tolist()}),
      flush=True)
jax.distributed.shutdown()
"""


def test_two_tpu_vm_workers_join_through_the_sharding_path(clean_env):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    servers = [MetadataServer(v5p_worker(w, ["127.0.0.1", "127.0.0.1"])) for w in (0, 1)]
    base = {k: v for k, v in os.environ.items() if not CLUSTER_VARS.match(k)}
    procs = []
    try:
        for server in servers:
            # The launcher's environment; loopback stands in for the workers' addresses and a
            # free port for jax's fixed 8482 (JAX_COORDINATOR_PORT, which jax reads).
            env = {**base, **tpu_worker_environment(), "GCE_METADATA_IP": server.address,
                   "JAX_COORDINATOR_PORT": str(port), "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": cpu_devices(2),
                   "NO_PROXY": "127.0.0.1,localhost"}
            # stderr apart: gloo's native lines would otherwise land inside the RESULT line.
            procs.append(subprocess.Popen([sys.executable, "-c", JOIN], cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        # The join is over once both printed what the allgather returned. What jax does after
        # (its shutdown barrier, which can wait out a heartbeat when one process leaves first on
        # a loaded machine) is not what this test checks, so the processes are stopped then.
        outs, errs = [[] for _ in procs], [[] for _ in procs]
        readers = [threading.Thread(target=lambda f=f, o=o: o.extend(f), daemon=True)
                   for p, out, err in zip(procs, outs, errs, strict=True)
                   for f, o in ((p.stdout, out), (p.stderr, err))]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                any(x.startswith("RESULT ") for x in out) or proc.poll() is not None
                for proc, out in zip(procs, outs, strict=True)):
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for server in servers:
            server.close()
    results = []
    for proc in procs:
        proc.wait(timeout=30)
    for reader in readers:
        reader.join(timeout=10)
    for proc, out, err in zip(procs, outs, errs, strict=True):
        lines = [x for x in out if x.startswith("RESULT ")]
        assert len(lines) == 1, f"exit {proc.returncode}: " + "".join(out + err)[-3000:]
        results.append(json.loads(lines[0][7:]))
    assert results == [{"index": i, "count": 2, "local": 2, "global": 4, "ids": [0, 1]}
                       for i in (0, 1)]
    assert all("agent-worker-number" in s.requests for s in servers)


def test_docs_show_the_launchers_dry_run_output():
    """docs/pod.md's `DRY_RUN=1` blocks are what the launchers print for these tests."""
    blocks = re.findall(r"```\n(.*?)```", (ROOT / "docs" / "pod.md").read_text(), re.S)
    out = _dry_run(TPU_POD, "run", PROJECT="proj", ZONE="us-east5-a", TPU_NAME="bbg",
                   BUCKET="gs://bucket", CONFIG="experiments/table1.py:base", RUN="r1")
    [ssh] = [_words(line) for line in out.splitlines() if " ssh " in line]
    assert ssh[ssh.index("--command") + 1].splitlines()[-1] + "\n" in blocks
    assert slurm_launch(**SLURM_JOB)[1] in blocks
