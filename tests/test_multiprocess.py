"""Several processes started through ``bbg_jax.main`` itself, as the launchers start them.

* two processes (4 CPU devices each, the documented JAX_* variables) train the smoke config with
  periodic evaluation (sample sheets, the probe, FID on 16 images) and match one 8-device
  process's training and evaluation metrics;
* SIGTERM to one of two processes: both checkpoint the same step and exit 0; the resumed run,
  started with SLURM's variables as ``srun`` sets them (no coordinator flags), finds its peer
  and is bit-identical to the uninterrupted one;
* a wrong or partial set of JAX_* variables stops with one line.

Multi-process CPU runs compile every time: JAX keys CPU executables per process, so the
persistent compilation cache is off there (``loop.use_compilation_cache``).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from xla_flags import cpu_devices

from bbg_jax import checkpoint, sharding
from bbg_jax.configs import load_experiment
from bbg_jax.train_state import create_train_state

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "experiments" / "smoke.py")
EVAL = ["--config.eval.evaluators=('samples','fid','probe','diagnostics')",
        "--config.eval.samples.every_steps=3", "--config.eval.fid.every_steps=3",
        "--config.eval.probe.every_steps=3", "--config.eval.diagnostics.every_steps=6",
        "--config.eval.fid.num_samples=16", "--config.eval.probe.epochs=2",
        "--config.eval.diagnostics.num_samples=16", "--config.eval.diagnostics.num_images=16"]


def free_port(low: int = 0) -> int:
    """A free loopback port (at or above ``low`` when given)."""
    for port in ([0] if not low else range(low, 65536)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port at or above {low}")


def _start(workdir, devices: int, env_extra: dict, cache: str, *flags, faults=()
           ) -> subprocess.Popen:
    """``faults``: tests/loop_driver.py flags (the run then starts through the driver)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest",
           "XLA_FLAGS": cpu_devices(devices), **env_extra}
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        if k not in env_extra:
            env.pop(k, None)
    entry = [str(ROOT / "tests" / "loop_driver.py"), *faults, "--"] if faults else [
        "-m", "bbg_jax.main"]
    cmd = [sys.executable, *entry, f"--config={SMOKE}", f"--workdir={workdir}",
           f"--config.train.compilation_cache_dir={cache}", *flags]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _jax_env(port: int, pid: int) -> dict:
    return {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(pid)}


def _finish(procs: list[subprocess.Popen], timeout: float = 1500) -> list[str]:
    """Every process's output; all must exit 0. None is left waiting on a coordinator."""
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-6000:]
    return outs


def _pair(workdir, cache, *flags, faults=()) -> list[subprocess.Popen]:
    port = free_port()
    return [_start(workdir, 4, _jax_env(port, pid), cache, *flags, faults=faults)
            for pid in (0, 1)]


def _state(workdir, step):
    """A step's train state on this (1-device) process, whatever devices wrote it."""
    config = load_experiment(SMOKE)
    abstract = jax.eval_shape(lambda: create_train_state(config, jax.random.key(0)))
    return checkpoint.restore_state(workdir, abstract, step)


def _metrics(workdir) -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _eval_metrics(workdir, step) -> dict:
    return json.loads((Path(workdir) / "eval" / f"step_{step}" / "report.json").read_text()
                      )["metrics"]


def _metric_tolerance(name: str) -> float:
    """How far the 2 x 4-process run's metric may lie from the 1 x 8 run's, as a fraction of the
    metric's largest magnitude over the 6 steps (so a loss passing near 0 is not held to a
    relative bound of its own). gloo sums across processes in another order than one process
    does, and the rounding differences grow through training. Measured on this project's 2-core
    machine: losses and scores within 1.4e-5, E's gradient norm 9.7e-4 by step 6 (earlier code);
    with the working tree of issue 33 every metric within 9.1e-7 (g_loss), gradient norms 1.9e-7.
    The bounds are about 3x the larger measurements."""
    if name.startswith("lr_"):
        return 0.0  # the schedules: a function of the step alone
    if name.startswith("grad_norm_"):
        return 3e-3
    return 5e-5  # losses, D's mean scores, the online probe's loss and accuracy


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory, compilation_cache):
    """The smoke config with evaluation: 2 processes x 4 devices, and 1 process x 8 devices."""
    multi, single = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one")
    start = time.time()
    procs = [*_pair(multi, compilation_cache, *EVAL),
             _start(single, 8, {}, compilation_cache, *EVAL)]
    outs = _finish(procs)
    print(f"2x4 and 1x8 smoke runs with evaluation: {time.time() - start:.0f} s")
    return multi, single, outs


