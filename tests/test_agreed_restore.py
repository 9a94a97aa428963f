"""Agreed restores (``checkpoint.restore_latest``): every process resumes from the same step,
and a transient object-store error is retried instead of taken for damage.

* Two real ``jax.distributed`` processes on loopback (one CPU device each) restore a workdir
  with checkpoints 3 and 6; process 1's read of step 6 fails (injected in that child only).
  Both end on step 3 and both log the same line naming step 6, process 1 and the reason.
* fake-gcs-server behind a loopback proxy written here that answers 503 to the first requests
  for the newest step's objects: the step is retried and restored, not moved aside; a store
  that keeps answering 503 stops the restore and moves nothing.

Checkpoints hold a tiny tree, not a train state: what is tested is the choice of the step.
Run as a script, this file is one of the two processes (``_child``).
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from xla_flags import cpu_devices

ROOT = Path(__file__).resolve().parents[1]
FAIL_ENV = "BBG_JAX_TEST_FAIL_STEP_ON_PROCESS"  # "<step>:<process>": the child injects there


def _config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"model": {"width": 4},
                                      "train": {"keep_last": 5, "keep_every": 0}})


def _tree(step: int) -> dict:
    return {"step": np.int32(step), "w": np.full(4, step, np.float32)}


def _write_checkpoints(workdir: str, steps=(3, 6)) -> None:
    from bbg_jax import checkpoint

    config = _config()
    manager = checkpoint.make_manager(workdir, config)
    for step in steps:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_tree(step)),
            config=ocp.args.JsonSave(config.to_dict()),
            data=ocp.args.JsonSave({"data_batch": step})), force=True)
    manager.wait_until_finished()
    manager.close()


# --- two processes ---------------------------------------------------------------------------

def _inject_read_failure(step: int) -> None:
    """This process cannot read the state of ``step``: orbax's restore raises as it would for
    a truncated array file (a non-transient error)."""
    original = ocp.Checkpointer.restore

    def restore(self, directory, *args, **kwargs):
        items = kwargs.get("args")
        if Path(str(directory)).name == str(step) and items is not None and "state" in items:
            raise ValueError(f"injected: the array files of step {step} are unreadable here")
        return original(self, directory, *args, **kwargs)

    ocp.Checkpointer.restore = restore


def _child(workdir: str, port: int, process: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", force=True)
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, process)
    step, where = (int(x) for x in os.environ[FAIL_ENV].split(":"))
    if process == where:
        _inject_read_failure(step)
    from bbg_jax import checkpoint, sharding

    mesh = sharding.make_mesh()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=sharding.replicated(mesh)), _tree(0))
    manager = checkpoint.make_manager(workdir, _config())
    state, position = checkpoint.restore_latest(manager, abstract, _config())
    print(f"RESTORED step={int(state['step'].addressable_data(0))} "
          f"w={np.asarray(state['w'].addressable_data(0)).tolist()} position={position}",
          flush=True)
    manager.close()


def test_two_processes_agree_on_the_older_step_when_one_cannot_read_the_newest(tmp_path):
    from test_multiprocess import free_port

    _write_checkpoints(str(tmp_path))
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", FAIL_ENV: "6:1",
           "XLA_FLAGS": cpu_devices(1)}
    began = time.monotonic()
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path), str(port), str(pid)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    print(f"two processes restoring: {time.monotonic() - began:.1f} s")
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-6000:]
    checkpoints = tmp_path / "checkpoints"
    agreed, summaries = [], []
    for out in outs:
        lines = out.splitlines()
        assert "RESTORED step=3 w=[3.0, 3.0, 3.0, 3.0] position={'data_batch': 3}" in lines, out
        said = [x for x in lines if "Checkpoint step 6" in x and "cannot be restored" in x]
        assert len(said) == 1, out  # one line, on each process
        agreed.append(said[0])
        summaries += [x for x in lines if x.startswith("bbg_jax.checkpoint: Restoring ")]
    assert agreed[0] == agreed[1] == (
        f"bbg_jax.checkpoint: Checkpoint step 6 in {checkpoints} cannot be restored (process 1 "
        "of 2: ValueError: injected: the array files of step 6 are unreadable here); every "
        "process goes on to an older step.")
    assert len(summaries) == 2 and summaries[0] == summaries[1], summaries
    assert summaries[0] == (
        f"bbg_jax.checkpoint: Restoring checkpoint step 3 in {checkpoints} on all 2 processes; "
        f"moved the damaged newer steps aside: step 6 to {tmp_path / 'checkpoints_damaged' / '6'}"
        " (process 1 of 2: ValueError: injected: the array files of step 6 are unreadable "
        "here).")
    # The failure was not transient: step 6 is moved aside (once, by process 0).
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["3"]
    assert [p.name for p in (tmp_path / "checkpoints_damaged").iterdir()] == ["6"]


# --- a flaky object store ------------------------------------------------------------------------

class _FlakyProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to ``upstream``, except that the next ``failures`` requests whose
    decoded URL contains ``match`` get HTTP 503 (as Cloud Storage answers when overloaded)."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = urllib.parse.urlsplit(upstream)
        self.match, self.failures, self.failed = "", 0, []
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def should_fail(self, url: str) -> bool:
        with self.lock:
            if self.failures > 0 and self.match and self.match in url:
                self.failures -= 1
                self.failed.append(url)
                return True
            return False


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    _HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
            "proxy-connection", "date", "server"}

    def _any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.should_fail(urllib.parse.unquote(self.path)):
            data = json.dumps({"error": {"code": 503, "message": "injected: Service "
                                         "Unavailable"}}).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        up = self.server.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body or None, headers={
                k: v for k, v in self.headers.items() if k.lower() not in self._HOP})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in self._HOP:
                self.send_header(k, v)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else len(data)
        self.send_header("Content-Length", str(length or 0))
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # gcsfs dropped a request it no longer needed (one of two in parallel)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

    def log_message(self, *args):
        pass


def _fresh_clients():
    """gcsfs instances (and their endpoint) are cached per process: make the next one anew."""
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture
def flaky_store(gcs_emulator, gcs_bucket, monkeypatch):
    """Checkpoints 3 and 6 in a bucket, reached through ``_FlakyProxy``: (workdir, proxy).

    gcsfs' own retries (6 tries over about 30 s per request) are off here, so that the 503
    reaches ``restore_latest`` at once, and its waits are 10 ms: the tries are counted, not
    timed."""
    import gcsfs.retry

    from bbg_jax import checkpoint

    workdir = f"{gcs_bucket}/run"
    _write_checkpoints(workdir)
    proxy = _FlakyProxy(gcs_emulator["STORAGE_EMULATOR_HOST"])
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", proxy.url)
    monkeypatch.setattr(gcsfs.retry, "is_retriable", lambda e: False)
    monkeypatch.setattr(checkpoint, "RETRY_DELAYS_S", (0.01, 0.01, 0.01))
    _fresh_clients()
    try:
        yield workdir, proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        monkeypatch.undo()
        _fresh_clients()


def _listing(workdir: str) -> dict[str, list[str]]:
    from etils import epath

    _fresh_clients()
    run = epath.Path(workdir)
    return {p.name: sorted(c.name for c in p.iterdir() if c.name.isdigit())
            for p in run.iterdir()}


def test_503s_on_the_newest_step_are_retried_not_taken_for_damage(flaky_store, caplog):
    from bbg_jax import checkpoint

    workdir, proxy = flaky_store
    manager = checkpoint.make_manager(workdir, _config())
    # gcsfs asks for an object and lists its name as a folder in parallel, so a try costs one
    # to three failed requests: 3 fail the first one to three of the 4 tries.
    proxy.match, proxy.failures = "run/checkpoints/6/", 3
    abstract = jax.eval_shape(lambda: _tree(0))
    with caplog.at_level(logging.WARNING, logger="bbg_jax.checkpoint"):
        state, position = checkpoint.restore_latest(manager, abstract, _config())
    manager.close()
    assert len(proxy.failed) == 3, proxy.failed
    assert int(state["step"]) == 6 and position == {"data_batch": 6}
    said = [r.getMessage() for r in caplog.records if r.name == "bbg_jax.checkpoint"]
    assert 1 <= len(said) <= 3 and all(
        "of checkpoint step 6" in m and "failed with a transient error (HttpError: injected"
        in m for m in said), said
    assert _listing(workdir) == {"checkpoints": ["3", "6"]}  # nothing moved aside


def test_a_store_that_keeps_failing_stops_the_restore_and_moves_nothing(flaky_store, caplog):
    from bbg_jax import checkpoint

    workdir, proxy = flaky_store
    manager = checkpoint.make_manager(workdir, _config())
    proxy.match, proxy.failures = "run/checkpoints/6/", 1000
    with caplog.at_level(logging.WARNING, logger="bbg_jax.checkpoint"), pytest.raises(
            checkpoint.CheckpointUnavailableError,
            match=r"step 6 .* kept failing after 4 tries \(HttpError: injected"):
        checkpoint.restore_latest(manager, jax.eval_shape(lambda: _tree(0)), _config())
    manager.close()
    said = [r.getMessage() for r in caplog.records if r.name == "bbg_jax.checkpoint"]
    assert len(said) == 3 and all("transient" in m for m in said), said
    assert _listing(workdir) == {"checkpoints": ["3", "6"]}


# --- what counts as transient ----------------------------------------------------------------

def test_transient_errors_are_those_of_an_unavailable_store():
    import aiohttp
    import requests
    from gcsfs.retry import HttpError

    from bbg_jax.checkpoint import is_transient

    def chained(error):
        try:
            raise error
        except Exception as e:  # noqa: BLE001
            try:
                raise RuntimeError("orbax: could not read the step") from e
            except RuntimeError as wrapped:
                return wrapped

    group = RuntimeError("tasks")  # as an exception group holds its members
    group.exceptions = (ValueError("bad"), TimeoutError())
    transient = [HttpError({"code": 503, "message": "Service Unavailable"}),
                 HttpError({"code": 429, "message": "rate"}), TimeoutError(),
                 ConnectionResetError(104, "Connection reset by peer"), ConnectionRefusedError(),
                 aiohttp.ServerDisconnectedError(), requests.exceptions.ProxyError(),
                 ValueError("UNAVAILABLE: Error reading \"ocdbt\": HTTP response code: 503"),
                 ValueError("DEADLINE_EXCEEDED: ..."),  # tensorstore, its retries spent:
                 ValueError("ABORTED: All 32 retry attempts failed: Service Unavailable "
                            "[http_response_code='503']"),
                 chained(HttpError({"code": 500, "message": "backend error"})),
                 group]
    damage = [FileNotFoundError("gs://b/run/checkpoints/6/state/_METADATA"),
              HttpError({"code": 403, "message": "Forbidden"}),
              ValueError("Found incomplete checkpoint at gs://b/run/checkpoints/6."),
              ValueError("NOT_FOUND: Error opening \"zarr\" driver"),
              chained(ValueError("DATA_LOSS: truncated"))]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in damage] == [False] * len(damage)


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
