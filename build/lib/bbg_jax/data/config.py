"""The ``data`` config section: which dataset, how it is split, augmented and batched.

Hook it into an experiment with ``config.data = data_config("imagenet2012", resolution=128)``.
No TensorFlow here, so experiment files stay importable without it.
"""

from __future__ import annotations

import ml_collections

from bbg_jax.configs import MISSING, check_bool, check_choice, check_int, check_str

# Preset per known dataset: (eval split, training augmentation).
_PRESETS = {
    "imagenet2012": ("validation", "resnet_crop"),
    "fashion_mnist": ("test", "pad"),
    "mnist": ("test", "pad"),
    "cifar10": ("test", "resnet_crop"),
}

AUGMENTATIONS = ("resnet_crop", "light_crop", "centre_crop", "pad")
# The datasets the pipeline and its presets are written for; "synthetic" needs no files
# (bbg_jax.data.synthetic). Another TFDS image dataset needs its entry in _PRESETS first.
DATASETS = ("synthetic", *_PRESETS)


def data_config(dataset: str = "fashion_mnist", resolution: int = 32,
                encoder_resolution: int | None = None, batch_size: int = 256
                ) -> ml_collections.ConfigDict:
    """The data section for ``dataset`` at D/G ``resolution`` (E at ``encoder_resolution``).

    Fields:
      dataset: one of ``DATASETS``: a TFDS name (``imagenet2012``, ``cifar10``,
        ``fashion_mnist``, ``mnist``) or ``synthetic`` (numpy batches, no files).
      data_dir: TFDS data directory; None means TFDS's default (``~/tensorflow_datasets``).
      download: allow ``download_and_prepare`` (internet) when the dataset is not prepared.
        Fashion-MNIST is prepared from ``local_fashion_mnist_dir`` first when those files exist.
      local_fashion_mnist_dir: where Debian's ``dataset-fashion-mnist`` puts the IDX files.
      train_split: the TFDS split the training data and train_val are both cut from.
      train_val_size: the first N examples of ``train_split``, held out for model selection
        (the paper's "train_val", 10k for ImageNet). Training reads ``train_split[N:]``.
        0 disables the hold-out.
      eval_split: the held-out split of the dataset (ImageNet's ``validation``).
      augmentation: one of ``AUGMENTATIONS`` for training:
        ``resnet_crop``  random area 0.08-1, aspect 3/4-4/3 (the paper's);
        ``light_crop``   square, 0.5-1 of the largest square's area (generation-focused runs);
        ``centre_crop``  the square centre crop of side 0.875 x the short side (evaluation);
        ``pad``          no crop; pad with black to the encoder resolution (28x28 -> 32x32).
        Evaluation always uses ``centre_crop`` (``pad`` for ``pad`` datasets).
      random_flip: horizontal flip with probability 1/2 in training.
      resolution_e: the encoder's input resolution (``image_e``).
      resolution_d: the generator/discriminator resolution (``image_d``); a 2x2 average pool of
        ``image_e`` when ``resolution_e == 2 * resolution_d``, otherwise resized from the crop.
      channels: output channels, 1 or 3 (grayscale is repeated; RGB converted to luma for 1).
      resize_antialias: antialias the bilinear resize (better for GANs, ~costlier on a CPU).
      batch_size: the GLOBAL batch; each process reads batch_size / process_count.
      shuffle_buffer: examples in the shuffle buffer (per process).
      seed: order and augmentation are functions of (seed, epoch, example index) only.
      prefetch: batches prefetched by tf.data.
      num_parallel_calls: parallel decode/augment calls; -1 = AUTOTUNE.
    """
    eval_split, augmentation = _PRESETS.get(dataset, ("test", "resnet_crop"))
    c = ml_collections.ConfigDict()
    c.dataset = dataset
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.download = False
    c.local_fashion_mnist_dir = "/usr/share/datasets/fashion-mnist"
    c.train_split = "train"
    c.train_val_size = 10_000
    c.eval_split = eval_split
    c.augmentation = augmentation
    c.random_flip = True
    c.resolution_e = encoder_resolution or resolution
    c.resolution_d = resolution
    c.channels = 3
    c.resize_antialias = False
    c.batch_size = batch_size
    c.shuffle_buffer = 10_000
    c.seed = 0
    c.prefetch = 2
    c.num_parallel_calls = -1
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` (one line: field, value, what is allowed) on a data section the
    pipeline cannot honour. ``bbg_jax.config_checks.check`` runs it with the other sections."""
    g = lambda key: c.get(key, MISSING)  # noqa: E731
    check_choice("data.dataset", g("dataset"), DATASETS)
    check_str("data.data_dir", g("data_dir"), optional=True)
    check_bool("data.download", g("download"))
    check_str("data.local_fashion_mnist_dir", g("local_fashion_mnist_dir"))
    check_str("data.train_split", g("train_split"))
    check_int("data.train_val_size", g("train_val_size"), 0)
    check_str("data.eval_split", g("eval_split"))
    check_choice("data.augmentation", g("augmentation"), AUGMENTATIONS)
    check_bool("data.random_flip", g("random_flip"))
    check_int("data.resolution_e", g("resolution_e"), 1)
    check_int("data.resolution_d", g("resolution_d"), 1)
    check_choice("data.channels", g("channels"), (1, 3))
    check_bool("data.resize_antialias", g("resize_antialias"))
    check_int("data.batch_size", g("batch_size"), 1)
    check_int("data.shuffle_buffer", g("shuffle_buffer"), 1)
    check_int("data.seed", g("seed"))
    check_int("data.prefetch", g("prefetch"), -1, "-1 = AUTOTUNE")
    calls = g("num_parallel_calls")
    if calls != -1:
        check_int("data.num_parallel_calls", calls, 1, "or -1 = AUTOTUNE")