def test_two_processes_train_and_evaluate_like_one(two_and_one):
    multi, single, outs = two_and_one
    assert "8 devices" in outs[0] and "8 devices" in outs[2]
    a, b = _metrics(single), _metrics(multi)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert all(set(ra) == set(rb) for ra, rb in zip(a, b, strict=True))
    worst = {k: max(abs(rb[k] - ra[k]) for ra, rb in zip(a, b, strict=True))
             / max(max(abs(r[k]) for r in a), 1e-30) for k in a[0] if k != "step"}
    print("1x8 vs 2x4 processes, worst difference per metric over its largest magnitude:",
          json.dumps({k: float(f"{v:.2g}") for k, v in sorted(worst.items())}))
    for k, v in worst.items():
        assert v <= _metric_tolerance(k), (k, v, _metric_tolerance(k))
    for step in (3, 6):
        ea, eb = _eval_metrics(single, step), _eval_metrics(multi, step)
        assert sorted(ea) == sorted(eb)
        assert any(k.startswith("fid_16_") for k in ea) and "probe_top1_bn_crelu_test" in ea
        assert ("latent_recovery_corr_raw" in ea) == (step == 6)
        for k in ea:
            # The whole evaluation split on both (never 1/N of it): identical features up to
            # reduction order. Measured: FID within 2.3e-5 relative, probe metrics equal.
            tol = 1e-3 * abs(ea[k]) + 1e-3 if k.startswith("fid") else 1 / 32 + 1e-9
            assert abs(ea[k] - eb[k]) <= tol, (step, k, ea[k], eb[k])
        sheets = {p.name for p in (Path(multi) / "eval" / f"step_{step}").glob("*.png")}
        assert "samples_ema_standing.png" in sheets
    a6, b6 = _state(single, 6), _state(multi, 6)
    flat_a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a6.params)])
    flat_b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b6.params)])
    # Bounds: 5x the measured 1-vs-8-device differences (rel L2 1.6e-5).
    assert np.linalg.norm(flat_b - flat_a) / np.linalg.norm(flat_a) < 1e-4


def test_sigterm_to_one_process_then_resume_under_slurm(two_and_one, tmp_path,
                                                           compilation_cache):
    reference = two_and_one[0]
    # Both pause a second per step from step 2, so the signal lands mid-run.
    procs = _pair(tmp_path, compilation_cache, faults=["--hold_at=2"])
    deadline = time.time() + 900
    while not (tmp_path / "hanging_at_2").exists():
        assert all(p.poll() is None for p in procs), procs[0].stdout.read()[-6000:]
        assert time.time() < deadline
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    outs = _finish(procs, timeout=600)
    stopped = [re.findall(r"SIGTERM: checkpointed step (\d+)", out) for out in outs]
    assert stopped[0] and stopped[0] == stopped[1], stopped
    step = int(stopped[0][0])
    assert 2 < step < 6
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == step, saved

    # The requeued job, started as srun starts it: SLURM's variables only, no JAX_* ones. jax
    # derives the coordinator's port from the job id: 61440 + job_id % 4096.
    port = free_port(low=61440 + os.getpid() % 2048)
    slurm = {"SLURM_JOB_ID": str(port - 61440), "SLURM_NTASKS": "2",
             "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_STEP_NUM_NODES": "1",
             "SLURM_NODELIST": "127.0.0.1"}
    outs = _finish([_start(tmp_path, 4, {**slurm, "SLURM_PROCID": str(i),
                                         "SLURM_LOCALID": str(i)}, compilation_cache)
                    for i in (0, 1)])
    assert f"resumed from step {step}" in outs[0] and "8 devices" in outs[0]
    a, b = _state(tmp_path, 6), _state(reference, 6)
    assert all(np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, "missing JAX_NUM_PROCESSES, JAX_PROCESS_ID"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "missing JAX_COORDINATOR_ADDRESS"),
    ({"JAX_COORDINATOR_ADDRESS": "nohost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two' must be a non-negative integer"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2 must be in [0, JAX_NUM_PROCESSES=2)"),
])
def test_wrong_or_partial_jax_variables_are_named(env, message):
    with pytest.raises(sharding.DistributedConfigError, match=re.escape(message)):
        sharding.distributed_args(env)


def test_distributed_arguments_from_the_environment():
    assert sharding.distributed_args({}) is None
    assert sharding.distributed_args({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476",
                                      "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}) == {
        "coordinator_address": "10.0.0.2:8476", "num_processes": 4, "process_id": 3}
    # On a TPU pod and under SLURM jax finds the count and id itself; the address may be given.
    pod = {"TPU_WORKER_HOSTNAMES": "w0,w1", "JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476"}
    assert sharding.distributed_args(pod) == {"coordinator_address": "10.0.0.2:8476"}
    assert sharding.distributed_args({"SLURM_NTASKS": "2"}) == {}


def test_partial_jax_variables_stop_main_with_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_PROCESSES": "2"}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    env.pop("JAX_PROCESS_ID", None)
    out = subprocess.run([sys.executable, "-m", "bbg_jax.main", f"--config={SMOKE}",
                          f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if "bbg_jax.main" in line]
    assert lines == ["bbg_jax.main: Multi-process launch outside a TPU pod or SLURM needs "
                     "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; missing "
                     "JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID (set: JAX_NUM_PROCESSES)."]
    assert "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())  # nothing written before the check
