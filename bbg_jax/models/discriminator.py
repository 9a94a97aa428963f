"""Discriminators: BigGAN's D trunk F, BigBiGAN's joint D(x, z), and plain/projection GAN heads.

* ``DTrunk`` (F) -- the BigGAN discriminator without its output layer: residual down-blocks,
  self-attention, ReLU and a global *sum* pool (BigGAN-deep: mean pool, as compare_gan).
* ``BigBiGANDiscriminator`` -- F on x, the residual MLP H on z, the residual MLP J on
  concat[F(x), H(z)], and three linear heads: ``{"score_x", "score_z", "score_xz"}``, each (N,).
* ``GANDiscriminator`` -- F and one linear head on x; with ``num_classes > 0`` it adds the
  projection term ⟨embed(y), F(x)⟩ of Miyato & Koyama (class-conditional BigGAN). At 128 px,
  ch=96, 1000 classes it has exactly compare_gan's 87,982,370 parameters.

Every weight is spectrally normalised. Collections: ``params`` and ``spectral`` (no batch norm):
a training pass (``train=True``) runs one power iteration per weight and writes the vectors, so
apply it with ``mutable=["spectral"]``; ``train=False`` reads them. A training pass with
``spectral`` immutable raises ``layers.StateNotMutableError`` unless the module has
``update_state=False`` (a pass that keeps the stored vectors, e.g. D inside G's loss).

Deviations from compare_gan, with reasons:

* The first block does not apply ReLU to the raw image (BigGAN-PyTorch and the paper's
  pre-activation blocks skip it on the input layer).
* A block with equal in/out channels and no downsampling keeps an identity skip (compare_gan drops
  the residual path entirely there; BigGAN-PyTorch keeps it). Parameter counts are unaffected.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bbg_jax.configs import check_choice, config_error
from bbg_jax.models import layers

Array = jax.Array

BIGGAN_D_CHANNELS = {
    32: (2, 2, 2, 2),
    64: (2, 4, 8, 16, 16),
    128: (1, 2, 4, 8, 16, 16),
    256: (1, 2, 4, 8, 8, 16, 16),
    512: (1, 1, 2, 4, 8, 8, 16, 16),
}
BIGGAN_DEEP_D_CHANNELS = {
    32: 8 * (2,),
    64: (2, 4, 4) + 2 * (8,) + 4 * (16,),
    128: (1, 2, 2, 4, 4) + 2 * (8,) + 4 * (16,),
    256: (1, 2, 2, 4, 4) + 4 * (8,) + 4 * (16,),
    512: (1, 1, 1, 2, 2, 4, 4) + 4 * (8,) + 4 * (16,),
}
CONV_SHORTCUTS = ("channels", "channels_or_down")


def check_trunk_plan(deep: bool, resolution: int, downsample: Any, conv_shortcut: Any,
                     prefix: str) -> None:
    """The BigGAN trunk's plan fields, for ``DTrunk`` (``prefix`` "DTrunk.") and a config's
    ``model.discriminator`` ("model.discriminator."): a ``ConfigError`` naming the field."""
    if deep and (downsample is not None or conv_shortcut != "channels"):
        raise config_error(prefix + "deep", deep, "False",
                           "downsample and conv_shortcut shape the BigGAN trunk only")
    blocks = len((BIGGAN_DEEP_D_CHANNELS if deep else BIGGAN_D_CHANNELS)[resolution])
    if downsample is not None and not (
            isinstance(downsample, (list, tuple)) and len(downsample) == blocks
            and all(isinstance(b, bool) for b in downsample)):
        raise config_error(prefix + "downsample", downsample,
                           f"None or {blocks} booleans (one per block at {resolution} px)")
    check_choice(prefix + "conv_shortcut", conv_shortcut, CONV_SHORTCUTS)
# Resolutions (of the block output) followed by self-attention; see generator.DEFAULT_ATTENTION.
DEFAULT_ATTENTION = {32: (), 64: (32,), 128: (64,), 256: (64,), 512: (64,)}


def downsample(x: Array) -> Array:
    """2×2 average pooling (NHWC)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DBlock(nn.Module):
    """BigGAN D block: [ReLU]→conv3→ReLU→conv3→[avgpool]; shortcut conv1 (+pool) where the
    channel count changes, and in every downsampling block with ``conv_shortcut_when_down``."""

    out_channels: int
    down: bool
    preactivation: bool
    sn_eps: float
    dtype: Any
    param_dtype: Any = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None
    conv_shortcut_when_down: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        conv = lambda k, name: layers.SNConv(  # noqa: E731
            self.out_channels, kernel_size=k, sn_eps=self.sn_eps, dtype=self.dtype,
            param_dtype=self.param_dtype, update_state=self.update_state,
            conv_impl=self.conv_impl, name=name)
        h = nn.relu(x) if self.preactivation else x
        h = conv(3, "conv1")(h, train)
        h = conv(3, "conv2")(nn.relu(h), train)
        if self.down:
            h = downsample(h)
        # Shortcut: a 1x1 conv where the channel count changes. On the raw image (first block)
        # pool before the conv, elsewhere after it (BigGAN-PyTorch's order; same linear map).
        learnable = (x.shape[-1] != self.out_channels
                     or (self.down and self.conv_shortcut_when_down))
        skip = x
        if self.down and not self.preactivation:
            skip = downsample(skip)
        if learnable:
            skip = conv(1, "conv_shortcut")(skip, train)
        if self.down and self.preactivation:
            skip = downsample(skip)
        return h + skip


