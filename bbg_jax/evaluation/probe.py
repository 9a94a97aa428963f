"""Linear evaluation of the encoder: a softmax classifier on frozen features.

Protocol (BigBiGAN's linear evaluation, Donahue & Simonyan 2019): E is frozen and run in
evaluation mode (running BN statistics); its ``avepool_feat`` and ``bn_crelu_feat`` are
extracted once per checkpoint, without augmentation, and kept in memory (optionally cached as
.npz). A linear softmax classifier is trained with optax Adam on the training split (train
minus train_val) for every L2 strength of a grid at once (vmapped); the strength with the best
train_val top-1 is chosen, and that classifier's top-1/top-5 are reported on train_val and on
the held-out evaluation split. The classifier is not retrained on train + train_val.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bbg_jax import paths
from bbg_jax.evaluation import interrupt
from bbg_jax.evaluation.sharded import ShardedFn, one_answer, replicate
from bbg_jax.paths import PathLike

FEATURES = ("avepool_feat", "bn_crelu_feat")
# Short names used in metric names: probe_top1_bn_crelu_trainval.
FEATURE_NAMES = {"avepool_feat": "avepool", "bn_crelu_feat": "bn_crelu"}


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """How the classifier is trained. The paper leaves optimiser and epochs open."""

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    l2_grid: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
    seed: int = 0


@dataclasses.dataclass
class ProbeResult:
    l2: float                      # the chosen strength
    val_top1_per_l2: list[float]   # train_val top-1 for every strength of the grid
    weights: np.ndarray            # [d, K] of the chosen classifier
    bias: np.ndarray               # [K]


def result_arrays(result: ProbeResult) -> dict[str, np.ndarray]:
    """A fitted classifier as arrays (for ``cached`` / .npz)."""
    return {"weights": result.weights, "bias": result.bias, "l2": np.asarray(result.l2),
            "val_top1_per_l2": np.asarray(result.val_top1_per_l2)}


def result_from_arrays(arrays: dict[str, np.ndarray]) -> ProbeResult:
    # Pixel judges cached before val_top1_per_l2 was stored have no such array.
    per_l2 = arrays["val_top1_per_l2"] if "val_top1_per_l2" in arrays else []
    return ProbeResult(float(arrays["l2"]), [float(v) for v in per_l2],
                       np.asarray(arrays["weights"]), np.asarray(arrays["bias"]))


def feature_fn(encoder: nn.Module) -> Callable[[dict, jax.Array], dict[str, jax.Array]]:
    """``(variables, images) -> {avepool_feat, bn_crelu_feat}``: E frozen, in evaluation mode."""
    def forward(variables, x):
        out = encoder.apply(variables, x, train=False,
                            noise=jnp.zeros((x.shape[0], encoder.z_dim)))
        return {k: out[k].astype(jnp.float32) for k in FEATURES}

    return forward


class FeatureExtractor:
    """Frozen E's probe features, jitted once over the mesh with E's variables as arguments.

    E runs with ``train=False``: BN layers use their running statistics, so the features of an
    example do not depend on its batch; the posterior noise is irrelevant and set to zero.
    """

    def __init__(self, encoder: nn.Module, mesh=None):
        self._forward = ShardedFn(feature_fn(encoder), mesh)

    def __call__(self, variables: dict, batches: Iterable[dict], image_key: str = "image_e"
                 ) -> dict[str, np.ndarray]:
        """Features of every example: {avepool_feat, bn_crelu_feat, label} as numpy."""
        variables = replicate(variables, self._forward.mesh)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in (*FEATURES, "label")}
        for batch in batches:
            out = self._forward(variables, np.asarray(batch[image_key]))
            for k in FEATURES:
                parts[k].append(out[k])
            parts["label"].append(np.asarray(batch["label"], np.int32))
        return {k: np.concatenate(v) for k, v in parts.items()}


def encoder_features(encoder: nn.Module, variables: dict, batches: Iterable[dict],
                     image_key: str = "image_e") -> dict[str, np.ndarray]:
    """A one-off ``FeatureExtractor(encoder)(variables, batches)``."""
    return FeatureExtractor(encoder)(variables, batches, image_key)


def cached(path: PathLike | None, compute: Callable[[], dict[str, np.ndarray]]
           ) -> dict[str, np.ndarray]:
    """``compute()`` once, stored as ``path`` (.npz, any epath location) when a path is given.

    Every process must take the same branch (computing is collective): process 0 decides
    whether the file exists and tells the others; only process 0 writes it.
    """
    if path and one_answer(paths.path(path).exists()):
        return paths.load_npz(path)
    arrays = compute()
    if path and jax.process_index() == 0:
        paths.save_npz(path, arrays)  # atomic: a preempted write never leaves a truncated cache
    return arrays


def _logits(params, x):
    return x @ params["w"] + params["b"]


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[-1])
    top = np.argsort(-logits, axis=-1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def train_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                num_classes: int, settings: ProbeSettings = ProbeSettings()) -> ProbeResult:
    """Trains one classifier per L2 strength (vmapped, same minibatches) and picks on val."""
    d = train_x.shape[1]
    l2 = jnp.asarray(settings.l2_grid, jnp.float32)
    n_l2 = l2.shape[0]
    tx = optax.adam(settings.learning_rate)
    params = {"w": jnp.zeros((n_l2, d, num_classes)), "b": jnp.zeros((n_l2, num_classes))}
    opt_state = jax.vmap(tx.init)(params)

    def loss_fn(p, lam, x, y):
        ce = optax.softmax_cross_entropy_with_integer_labels(_logits(p, x), y).mean()
        return ce + 0.5 * lam * jnp.sum(p["w"] ** 2)  # no penalty on the bias

    @jax.jit
    def step(params, opt_state, x, y):
        def one(p, s, lam):
            g = jax.grad(loss_fn)(p, lam, x, y)
            updates, s = tx.update(g, s, p)
            return optax.apply_updates(p, updates), s
        return jax.vmap(one)(params, opt_state, l2)

    n = train_x.shape[0]
    bs = min(settings.batch_size, n)
    rng = np.random.default_rng(settings.seed)
    for _ in range(settings.epochs):
        # Host-side epochs over frozen features, outside ShardedFn: ImageNet's take minutes.
        interrupt.check()
        order = rng.permutation(n)
        for i in range(0, n - bs + 1, bs):  # drop the ragged batch: one compiled shape
            idx = order[i:i + bs]
            params, opt_state = step(params, opt_state, train_x[idx], train_y[idx])

    val_logits = np.asarray(jax.jit(jax.vmap(_logits, (0, None)))(params, jnp.asarray(val_x)))
    top1 = [topk_accuracy(v, val_y, 1) for v in val_logits]
    best = int(np.argmax(top1))  # ties: the weakest L2, first in the grid
    return ProbeResult(l2=float(settings.l2_grid[best]), val_top1_per_l2=top1,
                       weights=np.asarray(params["w"][best]), bias=np.asarray(params["b"][best]))


def evaluate_probe(result: ProbeResult, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    logits = x @ result.weights + result.bias
    return {"top1": topk_accuracy(logits, y, 1), "top5": topk_accuracy(logits, y, 5)}


def probe_metrics(features: dict[str, dict[str, np.ndarray]], num_classes: int,
                  settings: ProbeSettings = ProbeSettings(),
                  feature_keys: Sequence[str] = FEATURES,
                  fitted: dict[str, ProbeResult] | None = None) -> dict[str, float]:
    """Metrics for features = {"train": ..., "trainval": ..., "test": ...} (test optional).

    Names: probe_{top1,top5}_{avepool,bn_crelu}_{trainval,test} and probe_l2_{feature}.
    ``fitted``, when given, receives each feature key's chosen classifier.
    """
    out: dict[str, float] = {}
    train, val = features["train"], features["trainval"]
    for key in feature_keys:
        name = FEATURE_NAMES[key]
        result = train_probe(train[key], train["label"], val[key], val["label"], num_classes,
                             settings)
        if fitted is not None:
            fitted[key] = result
        out[f"probe_l2_{name}"] = result.l2
        for split in ("trainval", "test"):
            if split in features:
                for metric, value in evaluate_probe(
                        result, features[split][key], features[split]["label"]).items():
                    out[f"probe_{metric}_{name}_{split}"] = value
    return out
