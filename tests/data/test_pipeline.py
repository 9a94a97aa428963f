"""The TFDS pipeline on mocked ImageNet: format, two views, splits, and resume determinism."""

import numpy as np

from bbg_jax.data import config, pipeline, tfds_source


def _config(**overrides):
    c = config.data_config("imagenet2012", resolution=16, encoder_resolution=32, batch_size=32)
    c.train_val_size = 100  # train = examples 100..599 of the mock
    c.shuffle_buffer = 64
    c.num_parallel_calls = 2
    c.update(overrides)
    return c


def _batches(c, builder, start_step, n, **kw):
    it = pipeline.train_dataset(c, start_step=start_step, builder=builder, process_index=0,
                                process_count=1, **kw).as_numpy_iterator()
    return [next(it) for _ in range(n)]


def _labels(c, builder, split, index=0, count=1):
    ds = pipeline.eval_dataset(c, split, batch_size=50, builder=builder, process_index=index,
                               process_count=count)
    return np.concatenate([b["label"] for b in ds.as_numpy_iterator()])


def test_batch_format_and_views(mock_imagenet):
    (batch,) = _batches(_config(), mock_imagenet, 0, 1)
    assert batch["image_e"].shape == (32, 32, 32, 3) and batch["image_e"].dtype == np.float32
    assert batch["image_d"].shape == (32, 16, 16, 3) and batch["image_d"].dtype == np.float32
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    for k in ("image_e", "image_d"):
        assert -1.0 <= batch[k].min() and batch[k].max() <= 1.0
        assert batch[k].std() > 0.1  # real image content, not a constant
    pooled = batch["image_e"].reshape(32, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(batch["image_d"], pooled, atol=1e-6)


def test_resize_when_not_twice(mock_imagenet):
    (batch,) = _batches(_config(resolution_e=24, augmentation="light_crop"), mock_imagenet, 0, 1)
    assert batch["image_e"].shape[1:] == (24, 24, 3)
    assert batch["image_d"].shape[1:] == (16, 16, 3)


def test_resume_matches_uninterrupted_run(mock_imagenet):
    c = _config()  # 500 examples / 32 = 15.6 steps per epoch: step 14..18 cross an epoch
    uninterrupted = _batches(c, mock_imagenet, 0, 19)
    resumed = _batches(c, mock_imagenet, 14, 5)
    for a, b in zip(uninterrupted[14:], resumed, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # Epochs differ in order and augmentation; the seed changes everything.
    assert not np.array_equal(uninterrupted[0]["label"], uninterrupted[16]["label"])
    other = _batches(_config(seed=1), mock_imagenet, 0, 1)[0]
    assert not np.array_equal(other["image_e"], uninterrupted[0]["image_e"])


def test_one_epoch_sees_every_training_example_once(mock_imagenet):
    c = _config(batch_size=50)  # 500 / 50: exactly 10 steps per epoch
    labels = np.concatenate([b["label"] for b in _batches(c, mock_imagenet, 0, 10)])
    assert sorted(labels.tolist()) == list(range(100, 600))


def test_train_val_is_disjoint_from_train(mock_imagenet):
    c = _config()
    train_val = _labels(c, mock_imagenet, tfds_source.train_val_split(c))
    train = _labels(c, mock_imagenet, tfds_source.training_split(c))
    assert sorted(train_val.tolist()) == list(range(100))
    assert not set(train_val.tolist()) & set(train.tolist())
    assert len(train) == 500


def test_process_splits_are_disjoint_and_cover(mock_imagenet):
    c = _config()
    split = tfds_source.training_split(c)
    parts = [set(_labels(c, mock_imagenet, split, i, 3).tolist()) for i in range(3)]
    assert sum(len(p) for p in parts) == 500 == len(set.union(*parts))
    # Training drops the remainder (500 = 3 x 166 + 2) so processes step through epochs in
    # lock-step: with a per-process batch of 166, step 0 of each process is its whole part.
    c.batch_size = 3 * 166
    train_parts = [set(next(pipeline.train_dataset(
        c, builder=mock_imagenet, process_index=i, process_count=3).as_numpy_iterator())
        ["label"].tolist()) for i in range(3)]
    assert [len(p) for p in train_parts] == [166] * 3
    assert len(set.union(*train_parts)) == 498 and set.union(*train_parts) <= set.union(*parts)


def test_eval_is_centre_crop_without_flip(mock_imagenet):
    c = _config()
    a = next(pipeline.eval_dataset(c, "validation", batch_size=10, builder=mock_imagenet,
                                   process_index=0, process_count=1).as_numpy_iterator())
    b = next(pipeline.eval_dataset(c, "validation", batch_size=10, builder=mock_imagenet,
                                   process_index=0, process_count=1).as_numpy_iterator())
    np.testing.assert_array_equal(a["image_e"], b["image_e"])
    assert a["label"].tolist() == list(range(10))
