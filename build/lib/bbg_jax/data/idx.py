"""Reader for IDX files, the format of MNIST and Fashion-MNIST (numpy only, gzip or raw).

Format: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian
uint32, then the data in C order. Reading a prefix only touches its bytes, which keeps tests fast.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open(path: str | os.PathLike):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def read_idx(path: str | os.PathLike, limit: int | None = None) -> np.ndarray:
    """The array in an IDX file; only its first ``limit`` entries along axis 0 when given."""
    with _open(path) as f:
        header = f.read(4)
        if len(header) != 4 or header[0] != 0 or header[1] != 0 or header[2] not in _DTYPES:
            raise ValueError(f"{path} is not an IDX file (header {header!r}).")
        dtype, ndim = _DTYPES[header[2]], header[3]
        shape = [int(d) for d in np.frombuffer(f.read(4 * ndim), dtype=">u4")]
        if limit is not None:
            shape[0] = min(shape[0], limit)
        count = int(np.prod(shape))
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: expected {count} entries of shape {shape}.")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
