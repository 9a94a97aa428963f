"""One example's augmentation: a crop window, the decode of that window, and the two views.

All randomness is stateless (``tf.random.stateless_*`` on a per-example seed), so an example's
crop and flip depend only on that seed, not on thread scheduling or on where a run resumed.
For JPEG sources only the crop window is decoded (``decode_and_crop_jpeg``), the main saving
of the ResNet-style pipeline.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

CENTRE_CROP_FRACTION = 0.875  # ResNet evaluation: 224 of 256
RESNET_AREA = (0.08, 1.0)
RESNET_ASPECT = (3 / 4, 4 / 3)
LIGHT_AREA = (0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """What the two views look like; fixed for a whole pipeline."""

    augmentation: str  # resnet_crop | light_crop | centre_crop | pad
    resolution_e: int
    resolution_d: int
    channels: int  # output channels, 1 or 3
    random_flip: bool
    antialias: bool = False
    jpeg: bool = False  # the source stores JPEG: decode only the crop window
    source_channels: int = 3


def example_seed(seed: int, process_index: int, epoch, index) -> tf.Tensor:
    """The per-example stateless seed, a function of (seed, process, epoch, example index)."""
    s = tf.constant([seed, process_index], tf.int64)
    s = tf.random.experimental.stateless_fold_in(s, tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(s, tf.cast(index, tf.int64))


def crop_window(height, width, augmentation: str, seed) -> tf.Tensor:
    """The crop as int32 [y, x, h, w] inside a ``height`` x ``width`` image."""
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    if augmentation == "resnet_crop":
        # Falls back to the whole image when 10 draws all miss the image (as TF's ResNet does).
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.stack([height, width, 1]), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
            min_object_covered=0.0, aspect_ratio_range=RESNET_ASPECT, area_range=RESNET_AREA,
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        return tf.stack([begin[0], begin[1], size[0], size[1]])
    short = tf.minimum(height, width)
    if augmentation == "light_crop":
        # A square of 0.5-1 times the area of the largest square that fits, anywhere.
        area_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        fraction = tf.random.stateless_uniform([], area_seed, *LIGHT_AREA)
        side = tf.maximum(1, tf.cast(tf.sqrt(fraction) * tf.cast(short, tf.float32), tf.int32))
        y = tf.random.stateless_uniform([], y_seed, 0, height - side + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform([], x_seed, 0, width - side + 1, dtype=tf.int32)
        return tf.stack([y, x, side, side])
    if augmentation == "centre_crop":
        side = tf.maximum(1, tf.cast(
            tf.round(CENTRE_CROP_FRACTION * tf.cast(short, tf.float32)), tf.int32))
        return tf.stack([(height - side) // 2, (width - side) // 2, side, side])
    raise ValueError(f"No crop window for augmentation {augmentation!r}.")


def decode_crop(encoded: tf.Tensor, spec: ViewSpec, seed) -> tf.Tensor:
    """The uint8 crop of an encoded image (the whole image for ``pad``)."""
    if spec.augmentation == "pad":
        return tf.io.decode_image(encoded, channels=spec.source_channels, expand_animations=False)
    if spec.jpeg:
        shape = tf.image.extract_jpeg_shape(encoded)
        window = crop_window(shape[0], shape[1], spec.augmentation, seed)
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=spec.source_channels)
    image = tf.io.decode_image(encoded, channels=spec.source_channels, expand_animations=False)
    shape = tf.shape(image)
    y, x, h, w = tf.unstack(crop_window(shape[0], shape[1], spec.augmentation, seed))
    return image[y:y + h, x:x + w]


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return tf.tile(image, [1, 1, 3])
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(image)
    raise ValueError(f"Cannot turn {have} channels into {channels}.")


def _to_unit_range(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [-1, 1] float32."""
    return tf.clip_by_value(tf.cast(image, tf.float32) / 127.5 - 1.0, -1.0, 1.0)


def _resize(image: tf.Tensor, resolution: int, antialias: bool) -> tf.Tensor:
    return tf.image.resize(image, [resolution, resolution], method="bilinear",
                           antialias=antialias)


def average_pool_2x2(image: tf.Tensor) -> tf.Tensor:
    """(2h, 2w, c) -> (h, w, c), each output pixel the mean of a 2x2 block."""
    h, w, c = image.shape
    return tf.reduce_mean(tf.reshape(image, [h // 2, 2, w // 2, 2, c]), axis=[1, 3])


def pad_to(image: tf.Tensor, resolution: int) -> tf.Tensor:
    """Centres ``image`` (already in [-1, 1]) on a black (-1) square of side ``resolution``."""
    shape = tf.shape(image)
    tf.debugging.assert_less_equal(
        tf.reduce_max(shape[:2]), resolution,
        message="augmentation='pad' needs images no larger than data.resolution_e")
    top, left = (resolution - shape[0]) // 2, (resolution - shape[1]) // 2
    padded = tf.pad(image, [[top, resolution - shape[0] - top],
                            [left, resolution - shape[1] - left], [0, 0]], constant_values=-1.0)
    return tf.ensure_shape(padded, [resolution, resolution, image.shape[-1]])


def flip_decision(seed) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < 0.5


def two_views(crop: tf.Tensor, spec: ViewSpec, flip) -> tuple[tf.Tensor, tf.Tensor]:
    """(image_e, image_d) in [-1, 1] float32 from one uint8 crop, both flipped or neither."""
    crop = _to_channels(crop, spec.channels)
    crop = tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
    if spec.augmentation == "pad":
        image_e = pad_to(_to_unit_range(crop), spec.resolution_e)
    else:
        image_e = _to_unit_range(_resize(crop, spec.resolution_e, spec.antialias))
    if spec.resolution_e == spec.resolution_d:
        image_d = image_e
    elif spec.resolution_e == 2 * spec.resolution_d:
        image_d = average_pool_2x2(image_e)  # the paper's high-resolution encoder input
    elif spec.augmentation == "pad":
        image_d = tf.clip_by_value(_resize(image_e, spec.resolution_d, spec.antialias), -1, 1)
    else:
        image_d = _to_unit_range(_resize(crop, spec.resolution_d, spec.antialias))
    return image_e, image_d


def preprocess(encoded: tf.Tensor, label: tf.Tensor, spec: ViewSpec, seed) -> dict:
    """The model's input dict for one encoded image."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    crop = decode_crop(encoded, spec, crop_seed)
    flip = flip_decision(flip_seed) if spec.random_flip else tf.constant(False)
    image_e, image_d = two_views(crop, spec, flip)
    return {"image_e": image_e, "image_d": image_d, "label": tf.cast(label, tf.int32)}
