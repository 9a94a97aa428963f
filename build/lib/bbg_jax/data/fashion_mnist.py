"""A TFDS builder that prepares ``fashion_mnist`` from Debian's ``dataset-fashion-mnist`` files.

It writes the same dataset TFDS's own ``fashion_mnist`` would (name, version 3.0.1, features
``image`` (28, 28, 1) uint8 and ``label`` ClassLabel(10), splits train 60k / test 10k) as tfrecord
files into a data_dir; afterwards ``tfds.builder("fashion_mnist", data_dir=...)`` reads it like
any prepared dataset, so nothing downstream knows where it came from. It is not registered with
TFDS (``skip_registration``) to leave TFDS's own builder in charge of the name.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from bbg_jax.data.idx import read_idx

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
LABEL_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# File prefix of each split, as published by Zalando Research and packaged by Debian.
_SPLIT_FILES = {"train": "train", "test": "t10k"}


def idx_paths(source_dir: str, split: str) -> tuple[str, str]:
    """(images, labels) IDX paths of ``split`` in ``source_dir``; gzip or not, whichever exists."""
    prefix = _SPLIT_FILES[split]
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        base = os.path.join(source_dir, f"{prefix}-{kind}")
        paths.append(base + ".gz" if os.path.exists(base + ".gz") else base)
    return paths[0], paths[1]


def local_files_exist(source_dir: str) -> bool:
    return all(os.path.exists(p) for split in _SPLIT_FILES for p in idx_paths(source_dir, split))


def read_split(source_dir: str, split: str, limit: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28, 1) uint8, labels (N,) int64) of one split from the IDX files."""
    image_path, label_path = idx_paths(source_dir, split)
    images = read_idx(image_path, limit)
    labels = read_idx(label_path, limit)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"Unexpected Fashion-MNIST files in {source_dir}: images "
                         f"{images.shape}, labels {labels.shape}.")
    return images[..., None], labels.astype(np.int64)


class LocalFashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """``fashion_mnist`` 3.0.1 built from local IDX files instead of a download."""

    name = "fashion_mnist"
    VERSION = tfds.core.Version("3.0.1")
    # Nothing is downloaded, so no checksums file to look up; TFDS would otherwise locate one
    # next to this module through importlib_resources, which not every environment has.
    url_infos = None

    def __init__(self, *, source_dir: str = DEBIAN_DIR, **kwargs):
        self._source_dir = source_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Fashion-MNIST, prepared from local IDX files (Debian "
                        "dataset-fashion-mnist).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(names=LABEL_NAMES),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split) for split in _SPLIT_FILES}

    def _generate_examples(self, split: str):
        images, labels = read_split(self._source_dir, split)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}


def prepare(data_dir: str | None, source_dir: str = DEBIAN_DIR) -> None:
    """Writes ``fashion_mnist`` into ``data_dir`` (tfrecord, readable by ``tfds.load``)."""
    builder = LocalFashionMnist(source_dir=source_dir, data_dir=data_dir)
    builder.download_and_prepare(
        file_format="tfrecord",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
