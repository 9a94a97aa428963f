"""FID sanity check on Fashion-MNIST.

``python -m bbg_jax.evaluation.inception.fid_sanity --n 500`` prints
FID(test[:n], test[5000:5000+n]) -- two disjoint halves of the real test set -- and
FID(test[:n], n smooth-noise images), an unrelated image set. The first must be far below the
second. Reads the IDX files directly (numpy only, no TensorFlow).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bbg_jax.data.idx import read_idx
from bbg_jax.data.synthetic import synthetic_batch
from bbg_jax.evaluation.inception import FEATURE_DIM, InceptionFeatures
from bbg_jax.evaluation.metrics import FeatureStats, frechet_distance


def _stats(features: InceptionFeatures, images: np.ndarray, batch_size: int):
    stats = FeatureStats(FEATURE_DIM)
    for i in range(0, len(images), batch_size):
        stats.update(np.asarray(features(images[i:i + batch_size])))
    return stats.mean_cov()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--fmnist_dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    raw = read_idx(os.path.join(args.fmnist_dir, "t10k-images-idx3-ubyte.gz"))
    real = raw.astype(np.float32)[..., None] / 127.5 - 1.0  # [10000, 28, 28, 1] in [-1, 1]
    noise = synthetic_batch(args.n, 28, 28, 1, seed=0)["image_e"]
    features = InceptionFeatures(args.weights)
    start = time.perf_counter()
    a = _stats(features, real[:args.n], args.batch_size)
    b = _stats(features, real[5000:5000 + args.n], args.batch_size)
    c = _stats(features, noise, args.batch_size)
    elapsed = time.perf_counter() - start
    print(f"N={args.n} per set ({3 * args.n / elapsed:.1f} images/s)")
    print(f"FID(fmnist test half A, half B)       = {frechet_distance(*a, *b):.2f}")
    print(f"FID(fmnist test half A, smooth noise) = {frechet_distance(*a, *c):.2f}")


if __name__ == "__main__":
    main()
