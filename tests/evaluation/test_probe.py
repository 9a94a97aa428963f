"""The linear probe on features with a known answer, and E's parameter-free feature BN."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.configs import load_experiment
from bbg_jax.evaluation import probe
from bbg_jax.models import build_models

SMOKE = str(Path(__file__).resolve().parents[2] / "experiments" / "smoke.py")


def _separable(rng, n, d=16, k=4):
    centres = rng.normal(size=(k, d)) * 4.0
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int32)


def test_probe_solves_linearly_separable_features():
    rng = np.random.default_rng(0)
    tx, ty = _separable(rng, 512)
    vx, vy = _separable(np.random.default_rng(0), 256)  # same centres (same first draw)
    settings = probe.ProbeSettings(epochs=20, batch_size=64, learning_rate=1e-2,
                                   l2_grid=(0.0, 1e-3, 10.0))
    result = probe.train_probe(tx, ty, vx, vy, num_classes=4, settings=settings)
    assert len(result.val_top1_per_l2) == 3
    # Separable data: every strength classifies perfectly (argmax ignores scale), and ties go
    # to the weakest penalty, first in the grid.
    assert result.l2 == 0.0
    acc = probe.evaluate_probe(result, vx, vy)
    assert acc["top1"] >= 0.98
    assert acc["top5"] == 1.0  # K = 4 < 5: top-5 covers every class


def test_probe_metrics_names_and_chance_on_random_labels():
    rng = np.random.default_rng(1)
    feats = {s: {"avepool_feat": rng.normal(size=(200, 8)).astype(np.float32),
                 "label": rng.integers(0, 10, 200).astype(np.int32)}
             for s in ("train", "trainval", "test")}
    settings = probe.ProbeSettings(epochs=2, batch_size=50, l2_grid=(0.0, 1e-2))
    m = probe.probe_metrics(feats, 10, settings, feature_keys=("avepool_feat",))
    assert set(m) == {"probe_l2_avepool", "probe_top1_avepool_trainval",
                      "probe_top5_avepool_trainval", "probe_top1_avepool_test",
                      "probe_top5_avepool_test"}
    assert m["probe_top1_avepool_test"] < 0.3  # no signal -> about chance (0.1)


def test_topk_accuracy_by_hand():
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    labels = np.array([1, 2])
    assert probe.topk_accuracy(logits, labels, 1) == 0.5
    assert probe.topk_accuracy(logits, labels, 2) == 1.0


@pytest.fixture(scope="module")
def smoke_encoder():
    config = load_experiment(SMOKE)
    encoder = build_models(config)["E"]
    x = jnp.zeros((2, 32, 32, 3))
    variables = encoder.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, x,
                             train=False)
    return encoder, variables


@pytest.mark.slow  # initialising even the smoke encoder compiles for tens of seconds here
def test_bn_crelu_features_use_parameter_free_normalisation(smoke_encoder):
    encoder, variables = smoke_encoder
    assert "feat_bn" not in variables["params"]  # no learned scale or offset
    stats = variables["batch_stats"]["feat_bn"]["norm"]
    # Non-trivial running statistics, so eval mode is distinguishable from batch statistics.
    d = stats["mean"].shape[0]
    mean = jnp.linspace(-1.0, 1.0, d)
    var = jnp.linspace(0.5, 2.0, d)
    variables = jax.tree.map(lambda x: x, variables)
    variables["batch_stats"]["feat_bn"]["norm"] = {"mean": mean, "var": var}
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1, maxval=1)
    feats = probe.encoder_features(encoder, variables, [{"image_e": x, "label": np.zeros(4)}])
    normed = (feats["avepool_feat"] - np.asarray(mean)) / np.sqrt(np.asarray(var) + encoder.bn_eps)
    expected = np.concatenate([np.maximum(normed, 0), np.maximum(-normed, 0)], axis=-1)
    np.testing.assert_allclose(feats["bn_crelu_feat"], expected, rtol=1e-5, atol=1e-5)
