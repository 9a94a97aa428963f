"""Paths that may name an object store (``gs://bucket/run``) or the local disk.

Every read and write under a workdir (and ``train.init_from``, eval inputs) goes through
``etils.epath``: ``pathlib.Path("gs://b/x")`` is ``gs:/b/x``, and ``open``/``glob``/``shutil``
know no buckets. epath sends ``gs://`` to TensorFlow's GCS client when TensorFlow is importable
and to gcsfs otherwise (``EPATH_USE_TF=false`` forces gcsfs, which honours
``STORAGE_EMULATOR_HOST``); orbax's array files go through tensorstore
(``TENSORSTORE_GCS_HTTP_URL``).

Atomic writes: on local disk a temporary file is renamed into place; an object in a store
appears whole when its upload completes, so a direct write is already atomic there.
"""

from __future__ import annotations

import io
import json
import os
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
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(p, buf.getvalue())


def load_npz(p: PathLike) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(path(p).read_bytes())) as f:
        return dict(f)


def copytree(src: PathLike, dst: PathLike) -> None:
    """Copies a directory tree file by file (works between any two epath filesystems)."""
    src, dst = path(src), path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            copytree(child, dst / child.name)
        else:
            (dst / child.name).write_bytes(child.read_bytes())


def rmtree(p: PathLike) -> None:
    p = path(p)
    if p.exists():
        p.rmtree()
