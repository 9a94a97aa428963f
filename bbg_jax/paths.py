"""Paths that may name an object store (``gs://bucket/run``) or the local disk.

Every read and write under a workdir (and ``train.init_from``, eval inputs) goes through
``etils.epath``: ``pathlib.Path("gs://b/x")`` is ``gs:/b/x``, and ``open``/``glob``/``shutil``
know no buckets. epath sends ``gs://`` to TensorFlow's GCS client when TensorFlow is importable
and to gcsfs otherwise (``EPATH_USE_TF=false`` forces gcsfs, which honours
``STORAGE_EMULATOR_HOST``); orbax's array files go through tensorstore
(``TENSORSTORE_GCS_HTTP_URL``).

Atomic writes: on local disk a temporary file is renamed into place; an object in a store
appears whole when its upload completes, so a direct write is already atomic there.

``check_workdir_usable`` is the first thing a run does with its workdir: a malformed URL, a
directory that cannot be created, a bucket that does not exist or cannot be reached, or a place
this process cannot write stops every process in one line (``WorkdirError``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import uuid
from typing import Any

import numpy as np
from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
    return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
    """``p`` as an epath: absolute on local disk (orbax needs that), untouched in a bucket."""
    s = os.fspath(p)
    return epath.Path(s if is_remote(s) else os.path.abspath(s))


# --- the workdir, checked before anything else --------------------------------------------------

class WorkdirError(ValueError):
    """The workdir cannot be created, reached or written: one line naming the path and why."""


# The object stores epath serves (gs:// is the one the project runs and tests on; s3:// and
# az:// need s3fs / adlfs). hf:// is read-only.
WORKDIR_SCHEMES = ("gs", "s3", "az")
# Google Cloud Storage bucket names: 3-63 characters (up to 222 with dots, each dot-separated
# part at most 63) of lowercase letters, digits, '-', '_' and '.', starting and ending with a
# letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(/.*)?$", re.S)
_ALMOST_URL = re.compile(r"^(gs|s3|az):/?[^/]", re.I)  # gs:bucket, gs:/bucket: a slash short
# How long the probe may take before the store counts as unreachable. gcsfs gives up on a
# refused connection after about 35 s of its own retries; TensorFlow's GCS client retries
# for minutes.
PROBE_TIMEOUT_S = 120.0


def _bucket_problem(scheme: str, bucket: str) -> str | None:
    if not bucket:
        return "no bucket name"
    if any(c.isspace() for c in bucket):
        return f"bucket name {bucket!r} contains whitespace"
    if scheme != "gs":
        return None
    if not _BUCKET.match(bucket) or (len(bucket) > 63 and "." not in bucket) or any(
            len(part) > 63 for part in bucket.split(".")):
        return (f"bucket name {bucket!r} is not a Cloud Storage bucket name (3-63 lowercase "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit)")
    return None


def _check_url(s: str, field: str) -> None:
    allowed = "allowed gs://BUCKET/PATH or a local directory"
    m = _URL.match(s)
    if m is None:
        raise WorkdirError(f"{field}: not an object-store URL (SCHEME://BUCKET/PATH); {allowed}")
    scheme, bucket, _ = m.groups()
    if scheme not in WORKDIR_SCHEMES:
        raise WorkdirError(f"{field}: unknown object store {scheme + '://'!r}; {allowed} "
                           f"(or {', '.join(x + '://' for x in WORKDIR_SCHEMES[1:])} with "
                           "their fsspec packages)")
    problem = _bucket_problem(scheme, bucket)
    if problem:
        raise WorkdirError(f"{field}: malformed object-store URL: {problem}; {allowed}")


def _reason(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror + (f": {error.filename}" if error.filename else "")
    else:
        text = (str(error).strip().splitlines() or [""])[0]
    text = " ".join(text.split())[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _probe(target: epath.Path, remote: bool, field: str) -> None:
    """Creates ``target`` (local disk), writes a small file in it and deletes it again."""
    if not remote:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except Exception as e:  # noqa: BLE001 - any failure is the answer, in one line
            raise WorkdirError(f"{field}: cannot be created ({_reason(e)}); allowed a "
                               "directory this process can create and write") from None
    probe = target / (f".bbg_jax_write_check.{socket.gethostname()}.{os.getpid()}."
                      f"{uuid.uuid4().hex[:8]}")
    try:
        probe.write_bytes(b"bbg_jax: can this process write its workdir?\n")
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - TensorFlow's and gcsfs' errors included
        if not remote:
            raise WorkdirError(f"{field}: cannot be written ({_reason(e)}); allowed a "
                               "directory this process can create and write") from None
        bucket = _URL.match(os.fspath(target)).group(2)
        if isinstance(e, FileNotFoundError):
            why = (f"bucket {bucket!r} does not exist or these credentials cannot see it "
                   f"({_reason(e)})")
        elif isinstance(e, PermissionError):
            why = f"no permission to write in bucket {bucket!r} ({_reason(e)})"
        else:
            why = f"cannot be reached or written ({_reason(e)})"
        raise WorkdirError(f"{field}: {why}; allowed a bucket this process can write") from None


def check_workdir_usable(workdir: PathLike, timeout_s: float | None = None) -> None:
    """The workdir can be created (local disk), reached (object store) and written: creates
    the directory if it is missing, writes a small file there and deletes it; otherwise a
    ``WorkdirError`` naming the path and the reason. A store that does not answer within
    ``timeout_s`` (default ``PROBE_TIMEOUT_S``) counts as unreachable."""
    s = os.fspath(workdir)
    field = f"--workdir={s!r}"
    remote = is_remote(s)
    if remote:
        _check_url(s, field)
    elif _ALMOST_URL.match(s):
        raise WorkdirError(f"{field}: looks like an object-store URL with a slash missing; "
                           "allowed gs://BUCKET/PATH or a local directory (./gs:... for a local "
                           "one)")
    target = path(s)
    outcome: list[BaseException | None] = []

    def attempt():
        try:
            _probe(target, remote, field)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(e)

    worker = threading.Thread(target=attempt, name="bbg_jax-workdir-check", daemon=True)
    worker.start()
    limit = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    worker.join(limit)
    if not outcome:
        where = "the object store" if remote else "the filesystem"
        raise WorkdirError(f"{field}: no answer from {where} within {limit:g} s while "
                           "creating and writing a file there; allowed a workdir this "
                           "process can reach")
    if outcome[0] is not None:
        raise outcome[0]


def write_atomic(p: PathLike, data: bytes | str) -> None:
    target = path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    if is_remote(target):
        target.write_bytes(raw)
        return
    tmp = target.parent / f".{target.name}.tmp"
    tmp.write_bytes(raw)
    os.replace(tmp, target)


def write_json(p: PathLike, obj: Any) -> None:
    write_atomic(p, json.dumps(obj, indent=2, sort_keys=True))


def read_json(p: PathLike) -> Any:
    return json.loads(path(p).read_text())


def save_npz(p: PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Arrays as .npz, streamed to the file (never a whole-object buffer: a host's part of
    ImageNet's features is GBs). Atomic: a local file is renamed into place, an object in a
    bucket appears only when its upload completes."""
    target = path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(target):
        with target.open("wb") as f:
            np.savez(_WriteOnly(f), **arrays)
        return
    tmp = target.parent / f".{target.name}.tmp"
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, target)


