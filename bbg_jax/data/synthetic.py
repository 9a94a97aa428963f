"""Batches of the pipeline's format from numpy alone, for benchmarks and accelerator runs.

No TensorFlow, no files: the batch for step s is a pure function of (seed, s mod
``distinct_batches``), so a run restarted at step s sees what an uninterrupted one would.
A small pool of distinct batches is generated once and cycled so that host-side generation
never limits an accelerator benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from bbg_jax.data.global_batch import per_process_batch_size

if TYPE_CHECKING:  # annotations only: the step runs without ml_collections
    import ml_collections


def pool_views(image_e: np.ndarray, resolution_d: int) -> np.ndarray:
    """image_d from image_e (b, r, r, c) by k x k average pooling, k = r / resolution_d."""
    b, r, _, c = image_e.shape
    if r % resolution_d:
        raise ValueError(f"Synthetic data needs resolution_e ({r}) to be a multiple of "
                         f"resolution_d ({resolution_d}).")
    k = r // resolution_d
    return image_e.reshape(b, resolution_d, k, resolution_d, k, c).mean(axis=(2, 4))


def synthetic_batch(batch_size: int, resolution_e: int, resolution_d: int, channels: int,
                    seed: int | tuple[int, ...], num_classes: int = 1000) -> dict[str, np.ndarray]:
    """One batch: smooth random images (upsampled 8x8 noise) in [-1, 1], random labels."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (batch_size, 8, 8, channels)).astype(np.float32)
    k = -(-resolution_e // 8)
    image_e = coarse.repeat(k, axis=1).repeat(k, axis=2)[:, :resolution_e, :resolution_e]
    image_e = np.ascontiguousarray(image_e)
    return {
        "image_e": image_e,
        "image_d": pool_views(image_e, resolution_d).astype(np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
    }


def synthetic_batches(c: ml_collections.ConfigDict, *, start_step: int = 0,
                      process_index: int = 0, process_count: int = 1,
                      distinct_batches: int = 4, num_classes: int = 1000
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Endless per-process batches in the format of ``pipeline.train_dataset``.

    Process p gets rows [p*b, (p+1)*b) of one global batch (the rows its devices hold), so any
    number of processes trains on exactly what one process would.
    """
    batch = per_process_batch_size(c.batch_size, process_count)
    rows = slice(process_index * batch, (process_index + 1) * batch)
    pool = [{k: v[rows] for k, v in synthetic_batch(
                c.batch_size, c.resolution_e, c.resolution_d, c.channels, seed=(c.seed, 0, i),
                num_classes=num_classes).items()}
            for i in range(distinct_batches)]
    step = start_step
    while True:
        yield pool[step % distinct_batches]
        step += 1
