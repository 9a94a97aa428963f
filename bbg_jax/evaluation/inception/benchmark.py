"""Time FID Inception feature extraction: ``python -m bbg_jax.evaluation.inception.benchmark``.

Prints images/s (compile excluded) on the default JAX backend, for sizing FID sample counts.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from bbg_jax.evaluation.inception import InceptionFeatures


def benchmark(batch_size: int, resolution: int, num_images: int, weights: str | None) -> float:
    features = InceptionFeatures(weights)
    images = jax.device_put(np.random.default_rng(0).uniform(
        -1, 1, (batch_size, resolution, resolution, 3)).astype(np.float32))
    features(images).block_until_ready()  # compile
    batches = max(1, num_images // batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        out = features(images)
    out.block_until_ready()
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    rate = benchmark(args.batch_size, args.resolution, args.num_images, args.weights)
    print(f"{jax.devices()[0].device_kind}: {rate:.1f} images/s "
          f"(batch {args.batch_size}, {args.resolution}px -> 299)")


if __name__ == "__main__":
    main()
