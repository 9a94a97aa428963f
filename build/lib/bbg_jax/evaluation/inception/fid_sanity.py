"""FID sanity check on Fashion-MNIST.

``python -m bbg_jax.evaluation.inception.fid_sanity --n 500`` prints
FID(test[:n], test[5000:5000+n]) -- two disjoint halves of the real test set -- and
FID(test[:n], n smooth-noise images), an unrelated image set. The first must be far below the
second. Reads the IDX files directly (numpy only, no TensorFlow).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from bbg_jax.data.idx import read_idx
from bbg_jax.data.synthetic import synthetic_batch
from bbg_jax.evaluation.inception import FEATURE_DIM, InceptionFeatures
from bbg_jax.evaluation.metrics import FeatureStats, frechet_distance


def _stats(features: InceptionFeatures, images: np.ndarray, batch_size: int):
    stats = FeatureStats(FEATURE_DIM)
    for i in range(0, len(images), batch_size):
        stats.update(np.asarray(features(images[i:i + batch_size])))
    return stats.mean_cov()


def _define_flags() -> None:
    """Command-line flags, defined only when run as a program: ``benchmark`` defines flags of
    the same names, and a second absl definition in one process would collide."""
    global _N, _BATCH_SIZE, _FMNIST_DIR, _WEIGHTS
    _N = flags.DEFINE_integer("n", 500, "Images per set.")
    _BATCH_SIZE = flags.DEFINE_integer("batch_size", 50, "Images per Inception call.")
    _FMNIST_DIR = flags.DEFINE_string("fmnist_dir", "/usr/share/datasets/fashion-mnist",
                                      "Directory with t10k-images-idx3-ubyte.gz.")
    _WEIGHTS = flags.DEFINE_string("weights", None,
                                   "TorchScript weights (default: the packaged default_1.pt).")


def main(argv) -> None:
    del argv
    n, batch_size = _N.value, _BATCH_SIZE.value
    raw = read_idx(os.path.join(_FMNIST_DIR.value, "t10k-images-idx3-ubyte.gz"))
    real = raw.astype(np.float32)[..., None] / 127.5 - 1.0  # [10000, 28, 28, 1] in [-1, 1]
    noise = synthetic_batch(n, 28, 28, 1, seed=0)["image_e"]
    features = InceptionFeatures(_WEIGHTS.value)
    start = time.perf_counter()
    a = _stats(features, real[:n], batch_size)
    b = _stats(features, real[5000:5000 + n], batch_size)
    c = _stats(features, noise, batch_size)
    elapsed = time.perf_counter() - start
    print(f"N={n} per set ({3 * n / elapsed:.1f} images/s)")
    print(f"FID(fmnist test half A, half B)       = {frechet_distance(*a, *b):.2f}")
    print(f"FID(fmnist test half A, smooth noise) = {frechet_distance(*a, *c):.2f}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
