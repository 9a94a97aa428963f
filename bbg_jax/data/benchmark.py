"""Host throughput of the ImageNet-style two-view pipeline: images/s per CPU core.

    python -m bbg_jax.data.benchmark [--images 512] [--seconds 20]

Synthetic JPEGs of ImageNet's typical size (500x375, smooth content so they compress to about
ImageNet's ~110 kB per image) go through exactly the training per-example function: decode of
the ResNet crop window, flip, bilinear resize to 256 (E) and 2x2 average pool to 128 (G/D),
batching. File reading is left out (records are in memory). Measured once on one thread
(the per-core number) and once on all cores, then turned into the cores needed per accelerator
step: cores = batch / (step_time x per-core rate).
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from bbg_jax.data import augment


def synthetic_jpegs(n: int, height: int = 375, width: int = 500, seed: int = 0) -> list[bytes]:
    """Smooth random photographs-alike: low-frequency colour fields plus mild noise."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        coarse = rng.uniform(0, 255, (1, 12, 16, 3)).astype(np.float32)
        smooth = tf.image.resize(coarse, [height, width], method="bicubic")[0].numpy()
        image = np.clip(smooth + rng.normal(0, 16, smooth.shape), 0, 255).astype(np.uint8)
        images.append(tf.io.encode_jpeg(image, quality=90).numpy())
    return images


def throughput(jpegs: list[bytes], threads: int, seconds: float, batch: int = 64) -> float:
    """Images/s of the two-view pipeline with a private pool of ``threads`` threads."""
    spec = augment.ViewSpec("resnet_crop", resolution_e=256, resolution_d=128, channels=3,
                            random_flip=True, jpeg=True)
    ds = tf.data.Dataset.from_tensor_slices(jpegs).enumerate().repeat()
    ds = ds.map(lambda i, image: augment.preprocess(
        image, tf.constant(0), spec, augment.example_seed(0, 0, 0, i)),
        num_parallel_calls=threads)
    ds = ds.batch(batch).prefetch(2)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    it = iter(ds.with_options(options))
    for _ in range(3):  # warm up
        next(it)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(it)
        count += batch
    return count / (time.perf_counter() - start)


def _define_flags() -> None:
    flags.DEFINE_integer("images", 256, "Distinct synthetic JPEGs.")
    flags.DEFINE_float("seconds", 15.0, "Seconds per measurement.")
    flags.DEFINE_integer("batch", 2048, "Accelerator global batch.")
    flags.DEFINE_float("step_time", 1.0, "Accelerator seconds per step.")


def main(argv) -> None:
    del argv
    args = flags.FLAGS
    cores = os.cpu_count() or 1
    jpegs = synthetic_jpegs(args.images)
    print(f"{len(jpegs)} synthetic JPEGs 500x375, mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f}"
          f" kB; pipeline: ResNet crop + flip -> 256 (E) and 2x2 pool -> 128 (G/D)")
    one = throughput(jpegs, 1, args.seconds)
    print(f"1 thread:  {one:8.1f} images/s  (= per core)")
    everything = throughput(jpegs, cores, args.seconds)
    print(f"{cores} threads: {everything:8.1f} images/s  ({everything / cores:.1f} per core)")
    per_core = min(one, everything / cores)
    needed = args.batch / (args.step_time * per_core)
    print(f"cores to feed batch {args.batch} every {args.step_time:g} s: {needed:.0f} "
          f"(at {per_core:.1f} images/s per core, file reading not included)")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
