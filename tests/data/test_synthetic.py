"""The numpy-only source: format, no TensorFlow, restartable; and global batch assembly."""

import subprocess
import sys

import jax
import numpy as np
from jax.sharding import Mesh

from bbg_jax.data import config, synthetic
from bbg_jax.sharding import global_batch_from_local


def test_synthetic_does_not_import_tensorflow():
    code = ("import sys, bbg_jax.data.synthetic, bbg_jax.data.config, bbg_jax.data.global_batch;"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_synthetic_format_and_resume():
    c = config.data_config("imagenet2012", resolution=32, encoder_resolution=64, batch_size=8)
    full = synthetic.synthetic_batches(c, distinct_batches=3)
    batches = [next(full) for _ in range(5)]
    b = batches[0]
    assert b["image_e"].shape == (8, 64, 64, 3) and b["image_e"].dtype == np.float32
    assert b["image_d"].shape == (8, 32, 32, 3) and b["label"].dtype == np.int32
    assert -1 <= b["image_e"].min() and b["image_e"].max() <= 1
    pooled = b["image_e"].reshape(8, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(b["image_d"], pooled, atol=1e-6)
    resumed = next(synthetic.synthetic_batches(c, start_step=4, distinct_batches=3))
    np.testing.assert_array_equal(resumed["image_e"], batches[4]["image_e"])


def test_global_batch_on_mesh():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    c = config.data_config("fashion_mnist", batch_size=4 * len(jax.devices()))
    local = next(synthetic.synthetic_batches(c, distinct_batches=1))
    arrays = global_batch_from_local(dict(local), mesh)
    assert arrays["image_e"].shape == local["image_e"].shape  # one process: global == local
    assert arrays["image_e"].sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(arrays["label"]), local["label"])


def test_process_parts_tile_the_one_process_batch():
    c = config.data_config("fashion_mnist", batch_size=8)
    whole = next(synthetic.synthetic_batches(c, distinct_batches=2))
    parts = [next(synthetic.synthetic_batches(c, process_index=p, process_count=2,
                                              distinct_batches=2)) for p in (0, 1)]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
