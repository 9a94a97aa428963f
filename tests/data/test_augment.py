"""Crop and flip statistics, grayscale padding and channel handling, one example at a time."""

import numpy as np
import tensorflow as tf

from bbg_jax.data import augment


def _windows(kind, n=2000, height=375, width=500):
    seeds = tf.stack([tf.fill([n], tf.constant(7, tf.int64)), tf.range(n, dtype=tf.int64)], 1)
    draw = tf.function(lambda s: tf.map_fn(
        lambda seed: augment.crop_window(height, width, kind, seed), s,
        fn_output_signature=tf.int32))
    return draw(seeds).numpy()


def test_resnet_crop_statistics():
    y, x, h, w = _windows("resnet_crop").T
    area, aspect = h * w / (375 * 500), w / h
    assert np.all((y >= 0) & (x >= 0) & (y + h <= 375) & (x + w <= 500))
    whole = area == 1.0  # the fallback after 10 failed draws
    assert whole.mean() < 0.1
    assert area[~whole].min() >= 0.075 and aspect[~whole].min() >= 0.74
    assert aspect[~whole].max() <= 1.34
    assert 0.35 < area.mean() < 0.7  # ~uniform area in [0.08, 1], large ones rejected more
    assert np.ptp(x) > 300 and np.ptp(y) > 200  # positions spread over the image


def test_light_crop_statistics():
    y, x, h, w = _windows("light_crop").T
    assert np.all(h == w)
    fraction = h * w / 375**2  # of the largest square
    assert fraction.min() >= 0.49 and fraction.max() <= 1.0
    assert 0.7 < fraction.mean() < 0.8
    assert np.all((y + h <= 375) & (x + w <= 500))


def test_centre_crop():
    y, x, h, w = augment.crop_window(375, 500, "centre_crop", tf.constant([0, 0], tf.int64))
    assert (h, w) == (328, 328) and (y, x) == ((375 - 328) // 2, (500 - 328) // 2)


def test_flip_statistics_and_views_flip_together():
    left_dark = np.zeros((64, 64, 3), np.uint8)
    left_dark[:, 32:] = 255
    encoded = tf.io.encode_png(left_dark)
    spec = augment.ViewSpec("centre_crop", 32, 16, 3, random_flip=True)
    flipped = []
    for s in range(400):
        ex = augment.preprocess(encoded, tf.constant(3), spec, tf.constant([1, s], tf.int64))
        e, d = ex["image_e"].numpy(), ex["image_d"].numpy()
        flipped.append(e[:, :8].mean() > 0)
        assert (e[:, :8].mean() > 0) == (d[:, :4].mean() > 0)
    assert 0.42 < np.mean(flipped) < 0.58


def test_grayscale_padded_to_resolution_in_one_or_three_channels():
    digit = np.full((28, 28, 1), 255, np.uint8)
    encoded = tf.io.encode_png(digit)
    for channels in (1, 3):
        spec = augment.ViewSpec("pad", 32, 16, channels, random_flip=False, source_channels=1)
        ex = augment.preprocess(encoded, tf.constant(1), spec, tf.constant([0, 0], tf.int64))
        e = ex["image_e"].numpy()
        assert e.shape == (32, 32, channels) and ex["image_d"].shape == (16, 16, channels)
        assert np.all(e[2:30, 2:30] == 1.0)  # the digit, centred
        assert np.all(e[:2] == -1.0) and np.all(e[:, 30:] == -1.0)  # black padding
