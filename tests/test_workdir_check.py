"""A workdir the run cannot create, reach or write stops every process in one line, first.

Through the real command line (``python -m bbg_jax.main --config=experiments/smoke.py
--workdir=BAD``): exit 1, exactly one line on stderr naming the path and the reason, no
traceback, within seconds (before data, model initialisation or any compile), nothing left on
disk. Cases: malformed object-store URLs (with TensorFlow's GCS client in charge, as on a
default install), a local parent that cannot be created (under /proc; under a regular file), a
bucket that does not exist on a real GCS server (fake-gcs-server), an object store on a closed
loopback port (the probe's time limit), and two processes of a multi-process launch that both
say so before joining each other.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bbg_jax import paths

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "experiments/smoke.py"
FAST_S = 60  # a compile of the smoke config takes longer than this on the test machine


def _env(**extra) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        if k not in extra:
            env.pop(k, None)
    return env


def _main(workdir: str, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bbg_jax.main", f"--config={ROOT / SMOKE}",
                             f"--workdir={workdir}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_line(proc: subprocess.Popen, began: float) -> str:
    out, err = proc.communicate(timeout=300)
    took = time.monotonic() - began
    assert proc.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and 'File "' not in err
    assert took < FAST_S, f"{took:.0f} s: the check came after something slow"
    return lines[0]


def _run(workdir: str, env: dict, cwd: Path) -> str:
    return _one_line(_main(workdir, env, cwd), time.monotonic())


def _nothing_local(cwd: Path) -> None:
    assert not any(p.name.startswith("gs:") for p in cwd.rglob("*"))


@pytest.mark.parametrize("workdir, reason", [
    ("gs://bad bucket/run", "bucket name 'bad bucket' contains whitespace"),
    ("gs:///run", "no bucket name"),
    ("gs://My_Bucket/run", "bucket name 'My_Bucket' is not a Cloud Storage bucket name"),
    ("gcs://bucket/run", "unknown object store 'gcs://'"),
    ("gs:/bucket/run", "looks like an object-store URL with a slash missing"),
], ids=["space", "no bucket", "uppercase", "unknown scheme", "one slash"])
def test_malformed_object_store_url(tmp_path, workdir, reason):
    # The default environment: TensorFlow's GCS client would serve gs:// (and retry DNS).
    env = _env()
    env.pop("EPATH_USE_TF", None)
    line = _run(workdir, env, tmp_path)
    assert line.startswith(f"bbg_jax.main: --workdir={workdir!r}: "), line
    assert reason in line, line
    assert "allowed gs://BUCKET/PATH or a local directory" in line
    _nothing_local(tmp_path)
    assert not any(tmp_path.iterdir())


def test_parent_that_cannot_be_created(tmp_path):
    # Root may write anywhere its permission bits say no; /proc refuses a new directory.
    line = _run("/proc/bbg_jax_nowhere/run", _env(), tmp_path)
    assert line == ("bbg_jax.main: --workdir='/proc/bbg_jax_nowhere/run': cannot be created "
                    "(FileNotFoundError: No such file or directory: /proc/bbg_jax_nowhere); "
                    "allowed a directory this process can create and write"), line


def test_parent_is_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("not a directory\n")
    line = _run(str(tmp_path / "file" / "run"), _env(), tmp_path)
    assert line.startswith(f"bbg_jax.main: --workdir='{tmp_path}/file/run': "), line
    assert f"{tmp_path}/file is a file" in line
    assert (tmp_path / "file").read_text() == "not a directory\n"


def test_bucket_that_does_not_exist(tmp_path, gcs_emulator):
    line = _run("gs://bbg-no-such-bucket/run", _env(**gcs_emulator), tmp_path)
    assert line.startswith("bbg_jax.main: --workdir='gs://bbg-no-such-bucket/run': bucket "
                           "'bbg-no-such-bucket' does not exist or these credentials cannot "
                           "see it (FileNotFoundError: "), line
    assert line.endswith("; allowed a bucket this process can write"), line
    _nothing_local(tmp_path)


def test_every_process_of_a_multi_process_launch_says_so(tmp_path, gcs_emulator):
    """Both processes stop before ``jax.distributed.initialize``: neither waits for the other."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.monotonic()
    procs = [_main("gs://bbg-no-such-bucket/run", _env(
        **gcs_emulator, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(i)), tmp_path) for i in (0, 1)]
    try:
        lines = [_one_line(p, began) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for line in lines:
        assert "bucket 'bbg-no-such-bucket' does not exist" in line, line


def test_unreachable_object_store_is_named_within_the_time_limit(tmp_path, gcs_emulator):
    """The store's endpoint is a closed loopback port: gcsfs retries (about 35 s), the probe
    gives up at its limit (3 s here, ``paths.PROBE_TIMEOUT_S`` in a run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = _env(**{**gcs_emulator, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{closed}"})
    code = ("import sys\nfrom bbg_jax import paths\ntry:\n"
            "    paths.check_workdir_usable('gs://bbg-bucket/run', timeout_s=3)\n"
            "except paths.WorkdirError as e:\n    sys.exit(str(e))\n")
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert time.monotonic() - began < 30
    assert out.returncode == 1, out
    assert out.stderr.strip() == ("--workdir='gs://bbg-bucket/run': no answer from the object "
                                  "store within 3 s while creating and writing a file there; "
                                  "allowed a workdir this process can reach"), out.stderr


def test_a_usable_workdir_is_created_and_left_empty(tmp_path, gcs_bucket):
    local = tmp_path / "a" / "b" / "run"
    paths.check_workdir_usable(str(local))
    assert local.is_dir() and not any(local.iterdir())
    remote = f"{gcs_bucket}/run"
    paths.check_workdir_usable(remote)
    import gcsfs

    gcsfs.GCSFileSystem(token="anon").invalidate_cache()
    assert gcsfs.GCSFileSystem(token="anon").ls(gcs_bucket[5:]) == []