class DDeepBlock(nn.Module):
    """BigGAN-deep D block: bottleneck with pre-activations; identity skip, extra channels by a
    1×1 conv concatenated to it."""

    out_channels: int
    down: bool
    sn_eps: float
    dtype: Any
    param_dtype: Any = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        in_channels = x.shape[-1]
        if in_channels > self.out_channels:
            raise ValueError("A BigGAN-deep D block cannot decrease the channel count.")
        mid = max(in_channels, self.out_channels) // 4
        conv = lambda f, k, name: layers.SNConv(  # noqa: E731
            f, kernel_size=k, sn_eps=self.sn_eps, dtype=self.dtype, param_dtype=self.param_dtype,
            update_state=self.update_state, conv_impl=self.conv_impl, name=name)
        h = conv(mid, 1, "conv1")(nn.relu(x), train)
        h = conv(mid, 3, "conv2")(nn.relu(h), train)
        h = conv(mid, 3, "conv3")(nn.relu(h), train)
        h = nn.relu(h)
        if self.down:
            h = downsample(h)
        h = conv(self.out_channels, 1, "conv4")(h, train)
        skip = downsample(x) if self.down else x
        if in_channels < self.out_channels:
            extra = conv(self.out_channels - in_channels, 1, "conv_shortcut")(skip, train)
            skip = jnp.concatenate([skip, extra], axis=-1)
        return h + skip


class DTrunk(nn.Module):
    """F: the BigGAN discriminator trunk. Returns the pooled feature, (N, 16·ch) float32.

    ``downsample`` (one bool per block; None: every block but the last, the published plan)
    and ``conv_shortcut`` ("channels": a 1×1 shortcut convolution where the channel count
    changes, as compare_gan; "channels_or_down": also in every downsampling block, as
    BigGAN-PyTorch) apply to the BigGAN trunk, not BigGAN-deep's. BigGAN-PyTorch's 32-px D
    is ``downsample=(True, True, False, False)`` with "channels_or_down".
    """

    resolution: int = 128
    ch: int = 96
    deep: bool = False
    attention_resolutions: tuple[int, ...] | None = None
    sn_eps: float = 1e-4
    dtype: Any = jnp.float32
    attention_impl: str = "einsum"
    remat: bool = False  # recompute each block's activations in the backward pass
    # True: return (pooled feature, relu'd last feature map (N, h, w, C)) for a joint projection.
    return_map: bool = False
    param_dtype: Any = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None
    downsample: tuple[bool, ...] | None = None
    conv_shortcut: str = "channels"

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array | tuple[Array, Array]:
        plans = BIGGAN_DEEP_D_CHANNELS if self.deep else BIGGAN_D_CHANNELS
        if self.resolution not in plans:
            raise ValueError(
                f"Unsupported discriminator resolution {self.resolution}; "
                f"choose one of {sorted(plans)}."
            )
        if x.ndim != 4 or x.shape[1] != self.resolution or x.shape[2] != self.resolution:
            raise ValueError(
                f"D expects images of shape (N, {self.resolution}, {self.resolution}, C), got "
                f"{x.shape}: resize the input or set the discriminator's resolution to match."
            )
        attention = (DEFAULT_ATTENTION[self.resolution] if self.attention_resolutions is None
                     else tuple(self.attention_resolutions))
        mult = plans[self.resolution]
        kw = dict(param_dtype=self.param_dtype, update_state=self.update_state,
                  conv_impl=self.conv_impl)
        h = x.astype(self.dtype)
        size = self.resolution
        check_trunk_plan(self.deep, self.resolution, self.downsample, self.conv_shortcut,
                         "DTrunk.")
        if self.deep:
            ins = [self.ch * m for m in mult[:-1]]
            outs = [self.ch * m for m in mult[1:]]
            h = layers.SNConv(ins[0], kernel_size=3, sn_eps=self.sn_eps, dtype=self.dtype,
                              name="conv_in", **kw)(h, train)
            for i, c in enumerate(outs):
                down = i % 2 == 0
                block = layers.maybe_remat(DDeepBlock, self.remat, 2)
                h = block(c, down, self.sn_eps, self.dtype, name=f"block_{i}", **kw)(h, train)
                size //= 2 if down else 1
                if not down and size in attention:
                    h = layers.SelfAttention(
                        sn_eps=self.sn_eps, dtype=self.dtype, impl=self.attention_impl,
                        name=f"attention_{size}", **kw)(h, train)
            fmap = nn.relu(h).astype(jnp.float32)
            pooled = jnp.mean(fmap, axis=(1, 2))
            return (pooled, fmap) if self.return_map else pooled
        outs = [self.ch * m for m in mult]
        # The published plan: the last block keeps its resolution.
        downs = (tuple(i < len(outs) - 1 for i in range(len(outs))) if self.downsample is None
                 else tuple(self.downsample))
        for i, (c, down) in enumerate(zip(outs, downs, strict=True)):
            block = layers.maybe_remat(DBlock, self.remat, 2)
            h = block(c, down, preactivation=i > 0, sn_eps=self.sn_eps, dtype=self.dtype,
                      conv_shortcut_when_down=self.conv_shortcut == "channels_or_down",
                      name=f"block_{i}", **kw)(h, train)
            size //= 2 if down else 1
            if down and size in attention:
                h = layers.SelfAttention(
                    sn_eps=self.sn_eps, dtype=self.dtype, impl=self.attention_impl,
                    name=f"attention_{size}", **kw)(h, train)
        fmap = nn.relu(h).astype(jnp.float32)
        pooled = jnp.sum(fmap, axis=(1, 2))
        return (pooled, fmap) if self.return_map else pooled


