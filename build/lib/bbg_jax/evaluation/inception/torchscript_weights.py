"""Read the tensors of a TorchScript (or ``torch.save``) zip archive without importing torch.

A TorchScript file is a zip: ``<root>/data.pkl`` pickles the module tree, with every tensor written
as ``torch._utils._rebuild_tensor_v2(persistent_id(("storage", dtype, key, device, numel)),
offset, size, stride, ...)`` and the storage bytes at ``<root>/data/<key>``. A restricted
unpickler maps exactly those globals to numpy and refuses everything else, so loading an
untrusted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any

import numpy as np

# torch storage class name -> numpy dtype (storages are little-endian in the archive).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

_JIT_LIST_BUILDERS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")


class ScriptObject:
    """Stand-in for a pickled ``__torch__.*`` module: its class name and its attribute dict."""

    def __init__(self, *args: Any):
        del args
        self.__dict__["_attrs"] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__["_attrs"] = dict(state)

    @property
    def attrs(self) -> dict[str, Any]:
        return self.__dict__["_attrs"]


def _script_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (ScriptObject,), {"qualname": qualname})


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *unused):
    del unused  # requires_grad, backward hooks, metadata: irrelevant for inference weights
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride))
    return np.array(view)  # a contiguous copy that owns its memory


def _rebuild_parameter(data: np.ndarray, *unused):
    del unused
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._root = root
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name in _JIT_LIST_BUILDERS:
            return list  # typed List[int] / List[float] / ... attributes (e.g. conv padding)
        if module == "collections" and name == "OrderedDict":
            return dict
        if module.startswith("__torch__"):
            return _script_class(f"{module}.{name}")
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, dtype, key, _device, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._root}/data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=dtype, count=numel)
        return self._storages[key]


def load_script_object(path: str) -> Any:
    """The unpickled ``data.pkl`` of a TorchScript zip: ScriptObjects whose tensors are numpy.

    ``path`` may be local or in an object store (read whole through ``bbg_jax.paths``)."""
    from bbg_jax import paths

    with zipfile.ZipFile(io.BytesIO(paths.path(path).read_bytes())) as archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkls}")
        root = pkls[0][: -len("/data.pkl")]
        return _Unpickler(archive.read(pkls[0]), archive, root).load()


def to_tree(obj: Any) -> Any:
    """ScriptObjects -> nested dicts (class name under ``"__class__"``); other values unchanged."""
    if isinstance(obj, ScriptObject):
        tree = {k: to_tree(v) for k, v in obj.attrs.items()
                if k not in ("training", "_is_full_backward_hook")}
        tree["__class__"] = obj.qualname
        return tree
    if isinstance(obj, dict):
        return {k: to_tree(v) for k, v in obj.items()}
    return obj
