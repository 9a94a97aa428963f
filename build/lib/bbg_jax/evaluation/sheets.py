"""Image sheets: samples from a fixed z, reconstructions of a fixed batch, interpolations.

All functions return uint8 [H, W, C] sheets; writing them (PNG, TensorBoard) is the caller's job.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bbg_jax.evaluation.png import grid, to_uint8

Sampler = Callable[[jax.Array, jax.Array | None], jax.Array]


def sample_sheet(sample: Sampler, z: jax.Array, y: jax.Array | None, rows: int = 4) -> np.ndarray:
    return grid(to_uint8(sample(z, y)), rows)


def reconstruction_sheet(sample: Sampler, encode: Callable[[jax.Array], dict],
                         x_e: jax.Array, x_d: jax.Array, y: jax.Array | None) -> np.ndarray:
    """Three rows: x, G(E(x)) with z_mean, G(E(x)) with z_sample (shown, not scored)."""
    out = encode(x_e)
    rows = [np.asarray(x_d), np.asarray(sample(out["z_mean"], y)),
            np.asarray(sample(out["z_sample"], y))]
    return grid(to_uint8(np.concatenate(rows)), rows=3)


def interpolation_sheet(sample: Sampler, z0: jax.Array, z1: jax.Array, y: jax.Array | None,
                        steps: int) -> np.ndarray:
    """One row per (z0, z1) pair, linear interpolation in z, the label of z0 kept along a row."""
    t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    z = (z0[:, None] * (1 - t) + z1[:, None] * t).reshape(-1, z0.shape[-1])
    yy = None if y is None else jnp.repeat(y, steps)
    return grid(to_uint8(sample(z, yy)), rows=z0.shape[0])