JOINT_PROJECTIONS = ("none", "feature_map", "image")


class GANDiscriminator(nn.Module):
    """BigGAN's discriminator on x alone; class-conditional by projection when num_classes > 0.

    Call: ``D.apply(variables, x, label=None, train=...)`` with images x (N, resolution,
    resolution, C) in [-1, 1] and, when ``num_classes > 0``, int labels (N,). Returns
    ``{"score_x": (N,)}`` float32 logits, so that the losses treat BigGAN as BigBiGAN with only
    the x-unary term. Collections: ``params``, ``spectral`` (see the module docstring); training
    passes need ``mutable=["spectral"]``.

    Fields: resolution, ch (channel multiplier), deep (BigGAN-deep), attention_resolutions
    (None: the published positions), num_classes (0: unconditional), sn_eps, dtype (compute),
    param_dtype (the ``params`` collection's dtype), attention_impl, remat (recompute each
    block in the backward pass), update_state and conv_impl (as ``Generator``'s), downsample
    and conv_shortcut (``DTrunk``'s).
    """

    resolution: int = 128
    ch: int = 96
    deep: bool = False
    attention_resolutions: tuple[int, ...] | None = None
    num_classes: int = 0
    sn_eps: float = 1e-4
    dtype: Any = jnp.float32
    attention_impl: str = "einsum"
    remat: bool = False  # recompute each block's activations in the backward pass
    param_dtype: Any = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None
    downsample: tuple[bool, ...] | None = None
    conv_shortcut: str = "channels"

    @nn.compact
    def __call__(self, x: Array, label: Array | None = None, train: bool = True
                 ) -> dict[str, Array]:
        kw = dict(param_dtype=self.param_dtype, update_state=self.update_state)
        feat = DTrunk(self.resolution, self.ch, self.deep, self.attention_resolutions,
                      self.sn_eps, self.dtype, self.attention_impl, self.remat, name="F",
                      conv_impl=self.conv_impl, downsample=self.downsample,
                      conv_shortcut=self.conv_shortcut, **kw)(x, train)
        score = layers.SNDense(1, sn_eps=self.sn_eps, name="head_x", **kw)(feat, train)[:, 0]
        if self.num_classes > 0:
            if label is None:
                raise ValueError("A projection discriminator (num_classes > 0) needs labels.")
            # The projection embedding is a spectrally normalised (classes × features) matrix.
            table = self.param("embed", nn.initializers.glorot_normal(),
                               (self.num_classes, feat.shape[-1]), self.param_dtype)
            table = layers.SpectralNormParam(eps=self.sn_eps, update_state=self.update_state,
                                             name="embed_sn")(table, train)
            score = score + jnp.sum(table[label] * feat, axis=-1)
        return {"score_x": score.astype(jnp.float32)}


