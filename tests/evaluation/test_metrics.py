"""Fréchet distance, Inception Score and streaming statistics on cases with known answers."""

import math

import numpy as np
import pytest

from bbg_jax.evaluation import metrics


def _random_gaussian_stats(rng, n, dim):
    x = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def test_frechet_distance_matches_scipy_sqrtm_reference():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    mu1, c1 = _random_gaussian_stats(rng, 500, 64)
    mu2, c2 = _random_gaussian_stats(rng, 500, 64)
    # The pytorch-fid / TTUR reference formula.
    covmean, _ = linalg.sqrtm(c1 @ c2, disp=False)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean.real)
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    # Diagonal: sum (m1 - m2)^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0) ** 2
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, abs=1e-10)
    assert metrics.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0, abs=1e-9)


def test_feature_stats_stream_equals_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(103, 7)).astype(np.float32)
    stats = metrics.FeatureStats(7)
    for part in np.array_split(x, 5):
        stats.update(part)
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


def test_inception_score_hand_computed():
    # p(y|x) = (0.9, 0.1) and (0.1, 0.9): p(y) = (0.5, 0.5) and
    # KL = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) for both samples.
    logits = np.log(np.array([[0.9, 0.1], [0.1, 0.9]]))
    expected = math.exp(0.9 * math.log(1.8) + 0.1 * math.log(0.2))
    mean, std = metrics.inception_score(logits, num_splits=1)
    assert mean == pytest.approx(expected, rel=1e-12)
    assert std == 0.0
    # Confident and uniform over K classes -> K; identical predictions -> 1.
    assert metrics.inception_score(np.eye(4) * 50, num_splits=1)[0] == pytest.approx(4, rel=1e-9)
    assert metrics.inception_score(np.ones((6, 3)), num_splits=2) == pytest.approx((1.0, 0.0))


def test_count_name():
    assert metrics.count_name(50_000) == "50k"
    assert metrics.count_name(10_000) == "10k"
    assert metrics.count_name(2_500) == "2500"
