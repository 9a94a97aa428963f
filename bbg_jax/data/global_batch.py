"""Per-process batch sizes (no TensorFlow): every process reads its own rows of a global batch.

``bbg_jax.sharding.global_batch_from_local`` makes those rows one global array, the batch
dimension sharded over the mesh's ``data`` axis.
"""

from __future__ import annotations

import jax


def per_process_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
    """The rows each process reads for a global batch; it must divide evenly."""
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"Global batch {global_batch_size} does not divide over "
                         f"{process_count} processes: make the batch a multiple of "
                         f"{process_count}.")
    return global_batch_size // process_count
