"""FID reference statistics are cached under everything that selects them: the Inception weights'
content, the resize (resolution and method), N and the split (issue 31, item 4)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from bbg_jax.configs import load_experiment
from bbg_jax.evaluation import evaluators
from bbg_jax.evaluation.config import eval_config
from bbg_jax.evaluation.inception import network

SMOKE = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")


class CountingFeatures:
    """A stand-in "Inception": the first 2048 pixels of each image; counts the images it sees.
    ``resize`` (when given) stands for another input preprocessing."""

    def __init__(self, resize=None):
        self.images = 0
        if resize is not None:
            self.resize = resize

    def __call__(self, images):
        self.images += len(images)
        flat = np.asarray(images, np.float32).reshape(len(images), -1)
        return np.resize(flat, (len(images), 2048))


def _weights(tmp_path, name, content):
    path = tmp_path / "weights" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return str(path)


def _stats(tmp_path, weights, which="train", n=16, resolution=None, features=None):
    """Real statistics through a fresh evaluator on the same workdir: (images computed, mu)."""
    config = load_experiment(SMOKE)
    config.eval = eval_config(fid_num_samples=n)
    config.eval.batch_size = 8
    config.eval.fid.inception_weights = weights
    if resolution is not None:
        config.data.resolution_d = resolution
    features = features or CountingFeatures()
    ev = evaluators.FIDEvaluator(config, str(tmp_path / "run"),
                                 evaluators.dataset_batches(config, 8), features=features)
    mu, _ = ev.real_stats(which)
    return features.images, mu


def test_each_setting_has_its_own_entry_and_the_same_settings_reuse_it(tmp_path):
    a = _weights(tmp_path, "a.pt", b"inception weights A" * 1000)
    b = _weights(tmp_path, "b.pt", b"inception weights B" * 1000)
    a_copy = str(tmp_path / "elsewhere" / "a_copy.pt")
    Path(a_copy).parent.mkdir()
    shutil.copy(a, a_copy)

    computed, mu = _stats(tmp_path, a)
    assert computed == 16  # the first N=16 real images
    # The same settings (a fresh evaluator, the same weights at another path): reused.
    assert _stats(tmp_path, a)[0] == 0
    again, mu_copy = _stats(tmp_path, a_copy)
    assert again == 0 and np.array_equal(mu, mu_copy)
    entries = lambda: sorted(p.name for p in (tmp_path / "run" / "fid_stats").iterdir())  # noqa
    assert len(entries()) == 1
    # Each change gives a new entry, computed once and then reused.
    other_resize = lambda: CountingFeatures(resize="to299-other")  # noqa: E731
    changes = [dict(weights=b), dict(weights=a, n=24), dict(weights=a, which="eval"),
               dict(weights=a, resolution=16), dict(weights=a, features=other_resize)]
    for i, change in enumerate(changes):
        kwargs = {**change, "features": change.get("features", CountingFeatures)()}
        assert _stats(tmp_path, **kwargs)[0] == change.get("n", 16), change
        assert len(entries()) == 2 + i, (change, entries())
        kwargs["features"] = change.get("features", CountingFeatures)()
        assert _stats(tmp_path, **kwargs)[0] == 0, change
    # The weights' content changing in place (same path) is a new entry too.
    Path(a).write_bytes(b"retrained weights" * 1000)
    assert _stats(tmp_path, a)[0] == 16


def test_the_real_inception_features_carry_the_key_parts():
    """InceptionFeatures exposes the digest of the file it loaded (the packaged weights) and its
    resize; a second load of the same file gives the same key."""
    try:
        network.default_weights_path()
    except FileNotFoundError:
        pytest.skip("the packaged FID weights are not installed")
    features = network.InceptionFeatures()
    assert features.weights_digest == network.weights_digest(network.default_weights_path())
    assert len(features.weights_digest) == 64
    assert features.resize == network.resize_name(True) == "to299-tf1bilinear-q8"
    assert network.resize_name(False) != features.resize
