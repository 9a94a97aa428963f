"""A resume with another number of processes: the data position names its process count.

A TFDS stream is per process (each reads its own part of the split, shuffled with its own
seed), so ``data_batch`` alone means other examples with another process count. Each
checkpoint's data item records ``process_count``; a resume with another count stops in one line
naming both counts, unless ``train.allow_data_reshard``. Synthetic data keeps its global order
for any process count and resumes.

The end-to-end test: two processes of one CPU device each (``jax.distributed`` on loopback, the
documented JAX_* variables, started by tests/test_multiprocess.py's helpers) train the smoke
config on a tiny Fashion-MNIST (TFDS files prepared here from 64 IDX images) for 1 step; one
process then resumes: refused in one line, before compiling. The allowed path is checked
without a further compile (``test_the_check_without_a_second_process``).
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_multiprocess import SMOKE, _finish, _jax_env, _start, free_port

from bbg_jax import loop
from bbg_jax.configs import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def _write_idx(path: Path, data: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, data.ndim]) + np.array(data.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + data.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_fashion_mnist(tmp_path_factory):
    """IDX files of 64 train and 16 test images, and the TFDS data_dir prepared from them."""
    from bbg_jax.data import fashion_mnist

    source, data_dir = tmp_path_factory.mktemp("idx"), tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        _write_idx(source / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    fashion_mnist.prepare(str(data_dir), source_dir=str(source))
    return ["--config.data.dataset=fashion_mnist", f"--config.data.data_dir={data_dir}",
            f"--config.data.local_fashion_mnist_dir={source}", "--config.data.train_val_size=16",
            "--config.data.augmentation=pad", "--config.data.shuffle_buffer=64"]


def _position(workdir: Path, step: int) -> dict:
    return json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())


def test_two_processes_then_one(tmp_path, tiny_fashion_mnist, compilation_cache):
    data = [*tiny_fashion_mnist, "--config.train.checkpoint_every=1"]
    began = time.monotonic()
    port = free_port()
    _finish([_start(tmp_path, 1, _jax_env(port, pid), compilation_cache, *data,
                    "--config.train.num_steps=1") for pid in (0, 1)], timeout=600)
    two = time.monotonic() - began
    assert _position(tmp_path, 1) == {"data_batch": 2, "process_count": 2}

    # One process: refused before compiling.
    began = time.monotonic()
    refused = _start(tmp_path, 1, {}, compilation_cache, *data, "--config.train.num_steps=2")
    out, _ = refused.communicate(timeout=300)
    refusal = time.monotonic() - began
    assert refused.returncode == 1, out[-6000:]
    lines = [line for line in out.splitlines() if line.startswith("bbg_jax.main: ")]
    assert "Traceback" not in out
    checkpoints = tmp_path / "checkpoints"
    assert lines[-1] == (
        f"bbg_jax.main: The checkpoint at step 1 in {checkpoints} was written by 2 processes "
        "and this run has 1: each process reads its own part of data.dataset='fashion_mnist', "
        "so data batch 2 would be other examples with 1. Resume with 2 processes, or set "
        "--config.train.allow_data_reshard=True to continue with the data order of 1 process "
        "from that position."), lines
    assert not any(line.startswith("step ") for line in out.splitlines())
    assert sorted(p.name for p in checkpoints.iterdir()) == ["1"]

    # The allowed path (train.allow_data_reshard) is the same decision with another answer:
    # test_the_check_without_a_second_process runs it without a third compile here.
    print(f"2 processes x 1 step: {two:.0f} s; refusal: {refusal:.0f} s")


def _config(dataset: str = "synthetic", allow: bool = False):
    config = load_experiment(SMOKE)
    config.data.dataset = dataset
    with config.unlocked():
        config.train.allow_data_reshard = allow
    return config


def test_the_check_without_a_second_process():
    """The decision itself, for every case (this process is one process)."""
    assert jax.process_count() == 1
    tfds = _config("fashion_mnist")
    assert loop.check_data_processes(tfds, {"data_batch": 4, "process_count": 1}, 2, "d") is None
    # A checkpoint from before the count was recorded: resumes (and says so in the log).
    assert loop.check_data_processes(tfds, {"data_batch": 4}, 2, "d") is None
    with pytest.raises(loop.DataReshardError, match=r"written by 4 processes and this run has "
                       r"1: .* data batch 4 would be other examples with 1\. Resume with 4 "
                       r"processes"):
        loop.check_data_processes(tfds, {"data_batch": 4, "process_count": 4}, 2, "d")
    note = loop.check_data_processes(_config("fashion_mnist", allow=True),
                                     {"data_batch": 4, "process_count": 4}, 2, "d")
    assert note == "data resharded from 4 to 1 process at data batch 4 (train.allow_data_reshard)"
    # Synthetic data: the same global batches for any process count, so no refusal.
    note = loop.check_data_processes(_config(), {"data_batch": 4, "process_count": 2}, 2, "d")
    assert note == ("checkpoint written by 2 processes, resumed by 1: "
                    "data.dataset='synthetic' keeps its global order")
    assert loop.data_position(3, tfds) == {"data_batch": 6, "process_count": 1}


def test_synthetic_global_order_is_the_same_for_any_process_count():
    from bbg_jax.data.synthetic import synthetic_batches

    c = _config().data
    one = synthetic_batches(c, start_step=5, process_index=0, process_count=1)
    parts = [synthetic_batches(c, start_step=5, process_index=i, process_count=2)
             for i in (0, 1)]
    for _ in range(3):
        whole, halves = next(one), [next(p) for p in parts]
        for k in whole:
            np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))
