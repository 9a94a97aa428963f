"""Split strings and the error for a dataset that is not prepared (real TFDS, no mock)."""

import pytest

from bbg_jax.data import config, tfds_source


def test_splits_strings():
    c = config.data_config("imagenet2012")
    assert tfds_source.training_split(c) == "train[10000:]"
    assert tfds_source.train_val_split(c) == "train[:10000]"
    c.train_val_size = 0
    assert tfds_source.training_split(c) == "train"


def test_unprepared_imagenet_says_how_to_prepare(tmp_path):
    c = config.data_config("imagenet2012")
    c.data_dir = str(tmp_path)
    with pytest.raises(tfds_source.DatasetNotPreparedError, match="imagenet2012") as err:
        tfds_source.prepared_builder(c)
    assert "downloads/manual" in str(err.value) and "--manual_dir" in str(err.value)


def test_unprepared_fashion_mnist_without_local_files(tmp_path):
    c = config.data_config("fashion_mnist")
    c.data_dir = str(tmp_path)
    c.local_fashion_mnist_dir = str(tmp_path / "nowhere")
    with pytest.raises(tfds_source.DatasetNotPreparedError, match="dataset-fashion-mnist"):
        tfds_source.prepared_builder(c)
