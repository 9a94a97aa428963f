"""Per-process batch sizes, and per-process numpy batches to global arrays (no TensorFlow).

Every process feeds its own rows; the global array has the batch dimension sharded over the
mesh's ``data`` axis (``bbg_jax.sharding``), which is what a jitted step over that mesh expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from bbg_jax.sharding import global_batch_from_local


def per_process_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
    """The rows each process reads for a global batch; it must divide evenly."""
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"Global batch {global_batch_size} does not divide over "
                         f"{process_count} processes: make the batch a multiple of "
                         f"{process_count}.")
    return global_batch_size // process_count


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, batch_axis: int = 0
              ) -> dict[str, jax.Array]:
    """This process's rows of a batch -> the global arrays (a collective-free, local copy)."""
    return dict(global_batch_from_local(dict(batch), mesh, batch_axis))


def global_batches(batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, batch_axis: int = 0
                   ) -> Iterator[dict[str, jax.Array]]:
    for batch in batches:
        yield to_global(batch, mesh, batch_axis)
