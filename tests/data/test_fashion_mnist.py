"""Fashion-MNIST from Debian's IDX files: the reader (fast) and the whole dataset (slow)."""

import collections
import gzip
import os

import numpy as np
import pytest

from bbg_jax.data import config, fashion_mnist, idx, pipeline, tfds_source

needs_debian_files = pytest.mark.skipif(
    not fashion_mnist.local_files_exist(fashion_mnist.DEBIAN_DIR),
    reason="apt-get install dataset-fashion-mnist")


def test_idx_round_trip(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + np.array(data.shape, ">u4").tobytes()
    path = os.path.join(tmp_path, "x-idx3-ubyte.gz")
    with gzip.open(path, "wb") as f:
        f.write(header + data.tobytes())
    np.testing.assert_array_equal(idx.read_idx(path), data)
    np.testing.assert_array_equal(idx.read_idx(path, limit=1), data[:1])


@needs_debian_files
def test_reads_a_slice_of_the_debian_files():
    images, labels = fashion_mnist.read_split(fashion_mnist.DEBIAN_DIR, "test", limit=100)
    assert images.shape == (100, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (100,) and set(labels.tolist()) <= set(range(10))
    assert images.max() == 255 and images.std() > 20


def test_features_match_tfds_fashion_mnist(tmp_path):
    import tensorflow_datasets as tfds

    ours = fashion_mnist.LocalFashionMnist(data_dir=str(tmp_path)).info
    theirs = tfds.builder("fashion_mnist", data_dir=str(tmp_path)).info
    assert repr(ours.features) == repr(theirs.features)
    assert ours.features["label"].names == theirs.features["label"].names
    assert (ours.name, str(ours.version)) == (theirs.name, str(theirs.version))


@pytest.mark.slow
@needs_debian_files
def test_prepared_from_debian_files_whole(tmp_path):
    """~45 s: writes 70k PNG-encoded examples, then reads them back through the pipeline."""
    c = config.data_config("fashion_mnist", resolution=32)
    c.data_dir = str(tmp_path)
    builder = tfds_source.prepared_builder(c)  # prepares from the Debian files
    assert builder.__class__.__name__ == "FashionMNIST"  # TFDS's own reader from now on
    for split, n in (("train", 60_000), ("test", 10_000)):
        ds = pipeline.eval_dataset(c, split, batch_size=1000, process_index=0, process_count=1,
                                   builder=builder)
        labels = np.concatenate([b["label"] for b in ds.as_numpy_iterator()])
        assert collections.Counter(labels.tolist()) == {k: n // 10 for k in range(10)}
    (batch,) = pipeline.train_dataset(c, builder=builder, process_index=0,
                                      process_count=1).take(1).as_numpy_iterator()
    assert batch["image_e"].shape == (256, 32, 32, 3)
    assert np.all(batch["image_e"][:, :2] == -1.0)  # padded 28 -> 32 with black
