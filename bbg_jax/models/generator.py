"""BigGAN and BigGAN-deep generators (Brock et al., 2018), with BigBiGAN's single-label mode.

Channel plans and attention positions follow the published architecture tables (BigGAN appendix B)
as encoded in compare_gan; at 128 px with ch=96 and a 1000-class embedding this generator has
exactly compare_gan's 70,433,988 parameters.

Conditioning modes (``conditioning``):

* ``"single"`` -- BigBiGAN / unconditional: one learned ``embed_dim``-vector shared by all samples
  (a class embedding with a single constant label).
* ``"class"``  -- class-conditional BigGAN: a ``num_classes × embed_dim`` embedding table.
* ``"none"``   -- no embedding; each block is conditioned on its z chunk alone.

Deviations from compare_gan, each for a stated reason:

* The final image is tanh in [-1, 1] (compare_gan rescales to [0, 1]); the data pipeline works in
  [-1, 1] as the paper does.
* ``cbn_map_init="zeros"`` (not the default) zero-initialises the conditional BN maps, an
  earlier departure kept for comparison (see ``layers.ConditionalBatchNorm``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bbg_jax.configs import check_bool, config_error
from bbg_jax.models import layers

Array = jax.Array

# Channel multipliers of ch per stage (block inputs are [:-1], outputs [1:]), per resolution.
BIGGAN_G_CHANNELS = {
    32: (4, 4, 4, 4),
    64: (16, 16, 8, 4, 2),
    128: (16, 16, 8, 4, 2, 1),
    256: (16, 16, 8, 8, 4, 2, 1),
    512: (16, 16, 8, 8, 4, 2, 1, 1),
}
BIGGAN_DEEP_G_CHANNELS = {
    32: 8 * (4,),
    64: 4 * (16,) + 2 * (8,) + (4, 4, 2),
    128: 4 * (16,) + 2 * (8,) + (4, 4, 2, 2, 1),
    256: 4 * (16,) + 4 * (8,) + (4, 4, 2, 2, 1),
    512: 4 * (16,) + 4 * (8,) + (4, 4, 2, 2, 1, 1, 1),
}
# Resolutions (of the block output) followed by self-attention. 128/256/512 are the paper's;
# 64 follows BigGAN-PyTorch's ImageNet-64 scripts; 32 has none (BigGAN-PyTorch's CIFAR setting).
DEFAULT_ATTENTION = {32: (), 64: (32,), 128: (64,), 256: (128,), 512: (64,)}
# z sizes for which hierarchical chunks are equal (z = 20 × (blocks + 1) for 128..512).
DEFAULT_Z_DIM = {32: 120, 64: 120, 128: 120, 256: 140, 512: 160}


SINGLE_EMBED_INITS = ("orthogonal", "normal")


def check_latent_plan(z_dim: int, hierarchical_z: bool, z_in_blocks: Any, conditioning: str,
                      deep: bool, resolution: int, prefix: str, z_dim_field: str) -> None:
    """How z reaches G's blocks, for ``Generator`` (``prefix`` "Generator.") and a config
    (``prefix`` "model.generator.", ``z_dim_field`` "model.z_dim"): a ``ConfigError``."""
    check_bool(prefix + "z_in_blocks", z_in_blocks)
    if deep:  # BigGAN-deep feeds the whole z, unchunked, to every block
        return
    if not z_in_blocks and (hierarchical_z or conditioning == "none"):
        raise config_error(prefix + "z_in_blocks", z_in_blocks, "True",
                           "without it the blocks see the embedding alone, which needs "
                           "hierarchical_z=False and conditioning 'class' or 'single'")
    chunks = len(BIGGAN_G_CHANNELS[resolution])  # one for the first layer, one per block
    if hierarchical_z and z_dim % chunks:
        raise config_error(z_dim_field, z_dim, f"a multiple of {chunks}",
                           f"hierarchical_z splits z into {chunks} equal chunks at {resolution}"
                           f" px (z_dim={DEFAULT_Z_DIM[resolution]} is one); or set "
                           f"{prefix}hierarchical_z=False")


def _single_embedding_init(name: str):
    """The single label's embedding: a row of an orthogonal matrix (unit norm, as the references'
    one-hot label through an orthogonally initialised linear map or embedding table) or N(0, 1)
    per entry (norm ≈ √embed_dim, which drowns the z chunks in every CBN's conditioning)."""
    if name == "orthogonal":
        return lambda key, shape, dtype: nn.initializers.orthogonal()(key, (1, *shape), dtype)[0]
    if name == "normal":
        return nn.initializers.normal(1.0)
    raise ValueError(f"single_embed_init={name!r}; use one of {SINGLE_EMBED_INITS}.")


def upsample(x: Array) -> Array:
    """2× nearest-neighbour upsampling (NHWC)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class GBlock(nn.Module):
    """BigGAN up-block: CBN→ReLU→up→conv3→CBN→ReLU→conv3, shortcut up→conv1."""

    out_channels: int
    bn_eps: float
    bn_momentum: float
    sn_eps: float
    dtype: Any
    bn_groups: int = 1
    cbn_map_init: str = "orthogonal"
    param_dtype: Any = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: Array, cond: Array, train: bool) -> Array:
        cbn = lambda name: layers.ConditionalBatchNorm(  # noqa: E731
            self.bn_momentum, self.bn_eps, groups=self.bn_groups, map_init=self.cbn_map_init,
            sn_eps=self.sn_eps, dtype=self.dtype, param_dtype=self.param_dtype,
            update_state=self.update_state, name=name)
        conv = lambda k, name: layers.SNConv(  # noqa: E731
            self.out_channels, kernel_size=k, sn_eps=self.sn_eps, dtype=self.dtype,
            param_dtype=self.param_dtype, update_state=self.update_state,
            conv_impl=self.conv_impl, name=name)
        h = nn.relu(cbn("bn1")(x, cond, train))
        h = conv(3, "conv1")(upsample(h), train)
        h = nn.relu(cbn("bn2")(h, cond, train))
        h = conv(3, "conv2")(h, train)
        return h + conv(1, "conv_shortcut")(upsample(x), train)


class GDeepBlock(nn.Module):
    """BigGAN-deep block: bottleneck (1×1, 3×3, 3×3, 1×1), each preceded by CBN→ReLU.

    The skip connection keeps identity: it drops surplus channels and upsamples when needed.
    """

    out_channels: int
    upsample: bool
    bn_eps: float
    bn_momentum: float
    sn_eps: float
    dtype: Any
    bn_groups: int = 1
    cbn_map_init: str = "orthogonal"
    param_dtype: Any = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x: Array, cond: Array, train: bool) -> Array:
        in_channels = x.shape[-1]
        if in_channels < self.out_channels:
            raise ValueError("A BigGAN-deep G block cannot increase the channel count.")
        mid = max(in_channels, self.out_channels) // 4
        cbn = lambda name: layers.ConditionalBatchNorm(  # noqa: E731
            self.bn_momentum, self.bn_eps, groups=self.bn_groups, map_init=self.cbn_map_init,
            sn_eps=self.sn_eps, dtype=self.dtype, param_dtype=self.param_dtype,
            update_state=self.update_state, name=name)
        conv = lambda f, k, name: layers.SNConv(  # noqa: E731
            f, kernel_size=k, sn_eps=self.sn_eps, dtype=self.dtype, param_dtype=self.param_dtype,
            update_state=self.update_state, conv_impl=self.conv_impl, name=name)
        h = conv(mid, 1, "conv1")(nn.relu(cbn("bn1")(x, cond, train)), train)
        h = nn.relu(cbn("bn2")(h, cond, train))
        if self.upsample:
            h = upsample(h)
        h = conv(mid, 3, "conv2")(h, train)
        h = conv(mid, 3, "conv3")(nn.relu(cbn("bn3")(h, cond, train)), train)
        h = conv(self.out_channels, 1, "conv4")(nn.relu(cbn("bn4")(h, cond, train)), train)
        skip = x[..., : self.out_channels]
        if self.upsample:
            skip = upsample(skip)
        return h + skip


class Generator(nn.Module):
    """BigGAN generator G(z, label) → image in [-1, 1].

    Call: ``G.apply(variables, z, label=None, train=...)`` with ``z`` (N, z_dim) and ``label``
    (N,) int32 class ids (only for ``conditioning="class"``); returns float32 images
    (N, resolution, resolution, out_channels) in [-1, 1] (tanh).

    Collections: ``params``; ``batch_stats`` (conditional BN and the last BN); ``spectral``
    (power-iteration vectors of every spectrally normalised weight). ``train=True`` normalises
    with the batch's statistics and runs one power iteration, and writes both, so apply it with
    ``mutable=["batch_stats", "spectral"]`` and keep the returned state; ``train=False`` reads
    the stored state and needs nothing mutable. A training pass with an immutable collection
    raises ``layers.StateNotMutableError``; ``update_state=False`` makes such a pass compute
    with the batch's statistics and keep the stored state (for a pass whose state you discard).

    Args (fields):
      resolution: output size, one of 32, 64, 128, 256, 512.
      ch: channel multiplier (96 for BigGAN, 128 for BigGAN-deep).
      z_dim: latent size; with ``hierarchical_z`` it must split into (blocks + 1) equal chunks.
      conditioning: "single" (BigBiGAN), "class" (BigGAN) or "none".
      num_classes: size of the class embedding table when conditioning == "class".
      embed_dim: size of the label embedding (128 in BigGAN).
      hierarchical_z: split z into chunks: chunk 0 feeds the first linear layer, chunk i the
        i-th block's conditional BN (with the embedding). BigGAN-deep ignores it (z unchunked).
      z_in_blocks: without hierarchical z, whether the whole z also conditions every block's
        BN beside the embedding (compare_gan) or the blocks see the embedding alone (False:
        BigGAN-PyTorch without ``--hier``, whose z reaches the first linear layer only).
      attention_resolutions: output resolutions of the blocks followed by self-attention
        (None = the published positions for this resolution).
      deep: BigGAN-deep architecture.
      out_channels: image channels (3, or 1 for grayscale data).
      bn_eps, bn_momentum: batch norm's epsilon and running-average momentum.
      sn_eps: spectral norm's epsilon.
      dtype: compute dtype (float32 or bfloat16); the output is float32.
      param_dtype: dtype of the ``params`` collection (float32); statistics stay float32.
      attention_impl: "einsum" or "dot_product" (``layers.SelfAttention``).
      remat: recompute each block's activations in the backward pass.
      bn_groups: grouped batch norm over consecutive batch slices (1 = the whole batch).
      cbn_map_init: how the conditional BN maps W_γ, W_β start: "orthogonal" (spectrally
        normalised, as BigGAN-PyTorch and compare_gan) or "zeros" (see
        ``layers.ConditionalBatchNorm``).
      single_embed_init: the single label's embedding init, "orthogonal" or "normal".
      update_state: see above.
      conv_impl: convolution implementation (``conv.CONV_IMPLS``); None defers to the
        ``conv.weight_grad`` context ("xla" outside it). Use "xla" for ``jax.jvp``.
    """

    resolution: int = 128
    ch: int = 96
    z_dim: int = 120
    conditioning: str = "single"
    num_classes: int = 1000
    embed_dim: int = 128
    hierarchical_z: bool = True
    z_in_blocks: bool = True
    attention_resolutions: tuple[int, ...] | None = None
    deep: bool = False
    out_channels: int = 3
    bn_eps: float = 1e-4
    bn_momentum: float = 0.99
    sn_eps: float = 1e-4
    dtype: Any = jnp.float32
    attention_impl: str = "einsum"
    remat: bool = False  # recompute each block's activations in the backward pass
    bn_groups: int = 1  # grouped batch norm (1 = over the whole global batch)
    cbn_map_init: str = "orthogonal"
    single_embed_init: str = "orthogonal"
    param_dtype: Any = jnp.float32
    update_state: bool = True
    conv_impl: str | None = None

    def channel_plan(self) -> tuple[list[int], list[int]]:
        plans = BIGGAN_DEEP_G_CHANNELS if self.deep else BIGGAN_G_CHANNELS
        if self.resolution not in plans:
            raise ValueError(
                f"Unsupported generator resolution {self.resolution}; "
                f"choose one of {sorted(plans)}."
            )
        mult = plans[self.resolution]
        return [self.ch * m for m in mult[:-1]], [self.ch * m for m in mult[1:]]

    def _embedding(self, label: Array | None, batch: int) -> Array | None:
        if self.conditioning == "single":
            e = self.param("embed", _single_embedding_init(self.single_embed_init),
                           (self.embed_dim,), self.param_dtype)
            return jnp.broadcast_to(e, (batch, self.embed_dim))
        if self.conditioning == "class":
            if label is None:
                raise ValueError("conditioning='class' needs integer labels: G(z, label).")
            table = nn.Embed(self.num_classes, self.embed_dim,
                             embedding_init=nn.initializers.orthogonal(),
                             param_dtype=self.param_dtype, name="embed")
            return table(label)
        if self.conditioning == "none":
            return None
        raise ValueError(
            f"Unknown conditioning {self.conditioning!r}; use 'single', 'class' or 'none'."
        )

    @nn.compact
    def __call__(self, z: Array, label: Array | None = None, train: bool = True) -> Array:
        if z.ndim != 2 or z.shape[-1] != self.z_dim:
            raise ValueError(f"Expected z of shape (batch, {self.z_dim}), got {z.shape}.")
        ins, outs = self.channel_plan()
        check_latent_plan(self.z_dim, self.hierarchical_z, self.z_in_blocks, self.conditioning,
                          self.deep, self.resolution, "Generator.", "Generator.z_dim")
        attention = (DEFAULT_ATTENTION[self.resolution] if self.attention_resolutions is None
                     else tuple(self.attention_resolutions))
        n = z.shape[0]
        z = z.astype(jnp.float32)
        e = self._embedding(label, n)
        cat = lambda *t: jnp.concatenate([a for a in t if a is not None], axis=-1)  # noqa: E731

        if self.deep:
            z0 = cat(z, e)
            conds = [z0] * len(ins)
        elif self.hierarchical_z:
            chunks = jnp.split(z, len(ins) + 1, axis=-1)
            z0, conds = chunks[0], [cat(c, e) for c in chunks[1:]]
        elif self.z_in_blocks:
            z0, conds = z, [cat(z, e)] * len(ins)
        else:
            z0, conds = z, [e] * len(ins)

        kw = dict(param_dtype=self.param_dtype, update_state=self.update_state)
        block_kw = dict(bn_groups=self.bn_groups, cbn_map_init=self.cbn_map_init,
                        conv_impl=self.conv_impl, **kw)
        h = layers.SNDense(4 * 4 * ins[0], sn_eps=self.sn_eps, dtype=self.dtype,
                           name="linear", **kw)(z0, train)
        h = h.reshape(n, 4, 4, ins[0])
        size = 4
        for i, (c_out, cond) in enumerate(zip(outs, conds, strict=True)):
            if self.deep:
                up = i % 2 == 1
                block = layers.maybe_remat(GDeepBlock, self.remat, 3)(
                    c_out, up, self.bn_eps, self.bn_momentum, self.sn_eps, self.dtype,
                    name=f"block_{i}", **block_kw)
            else:
                up = True
                block = layers.maybe_remat(GBlock, self.remat, 3)(
                    c_out, self.bn_eps, self.bn_momentum, self.sn_eps, self.dtype,
                    name=f"block_{i}", **block_kw)
            h = block(h, cond, train)
            size *= 2 if up else 1
            # Attention follows the (up-)block that reaches an attention resolution.
            if size in attention and up:
                h = layers.SelfAttention(
                    sn_eps=self.sn_eps, dtype=self.dtype, impl=self.attention_impl,
                    conv_impl=self.conv_impl, name=f"attention_{size}", **kw)(h, train)
        if size != self.resolution:
            raise AssertionError(f"channel plan reached {size}, not {self.resolution}")
        h = layers.BatchNorm(momentum=self.bn_momentum, eps=self.bn_eps, groups=self.bn_groups,
                             dtype=self.dtype, name="bn_out", **kw)(h, train)
        h = layers.SNConv(self.out_channels, kernel_size=3, sn_eps=self.sn_eps, dtype=self.dtype,
                          conv_impl=self.conv_impl, name="conv_out", **kw)(nn.relu(h), train)
        return jnp.tanh(h.astype(jnp.float32))
