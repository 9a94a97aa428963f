"""Time FID Inception feature extraction: ``python -m bbg_jax.evaluation.inception.benchmark``.

Prints images/s (compile excluded) on the default JAX backend, for sizing FID sample counts.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from bbg_jax.evaluation.inception import InceptionFeatures


def benchmark(batch_size: int, resolution: int, num_images: int, weights: str | None) -> float:
    features = InceptionFeatures(weights)
    images = jax.device_put(np.random.default_rng(0).uniform(
        -1, 1, (batch_size, resolution, resolution, 3)).astype(np.float32))
    features(images)  # compile; features are returned as numpy, so every call waits for them
    batches = max(1, num_images // batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        features(images)
    return batches * batch_size / (time.perf_counter() - start)


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program: ``benchmark()`` is importable,
    and ``fid_sanity`` defines flags of the same names that would collide in one process."""
    global _BATCH_SIZE, _RESOLUTION, _NUM_IMAGES, _WEIGHTS
    _BATCH_SIZE = flags.DEFINE_integer("batch_size", 50, "Images per Inception call.")
    _RESOLUTION = flags.DEFINE_integer("resolution", 128, "Input side in pixels (resized to 299).")
    _NUM_IMAGES = flags.DEFINE_integer("num_images", 200, "Images timed (whole batches, >= 1).")
    _WEIGHTS = flags.DEFINE_string("weights", None,
                                   "TorchScript weights (default: the packaged default_1.pt).")


def main(argv) -> None:
    del argv
    rate = benchmark(_BATCH_SIZE.value, _RESOLUTION.value, _NUM_IMAGES.value, _WEIGHTS.value)
    print(f"{jax.devices()[0].device_kind}: {rate:.1f} images/s "
          f"(batch {_BATCH_SIZE.value}, {_RESOLUTION.value}px -> 299)")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
