"""3×3, stride-1, pad-1 convolution and its gradients as Winograd F(4×4, 3×3), for CPUs.

Each 6×6 input tile (stride 4) is transformed (Bᵀ d B), multiplied channel-wise by the
transformed kernel (G g Gᵀ) as 36 [tiles, C_in] × [C_in, C_out] matmuls, and transformed back
(Aᵀ M A) into a 4×4 output tile: 36 products per 16 outputs instead of 144 (Lavin & Gray, 2016,
"Fast Algorithms for Convolutional Neural Networks"; the matrices are theirs). The input gradient
is the same convolution with the kernel turned and transposed; the weight gradient is the
adjoint in the kernel, 36 [C_in, tiles] × [tiles, C_out] matmuls. The transforms are sums of
strided slices with constant coefficients, which XLA fuses into elementwise passes. In float32
the error against XLA's direct convolution is about 2e-5 of the output's largest value
(tests/models/test_conv.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

TILE = 4  # output tile side m; input tile side m + 2
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)


# Below 256 input and output channels the transforms' memory traffic costs more than the saved
# products on a CPU (measurements in docs/modules.md), and every use adds compile time.
MIN_CHANNELS = 256
MIN_SIDE = 8


def applies(x_shape, w_shape, strides, padding) -> bool:
    """Whether ``conv3x3`` computes this convolution, and pays: a 3×3 kernel, stride 1, one
    pixel of zero padding on every side, sides that are multiples of the tile and at least
    ``MIN_SIDE``, and at least ``MIN_CHANNELS`` input and output channels."""
    return (tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
            and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
            and min(w_shape[2], w_shape[3]) >= MIN_CHANNELS
            and all(s % TILE == 0 and s >= MIN_SIDE for s in x_shape[1:3]))


def _combine(coeffs, terms):
    """Σ c·t over the non-zero coefficients, written as adds so XLA fuses it."""
    out = None
    for c, t in zip(coeffs, terms, strict=True):
        if c == 0:
            continue
        v = t if c == 1 else (-t if c == -1 else t * jnp.asarray(c, t.dtype))
        out = v if out is None else out + v
    return out


def _input_tiles(x: jax.Array) -> jax.Array:
    """Bᵀ d B of every 6×6 tile (stride 4) of the zero-padded x: [36, tiles, C]."""
    n, h, wd, c = x.shape
    a, m = TILE + 2, TILE
    th, tw = h // m, wd // m
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = [lax.slice_in_dim(xp, i, i + m * (th - 1) + 1, m, axis=1) for i in range(a)]
    v = []
    for p in range(a):
        u = _combine(_BT[p], rows)
        cols = [lax.slice_in_dim(u, j, j + m * (tw - 1) + 1, m, axis=2) for j in range(a)]
        v += [_combine(_BT[q], cols) for q in range(a)]
    return jnp.stack(v).reshape(a * a, n * th * tw, c)


def conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
    """NHWC × HWIO, stride 1, padding 1 (``applies`` must hold). The backward pass recomputes
    the input tiles rather than keeping them (2.25× the input's size per layer)."""
    n, h, wd, _ = x.shape
    a, m = TILE + 2, TILE
    th, tw = h // m, wd // m
    g = jnp.asarray(_G, w.dtype)
    u_w = jnp.einsum("pi,qj,ijcd->pqcd", g, g, w)
    prod = jnp.einsum("pkc,pcd->pkd", _input_tiles(x), u_w.reshape(a * a, w.shape[2], -1))
    prod = prod.reshape(a, a, n, th, tw, -1)
    r = [_combine(_AT[i], [prod[p] for p in range(a)]) for i in range(m)]
    y = jnp.stack([jnp.stack([_combine(_AT[j], [r[i][q] for q in range(a)]) for j in range(m)],
                             3) for i in range(m)], 2)  # [n, th, i, tw, j, d]
    return y.reshape(n, h, wd, -1)


def weight_grad3x3(x: jax.Array, dy: jax.Array) -> jax.Array:
    """dL/dW of ``conv3x3(x, w)`` given dL/dy, in the same transformed domain: the adjoint of
    y = Aᵀ[(G w Gᵀ) ⊙ (Bᵀ d B)]A in w is Gᵀ[(A dy Aᵀ) ⊙ (Bᵀ d B)]G, summed over tiles; the
    sum is 36 [C_in, tiles] × [tiles, C_out] matmuls."""
    n, h, wd, _ = x.shape
    a, m = TILE + 2, TILE
    th, tw = h // m, wd // m
    tiles = dy.reshape(n, th, m, tw, m, dy.shape[-1])
    z = [_combine(_AT[:, p], [tiles[:, :, u] for u in range(m)]) for p in range(a)]
    dy_t = jnp.stack([_combine(_AT[:, q], [z[p][:, :, :, v] for v in range(m)])
                      for p in range(a) for q in range(a)]).reshape(a * a, n * th * tw, -1)
    prod = jnp.einsum("pkc,pkd->pcd", _input_tiles(x), dy_t).reshape(a, a, x.shape[-1], -1)
    g = jnp.asarray(_G, prod.dtype)
    return jnp.einsum("pi,qj,pqcd->ijcd", g, g, prod)
