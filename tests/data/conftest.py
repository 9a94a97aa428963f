"""A mocked ImageNet for pipeline tests: ``tfds.testing.mock_data`` with split-aware examples.

TFDS's mock returns the same examples for every split, which cannot show that splits are
disjoint, so ``as_dataset_fn`` here honours the split: example i of ``train`` (600) or
``validation`` (100) is a random JPEG of a random size with label i, a unique id (< 1000 classes).
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

NUM_EXAMPLES = {"train": 600, "validation": 100}


def _jpeg(split: str, i: int) -> bytes:
    rng = np.random.default_rng([len(split), i])
    h, w = rng.integers(40, 90, 2)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(image, quality=95).numpy()


def _write_metadata(data_dir: str) -> None:
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name="imagenet2012", split="train",
        filetype_suffix="tfrecord")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0,
                            filename_template=template.replace(split=name))
        for name, n in NUM_EXAMPLES.items()]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


@pytest.fixture(scope="module")  # the mock patches TFDS until the module's tests are done
def mock_imagenet(tmp_path_factory):
    """Inside this fixture, ``tfds.builder("imagenet2012")`` is the mocked, prepared dataset."""
    data_dir = str(tmp_path_factory.mktemp("mock_tfds"))
    _write_metadata(data_dir)
    encoded = {s: [_jpeg(s, i) for i in range(n)] for s, n in NUM_EXAMPLES.items()}

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        del read_config, shuffle_files
        split_info = self.info.splits[split]
        pairs = [(os.path.basename(fi.filename).split("-")[1].split(".")[0], i)  # (split, index)
                 for fi in split_info.file_instructions
                 for i in range(fi.skip, fi.skip + fi.take)]
        ds = tf.data.Dataset.from_tensor_slices({
            "image": [encoded[s][i] for s, i in pairs],
            "label": np.array([i for _, i in pairs], np.int64),
            "file_name": [f"{s}_{i}.JPEG" for s, i in pairs],
        })
        return ds.map(lambda ex: self.info.features.decode_example(ex, decoders=decoders))

    with tfds.testing.mock_data(data_dir=data_dir, as_dataset_fn=as_dataset,
                                policy=tfds.testing.MockPolicy.USE_FILES):
        yield tfds.builder("imagenet2012", data_dir=data_dir)
