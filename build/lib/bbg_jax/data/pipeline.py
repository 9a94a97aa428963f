"""The per-process tf.data pipeline: an endless, deterministic stream that restarts at any step.

Determinism and resume. The stream of one process is a pure function of
(config, process_index, process_count):
  * each epoch enumerates this process's split in file order (``shuffle_files=False``), then
    shuffles it with a buffer seeded by (seed, process, epoch), ``reshuffle_each_iteration=False``;
  * each example's crop and flip come from a stateless seed of (seed, process, epoch, index in
    the split), so parallel decoding cannot change them;
  * epochs are concatenated and batched across epoch boundaries, so global step s consumes
    examples [s * b, (s + 1) * b) of this stream (b = per-process batch).
Restarting at ``start_step`` starts at epoch ``s*b // n`` and skips ``s*b mod n`` examples of it.
The skip happens before decoding (images stay encoded bytes), so its cost is reading and
shuffling up to one epoch of records, never decoding them. Nothing needs checkpointing but the
step; the stream changes if process_count or any data field changes.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from bbg_jax.data import augment, config, tfds_source
from bbg_jax.data.global_batch import per_process_batch_size

# The input pipeline runs on the host CPU: keep TensorFlow off any accelerator, whose memory
# belongs to JAX.
tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU")

_MAX_EPOCHS = 2**31  # "forever"; each epoch is built lazily


def view_spec(c: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
              training: bool) -> augment.ViewSpec:
    """The views of ``c`` for this dataset: evaluation uses the centre crop and never flips."""
    image = builder.info.features["image"]
    augmentation = c.augmentation
    if not training and augmentation != "pad":
        augmentation = "centre_crop"
    return augment.ViewSpec(
        augmentation=augmentation, resolution_e=c.resolution_e, resolution_d=c.resolution_d,
        channels=c.channels, random_flip=training and c.random_flip,
        antialias=c.resize_antialias, jpeg=getattr(image, "encoding_format", None) == "jpeg",
        source_channels=image.shape[-1] or 3)


def _read(builder: tfds.core.DatasetBuilder, split) -> tf.data.Dataset:
    """(encoded image, label) pairs of ``split`` in a fixed order, images left undecoded."""
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: (ex["image"], ex["label"]))


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # parallel map and interleave keep their input order
    return options


def train_dataset(c: ml_collections.ConfigDict, *, start_step: int = 0,
                  process_index: int | None = None, process_count: int | None = None,
                  builder: tfds.core.DatasetBuilder | None = None) -> tf.data.Dataset:
    """This process's endless stream of training batches, starting at global step ``start_step``.

    Batches are dicts: ``image_e`` (b, resolution_e, resolution_e, channels) float32 in [-1, 1],
    ``image_d`` (b, resolution_d, resolution_d, channels) likewise, ``label`` (b,) int32, with
    b = ``c.batch_size / process_count``. Process index/count default to JAX's.
    """
    config.validate(c)
    process_index, process_count = _process(process_index, process_count)
    builder = builder or tfds_source.prepared_builder(c)
    split = tfds_source.process_split(tfds_source.training_split(c), process_index,
                                      process_count)
    records = _read(builder, split)
    num_examples = builder.info.splits[split].num_examples
    batch = per_process_batch_size(c.batch_size, process_count)
    if num_examples == 0:
        raise ValueError(f"Process {process_index} got no examples of {split!r}.")
    first_example = start_step * batch
    first_epoch, skip = divmod(first_example, num_examples)
    spec = view_spec(c, builder, training=True)

    def epoch(e):
        shuffle_seed = tf.random.experimental.stateless_fold_in(
            tf.constant([c.seed, process_index], tf.int64), e)[0]
        ds = records.enumerate()
        ds = ds.shuffle(min(c.shuffle_buffer, num_examples), seed=shuffle_seed,
                        reshuffle_each_iteration=False)
        return ds.map(lambda i, ex: (e, i, ex))

    def prepare(e, i, example):
        seed = augment.example_seed(c.seed, process_index, e, i)
        return augment.preprocess(example[0], example[1], spec, seed)

    ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch).skip(skip)
    ds = ds.map(prepare, num_parallel_calls=c.num_parallel_calls)
    ds = ds.batch(batch, drop_remainder=True)
    return ds.prefetch(c.prefetch).with_options(_options())


def eval_dataset(c: ml_collections.ConfigDict, split: str, *, batch_size: int,
                 drop_remainder: bool = False, process_index: int | None = None,
                 process_count: int | None = None,
                 builder: tfds.core.DatasetBuilder | None = None) -> tf.data.Dataset:
    """One pass over this process's part of ``split`` (centre crop, no flip, fixed order).

    ``batch_size`` is per process. The parts of different processes differ by at most one
    example and the last batch may be short unless ``drop_remainder``.
    """
    config.validate(c)
    process_index, process_count = _process(process_index, process_count)
    builder = builder or tfds_source.prepared_builder(c)
    part = tfds_source.process_split(split, process_index, process_count, drop_remainder=False)
    spec = view_spec(c, builder, training=False)
    no_seed = tf.constant([0, 0], tf.int64)  # centre crop, no flip: nothing random
    ds = _read(builder, part).map(lambda image, label: augment.preprocess(
        image, label, spec, no_seed), num_parallel_calls=c.num_parallel_calls)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(c.prefetch).with_options(_options())


def _process(index: int | None, count: int | None) -> tuple[int, int]:
    if index is None or count is None:
        import jax  # only for the defaults; the pipeline itself never touches devices

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    return index, count
