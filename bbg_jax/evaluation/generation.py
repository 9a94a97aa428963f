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


def standing_stats(config: ml_collections.ConfigDict, params, model_state, key: jax.Array,
                   num_batches: int, batch_size: int):
    """G's ``batch_stats`` replaced by the mean of per-batch moments over fresh samples.

    Each pass starts from zero statistics, so the stored update m·0 + (1-m)·moment is the
    batch moment times (1-m); dividing by (1-m) recovers it exactly.
    """
    G = build_models(config)["G"]
    m = config.model.generator.bn_momentum
    zeros = jax.tree.map(jnp.zeros_like, model_state["batch_stats"])

    @jax.jit
    def moments(k):
        z, y = draw_latents(config, k, batch_size)
        _, new = G.apply({"params": params, **model_state, "batch_stats": zeros}, z, y,
                         train=True, mutable=["batch_stats", "spectral"])
        return jax.tree.map(lambda s: s / (1.0 - m), new["batch_stats"])

    total = jax.tree.map(jnp.zeros_like, zeros)
    for k in jax.random.split(key, num_batches):
        total = jax.tree.map(jnp.add, total, moments(k))
    return jax.tree.map(lambda s: s / num_batches, total)


def make_sampler(config: ml_collections.ConfigDict, state, generator: str, bn: str,
                 key: jax.Array, standing_batches: int = 100, batch_size: int = 64
                 ) -> Callable[[jax.Array, jax.Array | None], jax.Array]:
    """A jitted (z, y) -> images in [-1, 1] for the chosen weights and statistics mode."""
    if bn not in BN_MODES:
        raise ValueError(f"eval bn_stats={bn!r}; choose one of {BN_MODES}")
    G = build_models(config)["G"]
    params = generator_params(state, generator)
    model_state = dict(state.model_state["G"])
    if bn == "standing":
        model_state["batch_stats"] = standing_stats(config, params, model_state, key,
                                                    standing_batches, batch_size)

    @jax.jit
    def sample(z, y):
        variables = {"params": params, **model_state}
        if bn == "batch":
            out, _ = G.apply(variables, z, y, train=True, mutable=["batch_stats", "spectral"])
        else:
            out = G.apply(variables, z, y, train=False)
        return out.astype(jnp.float32)

    return sample