class BigBiGANDiscriminator(nn.Module):
    """The joint discriminator D(x, z) of BigBiGAN with scores s_x, s_z and s_xz.

    F: the BigGAN trunk on x; H: a residual MLP on z; J: a residual MLP on concat[F(x), H(z)]. Each
    score is a linear (spectrally normalised) head (BigBiGAN, Donahue & Simonyan 2019, section 2
    and figure 1). Depth and width of H and J are not given in the paper (default 8 × 2048).

    Call: ``D.apply(variables, x, z, train=...)`` with images x (N, resolution, resolution, C) in
    [-1, 1] and latents z (N, z_dim); returns ``{"score_x", "score_z", "score_xz"}``, each a
    float32 (N,) logit. Collections: ``params``, ``spectral`` (see the module docstring);
    training passes need ``mutable=["spectral"]``.

    Fields: resolution, ch, deep, attention_resolutions, sn_eps, dtype, param_dtype,
    attention_impl, remat, update_state, conv_impl, downsample and conv_shortcut as
    ``GANDiscriminator``'s; mlp_depth and mlp_width (H and J); joint_projection (one of
    ``JOINT_PROJECTIONS``).

    ``joint_projection="feature_map"`` (a departure; default "none", the paper) adds to s_xz a
    bilinear term ⟨P·vec(F_map(x)), H(z)⟩ between F's last feature map before pooling and H(z),
    with P unconstrained (no spectral norm) and zero at initialisation, so D starts as the
    paper's. The concatenation MLP J learns which z goes with which x slowly: it must build the
    interaction out of ReLU gates, and its spectrally normalised, orthogonally initialised layers
    start as a full-strength random function. A bilinear term is the interaction itself (as
    the projection discriminator's ⟨embed(y), F(x)⟩ is for a class), and its gradient at zero is
    the cross-covariance of the two features; the unpooled map keeps the spatial information the
    sum pool discards (docs/fashion_mnist.md, "Why the joint term was silent").
    ``joint_projection="image"`` is the same term on D's input pixels, ⟨P·vec(x), H(z)⟩: it does
    not wait for F to learn features that carry z (P has H × H·W·C entries: a small-image
    option).
    """

    resolution: int = 128
    ch: int = 96
    deep: bool = False
    attention_resolutions: tuple[int, ...] | None = None
    mlp_depth: int = 8
    mlp_width: int = 2048
    sn_eps: float = 1e-4
    dtype: Any = jnp.float32
    attention_impl: str = "einsum"
    remat: bool = False  # recompute each block's activations in the backward pass
    joint_projection: str = "none"  # "none" (the paper) | "feature_map" | "image" (docstring)
    param_dtype: Any = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None
    downsample: tuple[bool, ...] | None = None
    conv_shortcut: str = "channels"

    @nn.compact
    def __call__(self, x: Array, z: Array, train: bool = True) -> dict[str, Array]:
        if x.shape[0] != z.shape[0]:
            raise ValueError(f"x and z batch sizes differ: {x.shape[0]} vs {z.shape[0]}.")
        kw = dict(param_dtype=self.param_dtype, update_state=self.update_state)
        mlp = lambda name: layers.ResidualMLP(  # noqa: E731
            self.mlp_depth, self.mlp_width, spectral_norm=True, sn_eps=self.sn_eps,
            dtype=self.dtype, name=name, **kw)
        head = lambda name: layers.SNDense(1, sn_eps=self.sn_eps, name=name, **kw)  # noqa: E731
        if self.joint_projection not in JOINT_PROJECTIONS:
            raise ValueError(f"joint_projection={self.joint_projection!r}; use one of "
                             f"{JOINT_PROJECTIONS}.")
        on_map = self.joint_projection == "feature_map"
        fx = DTrunk(self.resolution, self.ch, self.deep, self.attention_resolutions,
                    self.sn_eps, self.dtype, self.attention_impl, self.remat,
                    return_map=on_map, name="F", conv_impl=self.conv_impl,
                    downsample=self.downsample, conv_shortcut=self.conv_shortcut, **kw)(x, train)
        if on_map:
            fx, projected = fx
        elif self.joint_projection == "image":
            projected = x
        hz = mlp("H")(z.astype(jnp.float32), train)
        jxz = mlp("J")(jnp.concatenate([fx.astype(self.dtype), hz], axis=-1), train)
        score_xz = head("head_xz")(jxz, train)[:, 0].astype(jnp.float32)
        if self.joint_projection != "none":
            px = layers.SNDense(hz.shape[-1], use_bias=False, spectral_norm=False,
                                kernel_init=nn.initializers.zeros, dtype=self.dtype,
                                param_dtype=self.param_dtype, name="joint_projection")(
                projected.reshape(projected.shape[0], -1), train)
            score_xz = score_xz + jnp.sum(px.astype(jnp.float32) * hz.astype(jnp.float32), -1)
        return {
            "score_x": head("head_x")(fx, train)[:, 0].astype(jnp.float32),
            "score_z": head("head_z")(hz, train)[:, 0].astype(jnp.float32),
            "score_xz": score_xz,
        }
