"""The train step's batches: ``n_d_steps`` data batches stacked, as global arrays on a mesh.

Kept apart from ``bbg_jax.loop`` (which re-exports both functions) so that the benchmark and
the device check reach the step's input without the loop's checkpointing, summaries and
evaluation imports; TensorFlow is imported only for a real (non-synthetic) dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax
import numpy as np

from bbg_jax import sharding

if TYPE_CHECKING:
    import ml_collections


def order_depends_on_process_count(config: ml_collections.ConfigDict) -> bool:
    """Whether the batches of a data position change with ``jax.process_count()``.

    A TFDS dataset: yes. Each process reads its own part of the split (``tfds.even_splits``) and
    shuffles it with a seed of its own, so the same data batch index means other examples with
    another number of processes. Synthetic data: no; every process takes its rows of one global
    batch, so the global order is the same for any number of processes.
    """
    return config.data.dataset != "synthetic"


def local_batches(config: ml_collections.ConfigDict, start_batch: int
                  ) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches from data batch ``start_batch`` on (synthetic or TFDS)."""
    d = config.data
    if d.dataset == "synthetic":
        from bbg_jax.data.synthetic import synthetic_batches

        yield from synthetic_batches(d, start_step=start_batch,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(),
                                     num_classes=config.model.generator.num_classes)
        return
    # TensorFlow is imported here only, for a real dataset.
    import tensorflow_datasets as tfds

    from bbg_jax.data.pipeline import train_dataset

    yield from tfds.as_numpy(train_dataset(d, start_step=start_batch))


def step_batches(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, start_step: int
                 ) -> Iterator[dict[str, jax.Array]]:
    """Global batches for train steps from ``start_step``: n_d_steps data batches stacked.

    The data position is a pure function of the step (data batch = step x n_d_steps), so a
    resumed run reads exactly what the uninterrupted run would have.
    """
    n_d = config.train.n_d_steps
    source = local_batches(config, start_step * n_d)
    keys = ("image_d", "image_e", "label")
    while True:
        parts = [next(source) for _ in range(n_d)]
        stacked = {k: np.stack([p[k] for p in parts]) for k in keys if k in parts[0]}
        yield sharding.global_batch_from_local(stacked, mesh, batch_axis=1)
