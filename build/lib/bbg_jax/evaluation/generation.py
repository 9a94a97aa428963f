"""Sampling G for evaluation: EMA or raw weights, batch or standing BN statistics.

Both choices change FID noticeably (a known trap of BigGAN codebases), so both are explicit and
named in every metric: ``fid_50k_ema_standing_train``.

* ``batch``: G in training mode, each batch normalised by its own moments (mutations discarded;
  note that training mode also runs spectral norm's power iteration on the stored vectors).
* ``standing``: BN statistics re-estimated as the average of per-batch moments over
  ``standing_batches`` batches of fresh samples (BigGAN-PyTorch's "standing stats"), then G in
  evaluation mode with those statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bbg_jax.evaluation.sharded import ShardedFn, replicate
from bbg_jax.models import build_models
from bbg_jax.train import sample_prior

GENERATORS = ("ema", "raw")
BN_MODES = ("batch", "standing")


def generator_params(state, which: str):
    if which not in GENERATORS:
        raise ValueError(f"eval generator={which!r}; choose one of {GENERATORS}")
    if which == "ema":
        if "G" not in state.ema_params:
            raise ValueError("the state has no EMA generator")
        return state.ema_params["G"]
    return state.params["G"]


def draw_latents(config: ml_collections.ConfigDict, key: jax.Array, n: int
                 ) -> tuple[jax.Array, jax.Array | None]:
    """z from the training prior, and labels when G is class-conditional."""
    kz, ky = jax.random.split(key)
    z = sample_prior(kz, (n, config.model.z_dim), config.train.prior)
    g = config.model.generator
    y = jax.random.randint(ky, (n,), 0, g.num_classes) if g.conditioning == "class" else None
    return z, y


class Sampler:
    """G's evaluation functions, jitted once over the mesh with the weights as arguments.

    ``bind`` returns a (z, y) -> numpy images function for one state, weights and BN mode.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        self.config = config
        G = build_models(config)["G"]
        self._momentum = config.model.generator.bn_momentum

        def batch_mode(variables, zy):
            out, _ = G.apply(variables, zy["z"], zy.get("y"), train=True,
                             mutable=["batch_stats", "spectral"])
            return out.astype(jnp.float32)

        def eval_mode(variables, zy):
            return G.apply(variables, zy["z"], zy.get("y"), train=False).astype(jnp.float32)

        def moments(variables, zy):
            _, new = G.apply(variables, zy["z"], zy.get("y"), train=True,
                             mutable=["batch_stats", "spectral"])
            return jax.tree.map(lambda s: s / (1.0 - self._momentum), new["batch_stats"])

        # Batch-mode BN normalises by the batch's own moments: rows are not independent.
        self._fns = {"batch": ShardedFn(batch_mode, mesh, rows_independent=False),
                     "standing": ShardedFn(eval_mode, mesh)}
        self._moments = ShardedFn(moments, mesh, rows_independent=False, per_row_output=False)
        self.mesh = self._moments.mesh

    def standing_stats(self, params, model_state, key: jax.Array, num_batches: int,
                       batch_size: int):
        """G's ``batch_stats`` replaced by the mean of per-batch moments over fresh samples.

        Each pass starts from zero statistics, so the stored update m·0 + (1-m)·moment is the
        batch moment times (1-m); dividing by (1-m) recovers it exactly.
        """
        zeros = jax.tree.map(jnp.zeros_like, model_state["batch_stats"])
        variables = replicate({"params": params, **model_state, "batch_stats": zeros},
                              self.mesh)
        total = None
        for k in jax.random.split(key, num_batches):
            m = self._moments(variables, _latents(self.config, k, batch_size))
            total = m if total is None else jax.tree.map(np.add, total, m)
        return jax.tree.map(lambda s: s / num_batches, total)

    def bind(self, state, generator: str, bn: str, key: jax.Array, standing_batches: int = 100,
             batch_size: int = 64) -> Callable[[jax.Array, jax.Array | None], np.ndarray]:
        """(z, y) -> images in [-1, 1] for the chosen weights and statistics mode."""
        if bn not in BN_MODES:
            raise ValueError(f"eval bn_stats={bn!r}; choose one of {BN_MODES}")
        params = generator_params(state, generator)
        model_state = dict(state.model_state["G"])
        if bn == "standing":
            model_state["batch_stats"] = self.standing_stats(params, model_state, key,
                                                             standing_batches, batch_size)
        variables = replicate({"params": params, **model_state}, self.mesh)
        fn = self._fns[bn]

        def sample(z, y=None):
            zy = {"z": np.asarray(z)}
            if y is not None:
                zy["y"] = np.asarray(y)
            return fn(variables, zy)

        return sample


def _latents(config, key, n) -> dict[str, np.ndarray]:
    z, y = draw_latents(config, key, n)
    return {"z": np.asarray(z)} if y is None else {"z": np.asarray(z), "y": np.asarray(y)}
