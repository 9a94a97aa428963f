"""Fréchet distance, Inception Score, and streaming feature statistics (numpy, float64).

Nothing here knows about networks: callers feed features or logits batch by batch.
"""

from __future__ import annotations

import numpy as np


class FeatureStats:
    """Running mean and covariance of feature batches without keeping the features.

    Sums are kept in float64, so 50k x 2048 features cost 32 MiB however many there are.
    """

    def __init__(self, dim: int):
        self.n = 0
        self._sum = np.zeros(dim, np.float64)
        self._outer = np.zeros((dim, dim), np.float64)

    def update(self, features: np.ndarray) -> None:
        f = np.asarray(features, np.float64)
        self.n += f.shape[0]
        self._sum += f.sum(axis=0)
        self._outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (ddof 1, as ``np.cov`` in the reference implementations)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.n}")
        mu = self._sum / self.n
        cov = (self._outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
                     ) -> float:
    """||mu1 - mu2||² + tr(C1 + C2 - 2 (C1 C2)^½).

    tr((C1 C2)^½) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix C1^½ C2 C1^½ (same spectrum as C1 C2). Unlike ``scipy.linalg.sqrtm`` of the
    non-symmetric product, this needs no scipy and returns no complex parts for singular
    covariances (e.g. fewer samples than dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    s1 = _psd_sqrt(cov1)
    eig = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    tr_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split of the samples; returns (mean, std) over splits.

    As in the original (Salimans et al. 2016) code: consecutive equal splits, p(y) the split's
    mean of p(y|x).
    """
    logits = np.asarray(logits, np.float64)
    if logits.shape[0] < num_splits:
        raise ValueError(f"{logits.shape[0]} samples cannot make {num_splits} splits")
    scores = []
    for part in np.array_split(logits, num_splits):
        log_p = _log_softmax(part)
        log_marginal = np.log(np.exp(log_p).mean(axis=0))
        kl = (np.exp(log_p) * (log_p - log_marginal)).sum(axis=-1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def count_name(n: int) -> str:
    """Sample count as used in metric names: 50000 -> '50k', 2500 -> '2500'."""
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


def load_logits_head(path: str) -> tuple[np.ndarray, np.ndarray]:
    """An Inception logits head saved as .npz: ``kernel`` [2048, K] and ``bias`` [K].

    ``python -m bbg_jax.evaluation.inception.logits_head`` writes one from the original TF graph.
    """
    from bbg_jax import paths

    if not paths.path(path).exists():
        raise FileNotFoundError(
            f"eval.fid.inception_logits_head={path!r} does not exist: convert the TF 2015-12-05 "
            "Inception graph's softmax layer with `python -m "
            "bbg_jax.evaluation.inception.logits_head --graph classify_image_graph_def.pb "
            "--out head.npz` or unset it (IS is skipped).")
    f = paths.load_npz(path)
    if "kernel" not in f or "bias" not in f:
        raise ValueError(f"{path} must hold arrays 'kernel' [2048, K] and 'bias' [K]; "
                         f"it has {sorted(f)}")
    kernel, bias = np.asarray(f["kernel"], np.float64), np.asarray(f["bias"], np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != 2048 or bias.shape != (kernel.shape[1],):
        raise ValueError(f"{path}: kernel {kernel.shape} / bias {bias.shape} do not form a "
                         "[2048, K] / [K] head on the 2048-d pool features")
    return kernel, bias