class _WriteOnly:
    """An object store's upload stream as numpy and zipfile want an unseekable file: it has a
    ``read`` (numpy's test for a file), and ``seek`` raises OSError (fsspec's raises
    ValueError, which zipfile does not expect)."""

    def __init__(self, f):
        self._f = f

    def write(self, data) -> int:
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def read(self, *args):
        raise OSError("write-only")

    def tell(self) -> int:
        raise OSError("unseekable")  # zipfile then counts the bytes itself

    def seek(self, *args):
        raise OSError("unseekable")


def load_npz(p: PathLike) -> dict[str, np.ndarray]:
    with path(p).open("rb") as fh, np.load(fh) as f:
        return dict(f)


def copytree(src: PathLike, dst: PathLike) -> None:
    """Copies a directory tree (between any two locations of one filesystem) without moving
    its bytes through this host: an object store copies each object itself (GCS's rewrite),
    a local file is hard-linked (checkpoint files are never modified, only deleted), or copied
    where links are not possible."""
    src, dst = path(src), path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        target = dst / child.name
        if child.is_dir():
            copytree(child, target)
        elif is_remote(child):
            child.copy(target, overwrite=True)
        else:
            try:
                os.link(child, target)
            except OSError:  # another filesystem, or links not allowed
                shutil.copyfile(child, target)


def rmtree(p: PathLike) -> None:
    p = path(p)
    if p.exists():
        p.rmtree()
