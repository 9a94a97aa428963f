"""Finding a prepared TFDS dataset and cutting it into the splits the project reads.

Splits are TFDS split strings, so every cut is a contiguous, reproducible range of examples:
  training   ``{train_split}[{train_val_size}:]``
  train_val  ``{train_split}[:{train_val_size}]``  (the paper's held-out 10k for model selection)
and each process reads its own equal, disjoint part of whichever split via ``tfds.even_splits``.
"""

from __future__ import annotations

import contextlib
import re
import time

import ml_collections
import tensorflow_datasets as tfds
from etils import epath

from bbg_jax import console
from bbg_jax.data import fashion_mnist


class DatasetNotPreparedError(RuntimeError):
    """The dataset is not in the data_dir and cannot be prepared here."""


def _how_to_prepare(name: str, data_dir: str) -> str:
    if name.startswith("imagenet2012"):
        manual = f"{str(data_dir).rstrip('/')}/downloads/manual"
        return (f"ImageNet cannot be downloaded by TFDS: get ILSVRC2012_img_train.tar and "
                f"ILSVRC2012_img_val.tar from image-net.org, put them in TFDS's manual download "
                f"directory {manual}/ (default ~/tensorflow_datasets/downloads/manual/), then run "
                f"`tfds build {name} --data_dir={data_dir}` (or pass --manual_dir=<dir with the "
                f"tars>).")
    if name == "fashion_mnist":
        return ("install Debian's Fashion-MNIST files (`apt-get install dataset-fashion-mnist`, "
                "or point data.local_fashion_mnist_dir at the IDX files), or set "
                "data.download=True where the internet is reachable.")
    return (f"run `tfds build {name} --data_dir={data_dir}` on a machine with internet access, "
            f"or set data.download=True.")


@contextlib.contextmanager
def _preparing(what: str, data_dir: str):
    """One terminal line for the preparation; TFDS' banner and progress bars go to the log."""
    console.say(f"data: preparing {what} in {data_dir} (once) ...", end="")
    start = time.monotonic()
    if not console.verbose():
        tfds.disable_progress_bar()
    with console.into_log("tfds"):
        yield
    console.say(f" done ({time.monotonic() - start:.0f} s)")


def prepared_builder(c: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The TFDS builder of ``c.dataset`` in ``c.data_dir``, prepared if it can be done here.

    Fashion-MNIST is prepared from the local Debian IDX files when present (no internet needed);
    any dataset is downloaded and prepared when ``c.download``; otherwise the error says how to
    prepare it.
    """
    builder = tfds.builder(c.dataset, data_dir=c.data_dir)
    if builder.is_prepared():
        return builder
    # <data_dir>/<name>/<version>; epath keeps gs:// intact (TFDS reads it through tf.io.gfile).
    data_dir = str(epath.Path(builder.data_dir).parent.parent)
    if (c.dataset == "fashion_mnist"
            and fashion_mnist.local_files_exist(c.local_fashion_mnist_dir)):
        with _preparing(f"{c.dataset} from {c.local_fashion_mnist_dir}", data_dir):
            fashion_mnist.prepare(data_dir, source_dir=c.local_fashion_mnist_dir)
        return tfds.builder(c.dataset, data_dir=data_dir)
    if c.download:
        with _preparing(f"{c.dataset} (download)", data_dir):
            builder.download_and_prepare(file_format="tfrecord")
        return builder
    raise DatasetNotPreparedError(
        f"Dataset {c.dataset!r} is not prepared in {data_dir} (looked for {builder.data_dir}). "
        f"To prepare it: {_how_to_prepare(c.dataset, data_dir)}")


def training_split(c: ml_collections.ConfigDict) -> str:
    """The examples trained on: ``train_split`` minus the train_val hold-out."""
    return f"{c.train_split}[{c.train_val_size}:]" if c.train_val_size else c.train_split


def train_val_split(c: ml_collections.ConfigDict) -> str:
    """The paper's "train_val": the first ``train_val_size`` examples of ``train_split``."""
    if not c.train_val_size:
        raise ValueError("data.train_val_size is 0: there is no train_val hold-out.")
    return f"{c.train_split}[:{c.train_val_size}]"


def first_examples(split: str, n: int) -> str:
    """The first ``n`` examples of ``split`` as one TFDS split string ("train[10000:]", 5 ->
    "train[10000:10005]"), so that processes can each read their part of them."""
    m = re.fullmatch(r"([\w-]+)(?:\[(\d*):(\d*)\])?", split)
    if m is None:
        raise ValueError(f"Split {split!r}: a limit on its examples needs a name or a name "
                         f"with an example slice such as 'train[10000:]' (no percentages).")
    start = int(m[2] or 0)
    end = start + n if not m[3] else min(start + n, int(m[3]))
    return f"{m[1]}[{start}:{end}]"


def process_split(split: str, process_index: int, process_count: int,
                  drop_remainder: bool = True):
    """This process's part of ``split``: equal-sized, disjoint parts that together cover it.

    ``drop_remainder`` drops at most ``process_count - 1`` examples so that all processes step
    through epochs in lock-step (training); evaluation keeps them (parts differ by at most one).
    """
    return tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]
