"""BigBiGAN's encoder E: an image classifier trunk followed by a head that outputs q(z | x).

E maps a real image to the generator's latent space so that the joint discriminator can compare
(x, E(x)) with (G(z), z); its trunk features are also what the paper evaluates as a representation.
The trunks follow the ResNet-v2 and RevNet of "Revisiting self-supervised visual representation
learning" (Kolesnikov et al., 2019), which BigBiGAN reuses; the head is BigBiGAN's: global average
pool -> residual MLP -> linear map to the mean and pre-softplus scale of a diagonal Gaussian.

Every batch norm is a plain (not spectrally normalised) ``layers.BatchNorm``: E is not constrained
by the discriminator's Lipschitz requirements. Convolutions compute in ``dtype``; parameters and
batch-norm statistics stay float32, and all outputs are float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bbg_jax.models import conv, layers

Array = jax.Array
Dtype = Any

# Units per stage. Stage output channels are (256, 512, 1024, 2048) x width for every trunk.
TRUNK_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
    "revnet50": (3, 4, 6, 3),
}
VALID_TRUNKS = tuple(TRUNK_DEPTHS)

# Roots: "imagenet" is the published 7x7/2 conv + 3x3/2 max-pool (the whole network then
# downsamples by 2**5); "small" is the CIFAR-style 3x3/1 conv without a pool (2**3 in all), for
# 28-32 px images, where the ImageNet root would leave an 8x8 map for the first stage.
ROOTS = ("imagenet", "small")
_TOTAL_STRIDE = {"imagenet": 32, "small": 8}

_he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def trunk_feature_dim(width: float) -> int:
    """Width of ``avepool_feat`` (the trunk's last stage) for any of the trunks."""
    return int(2048 * width)


def _conv(features: int, kernel_size: int, strides: int, dtype: Dtype, name: str,
          param_dtype: Dtype = jnp.float32, conv_impl: str | None = None) -> nn.Conv:
    # Explicit (k-1)/2 padding on both sides rather than "SAME": this is the reference's
    # fixed_padding + VALID. With stride 2 on an even size, "SAME" would pad only the end side
    # and shift every output window by one pixel.
    beg = (kernel_size - 1) // 2
    end = kernel_size - 1 - beg
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((beg, end), (beg, end)),
        use_bias=False,
        kernel_init=_he_fan_out,
        dtype=dtype,
        param_dtype=param_dtype,
        conv_general_dilated=conv.for_impl(conv_impl),
        name=name,
    )


def _root(x: Array, root: str, features: int, dtype: Dtype, **conv_kw) -> Array:
    if root == "small":
        return _conv(features, 3, 1, dtype, "root_conv", **conv_kw)(x)
    return _root_pool(_conv(features, 7, 2, dtype, "root_conv", **conv_kw)(x))


def _root_pool(x: Array) -> Array:
    # Zero padding, not -inf, as in the reference (it pads explicitly and then pools VALID). The
    # root conv output is not activated, so at the border a zero can win the max.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _pool_and_double_channels(x: Array) -> Array:
    # RevNet cannot use a strided, channel-changing unit (it would not be invertible), so between
    # stages it halves the resolution by pooling and doubles channels with zeros. The zeros go
    # half before and half after the existing channels so that, after the next split, both
    # halves x1 and x2 carry real features.
    x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    c = x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (c // 2, c - c // 2)))


class BottleneckV2(nn.Module):
    """Pre-activation bottleneck unit (He et al., 2016, "Identity mappings"), Revisiting variant.

    BN-ReLU of the input feeds both the residual branch and, when the shape changes, the 1x1
    projection shortcut. The stride sits on the 3x3 conv because a strided 1x1 conv would skip
    three quarters of the input positions. ``shortcut=False`` returns the residual branch alone:
    that is RevNet's F.
    """

    filters: int
    strides: int = 1
    shortcut: bool = True
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    update_state: bool = True  # see layers.check_state_writable
    conv_impl: str | None = None  # see bbg_jax.models.conv

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        if self.filters % 4:
            raise ValueError(f"BottleneckV2 filters must be divisible by 4, got {self.filters}.")
        bn = functools.partial(
            layers.BatchNorm, momentum=self.bn_momentum, eps=self.bn_eps, groups=self.bn_groups,
            dtype=self.dtype, param_dtype=self.param_dtype, update_state=self.update_state,
        )
        conv_kw = dict(param_dtype=self.param_dtype, conv_impl=self.conv_impl)
        inner = self.filters // 4
        h = nn.relu(bn(name="bn_in")(x, train))
        shortcut = x
        if self.shortcut and (self.strides > 1 or self.filters != x.shape[-1]):
            shortcut = _conv(self.filters, 1, self.strides, self.dtype, "proj", **conv_kw)(h)
        h = _conv(inner, 1, 1, self.dtype, "conv1", **conv_kw)(h)
        h = nn.relu(bn(name="bn1")(h, train))
        h = _conv(inner, 3, self.strides, self.dtype, "conv2", **conv_kw)(h)
        h = nn.relu(bn(name="bn2")(h, train))
        h = _conv(self.filters, 1, 1, self.dtype, "conv3", **conv_kw)(h)
        if not self.shortcut:
            return h
        return h + shortcut.astype(h.dtype)


class ReversibleUnit(nn.Module):
    """RevNet unit (Gomez et al., 2017) in the single-function form used by Revisiting.

    With (x1, x2) the two channel halves of the input, the unit outputs concat(x2, x1 + F(x2)),
    F a shortcut-free ``BottleneckV2`` on channels/2 (bottleneck width channels/8). Swapping the
    halves lets the next unit update the other half. ``inverse`` recovers the input from the output
    exactly (up to rounding) because F is evaluated on x2, which the output carries unchanged; in
    training mode F's batch statistics also depend on x2 alone, so the inverse holds there too.
    """

    channels: int
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    update_state: bool = True  # see layers.check_state_writable
    conv_impl: str | None = None  # see bbg_jax.models.conv

    def setup(self):
        if self.channels % 8:
            raise ValueError(
                f"ReversibleUnit channels must be divisible by 8, got {self.channels}."
            )
        self.residual = BottleneckV2(
            self.channels // 2,
            shortcut=False,
            bn_momentum=self.bn_momentum,
            bn_eps=self.bn_eps,
            bn_groups=self.bn_groups,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            update_state=self.update_state,
            conv_impl=self.conv_impl,
        )

    def _split(self, x: Array) -> tuple[Array, Array]:
        if x.shape[-1] != self.channels:
            raise ValueError(
                f"ReversibleUnit built for {self.channels} channels, got input of shape {x.shape}."
            )
        half = self.channels // 2
        return x[..., :half], x[..., half:]

    def __call__(self, x: Array, train: bool = True) -> Array:
        x1, x2 = self._split(x)
        y1 = x1 + self.residual(x2, train).astype(x1.dtype)
        return jnp.concatenate([x2, y1], axis=-1)

    def inverse(self, y: Array, train: bool = False) -> Array:
        x2, y1 = self._split(y)
        x1 = y1 - self.residual(x2, train).astype(y1.dtype)
        return jnp.concatenate([x1, x2], axis=-1)


class ReversibleStage(nn.Module):
    """``depth`` reversible units (submodules ``unit1`` ...) applied in sequence; see
    ``reversible_backprop`` for a backward pass that stores none of their activations."""

    channels: int
    depth: int
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    remat: bool = False  # recompute each unit's activations in the backward pass
    param_dtype: Dtype = jnp.float32
    update_state: bool = True  # see layers.check_state_writable
    conv_impl: str | None = None  # see bbg_jax.models.conv

    def unit_kwargs(self) -> dict:
        return dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps, bn_groups=self.bn_groups,
                    dtype=self.dtype, param_dtype=self.param_dtype,
                    update_state=self.update_state, conv_impl=self.conv_impl)

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        unit_cls = layers.maybe_remat(ReversibleUnit, self.remat, 2)
        for u in range(self.depth):
            x = unit_cls(self.channels, name=f"unit{u + 1}", **self.unit_kwargs())(x, train)
        return x


def reversible_backprop(stage: ReversibleStage, x: Array, train: bool) -> Array:
    """``stage(x, train)`` whose backward pass stores none of the units' activations, not even
    the tensors between units.

    The backward pass starts from the stage's output and walks the units backwards, recovering
    each unit's input from its output (as ``ReversibleUnit.inverse``) while it differentiates the
    unit's F at that input: activation memory no longer grows with depth, for one more evaluation
    of F per unit (Gomez et al., 2017). Gradients equal ordinary backprop's up to the rounding of
    the reconstruction x1 = (x1 + F(x2)) - F(x2). Batch statistics are unaffected: in training F
    normalises with the batch's own statistics, which the backward pass recomputes from the same
    x2, and the forward pass alone updates the running averages.

    The stage's input is kept as well (one tensor per stage): after ``_pool_and_double_channels``
    the first unit's x2 has channels that are exactly zero, where F's batch norm returns exactly
    its bias and the ReLU sits on its kink at initialisation; a reconstruction off by rounding
    would flip that ReLU's derivative and give those channels gradients that ordinary backprop
    gives as exact zeros.
    """
    if stage.is_initializing():
        return stage(x, train)
    channels, depth, kwargs = stage.channels, stage.depth, stage.unit_kwargs()

    def forward(mdl, x):
        return mdl(x, train)

    def forward_with_residuals(mdl, x):
        # Snapshot before the forward pass updates the running statistics: in evaluation mode F
        # normalises with them, and the backward pass must see the values the forward used.
        variables = mdl.variables
        y = mdl(x, train)
        return y, (x, y, variables)

    def backward(residuals, g):
        x_in, y, variables = residuals
        half = channels // 2
        residual_fn = BottleneckV2(half, shortcut=False, parent=None, **kwargs)
        params_t = {}
        for u in reversed(range(depth)):
            name = f"unit{u + 1}"
            state = {c: v[name]["residual"] for c, v in variables.items() if c != "params"}

            def f(params, x2, state=state):
                out = residual_fn.apply({"params": params, **state}, x2, train,
                                        mutable=list(state) if train else False)
                return out[0] if train else out

            # The unit maps (x1, x2) to (x2, y1) with y1 = x1 + F(x2).
            x2, y1 = (x_in[..., half:] if u == 0 else y[..., :half]), y[..., half:]
            f_x2, f_vjp = jax.vjp(f, variables["params"][name]["residual"], x2)
            x1 = y1 - f_x2.astype(y1.dtype)
            g_x2, g_y1 = g[..., :half], g[..., half:]
            g_params, g_x2_through_f = f_vjp(g_y1.astype(f_x2.dtype))
            params_t[name] = {"residual": g_params}
            g = jnp.concatenate([g_y1, g_x2 + g_x2_through_f.astype(g_x2.dtype)], axis=-1)
            y = jnp.concatenate([x1, x2], axis=-1)
            # Without the barrier XLA may run the whole reconstruction chain first and keep
            # every unit's F residuals alive until the gradient chain reaches them.
            g, y = jax.lax.optimization_barrier((g, y))
        return {"params": params_t}, g

    return nn.custom_vjp(forward, forward_with_residuals, backward)(stage, x)


class ResNetV2(nn.Module):
    """ResNet-v2 trunk: 7x7/2 root conv, 3x3/2 max-pool (or the small root), four bottleneck
    stages, final BN-ReLU."""

    depths: tuple[int, ...]
    width: float = 1
    root: str = "imagenet"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    remat: bool = False  # recompute each unit's activations in the backward pass
    param_dtype: Dtype = jnp.float32
    update_state: bool = True  # see layers.check_state_writable
    conv_impl: str | None = None  # see bbg_jax.models.conv

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        bn_kw = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps,
                     bn_groups=self.bn_groups, dtype=self.dtype, param_dtype=self.param_dtype,
                     update_state=self.update_state, conv_impl=self.conv_impl)
        # v2 puts no BN/ReLU after the root conv: the first unit's pre-activation does it.
        x = _root(x, self.root, int(64 * self.width), self.dtype,
                  param_dtype=self.param_dtype, conv_impl=self.conv_impl)
        filters = int(256 * self.width)
        for s, n_units in enumerate(self.depths):
            for u in range(n_units):
                strides = 2 if (s > 0 and u == 0) else 1
                unit = layers.maybe_remat(BottleneckV2, self.remat, 2)
                x = unit(filters, strides, name=f"stage{s + 1}_unit{u + 1}", **bn_kw)(x, train)
            filters *= 2
        x = layers.BatchNorm(
            momentum=self.bn_momentum, eps=self.bn_eps, groups=self.bn_groups,
            dtype=self.dtype, param_dtype=self.param_dtype, update_state=self.update_state,
            name="final_bn"
        )(x, train)
        return nn.relu(x)


class RevNet(nn.Module):
    """RevNet trunk: 7x7/2 root conv straight to 256 x width channels, 3x3/2 max-pool, four
    stages of reversible units separated by pool-and-double-channels, final BN (no ReLU, as in
    the reference's ``last_relu=False``)."""

    depths: tuple[int, ...]
    width: float = 1
    root: str = "imagenet"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    remat: bool = False  # recompute each unit's activations in the backward pass
    reversible_backprop: bool = False  # see ReversibleStage
    param_dtype: Dtype = jnp.float32
    update_state: bool = True  # see layers.check_state_writable
    conv_impl: str | None = None  # see bbg_jax.models.conv

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        bn_kw = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps,
                     bn_groups=self.bn_groups, dtype=self.dtype, param_dtype=self.param_dtype,
                     update_state=self.update_state, conv_impl=self.conv_impl)
        # Reversible units keep the channel count, so the root conv must already produce the
        # first stage's width.
        channels = int(256 * self.width)
        x = _root(x, self.root, channels, self.dtype, param_dtype=self.param_dtype,
                  conv_impl=self.conv_impl)
        for s, n_units in enumerate(self.depths):
            if s > 0:
                x = _pool_and_double_channels(x)
                channels *= 2
            stage = ReversibleStage(channels, n_units, remat=self.remat,
                                    name=f"stage{s + 1}", **bn_kw)
            x = (reversible_backprop(stage, x, train) if self.reversible_backprop
                 else stage(x, train))
        return layers.BatchNorm(
            momentum=self.bn_momentum, eps=self.bn_eps, groups=self.bn_groups,
            dtype=self.dtype, param_dtype=self.param_dtype, update_state=self.update_state,
            name="final_bn"
        )(x, train)


class Encoder(nn.Module):
    """BigBiGAN encoder: trunk (submodule ``trunk``) + head producing a diagonal Gaussian over z.

    Call: ``E.apply(variables, x, train=..., noise=None)`` with NHWC images x in [-1, 1] whose
    height and width are multiples of 32 (8 with ``root="small"``); returns a dict of float32
    ``avepool_feat`` (N, 2048*width: the trunk's pooled feature, the representation the paper
    evaluates), ``bn_crelu_feat`` (N, 4096*width), ``z_mean``, ``z_stdev`` and ``z_sample``
    (N, z_dim).

    Collections: ``params`` and ``batch_stats`` (every batch norm; E has no spectral norm).
    ``train=True`` normalises with the batch's statistics and writes the running averages, so
    apply it with ``mutable=["batch_stats"]`` and keep the returned state; ``train=False`` uses
    the stored averages (features of single images, a trained checkpoint). A training pass with
    ``batch_stats`` immutable raises ``layers.StateNotMutableError``, unless ``update_state=False``
    (compute with batch statistics, keep the stored ones).

    Stochastic mode samples z = mu + softplus(s) * eps with eps the ``noise`` argument or, if
    absent, drawn from the ``noise`` rng stream. Deterministic mode (``stochastic=False``, the
    deterministic-E ablation): the final linear layer outputs only z_dim values, z = z_mean, and
    ``z_stdev`` is zeros (a point mass); no rng is needed.

    Fields: trunk (``VALID_TRUNKS``), width (channel multiplier), z_dim, mlp_depth and mlp_width
    (the head's residual MLP), stochastic, bn_momentum, bn_eps, bn_groups, dtype (compute),
    remat, stage_depths, root (``ROOTS``), reversible_backprop (RevNet), param_dtype (the
    ``params`` collection's dtype), update_state (above) and conv_impl (``conv.CONV_IMPLS``;
    None defers to the ``conv.weight_grad`` context, "xla" outside it).
    """

    trunk: str = "resnet50"
    width: float = 1  # multiplier; fractional (0.5) for the "Small E" ablation
    z_dim: int = 120
    mlp_depth: int = 4
    mlp_width: int = 4096
    stochastic: bool = True
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    remat: bool = False  # recompute each unit's activations in the backward pass
    # Units per stage, overriding the trunk's standard depths: for small CPU experiments and
    # tests (e.g. (1, 1, 1, 1)); None keeps ResNet/RevNet-50/101/152 as published.
    stage_depths: tuple[int, ...] | None = None
    root: str = "imagenet"  # see ROOTS
    # RevNet only: backward pass by reconstruction instead of stored activations.
    reversible_backprop: bool = False
    param_dtype: Dtype = jnp.float32
    update_state: bool = True  # see layers.check_state_writable
    conv_impl: str | None = None  # see bbg_jax.models.conv

    def _check_config(self) -> None:
        if self.trunk not in TRUNK_DEPTHS:
            raise ValueError(
                f"Unknown encoder trunk {self.trunk!r}; valid trunks: {', '.join(VALID_TRUNKS)}."
            )
        if self.root not in ROOTS:
            raise ValueError(f"Unknown encoder root {self.root!r}; valid roots: "
                             f"{', '.join(ROOTS)}.")
        # Fractional widths (0.5: the paper's "Small E (32)") must give whole channel counts.
        if not (self.width > 0 and float(64 * self.width).is_integer()):
            raise ValueError(f"Encoder width must make 64 x width a positive integer, "
                             f"got {self.width!r}.")
        for field in ("z_dim", "mlp_depth", "mlp_width"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Encoder {field} must be a positive integer, got {value!r}.")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"Encoder bn_momentum must be in [0, 1), got {self.bn_momentum}.")
        if self.bn_eps <= 0:
            raise ValueError(f"Encoder bn_eps must be positive, got {self.bn_eps}.")

    def _check_input(self, x: Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"Encoder expects NHWC images, got shape {x.shape}.")
        _, h, w, _ = x.shape
        stride = _TOTAL_STRIDE[self.root]
        if h % stride or w % stride:
            raise ValueError(
                f"Encoder input height and width must be multiples of {stride} with the "
                f"{self.root!r} root, got {h}x{w}."
            )

    @nn.compact
    def __call__(
        self, x: Array, train: bool = True, noise: Array | None = None
    ) -> dict[str, Array]:
        self._check_config()
        self._check_input(x)
        reversible = self.trunk.startswith("revnet")
        if self.reversible_backprop and not reversible:
            raise ValueError(f"Encoder reversible_backprop needs a RevNet trunk, got "
                             f"{self.trunk!r}: set trunk='revnet50' or reversible_backprop=False.")
        trunk_cls = RevNet if reversible else ResNetV2
        trunk_kw = {"reversible_backprop": self.reversible_backprop} if reversible else {}
        depths = TRUNK_DEPTHS[self.trunk] if self.stage_depths is None else self.stage_depths
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"Encoder stage_depths needs 4 positive counts, got {depths}.")
        h = trunk_cls(
            tuple(depths),
            width=self.width,
            bn_momentum=self.bn_momentum,
            bn_eps=self.bn_eps,
            bn_groups=self.bn_groups,
            dtype=self.dtype,
            remat=self.remat,
            root=self.root,
            param_dtype=self.param_dtype,
            update_state=self.update_state,
            conv_impl=self.conv_impl,
            name="trunk",
            **trunk_kw,
        )(x, train)
        # Pool in float32: a bfloat16 mean over 64 (or more) positions loses precision for nothing.
        avepool_feat = jnp.mean(h.astype(jnp.float32), axis=(1, 2))

        # The linear-evaluation feature: normalised without learned parameters, then split into
        # positive and negative parts so a linear classifier sees both signs through one ReLU.
        normed = layers.BatchNorm(
            use_scale=False,
            use_bias=False,
            momentum=self.bn_momentum,
            eps=self.bn_eps,
            groups=self.bn_groups,
            dtype=jnp.float32,
            update_state=self.update_state,
            name="feat_bn",
        )(avepool_feat, train)
        bn_crelu_feat = jnp.concatenate([nn.relu(normed), nn.relu(-normed)], axis=-1)

        g = layers.ResidualMLP(
            depth=self.mlp_depth,
            width=self.mlp_width,
            spectral_norm=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head_mlp",
        )(avepool_feat, train)
        n_out = 2 * self.z_dim if self.stochastic else self.z_dim
        out = layers.SNDense(n_out, spectral_norm=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, name="head_out")(
            g, train
        ).astype(jnp.float32)

        if not self.stochastic:
            z_mean = out
            return dict(
                avepool_feat=avepool_feat,
                bn_crelu_feat=bn_crelu_feat,
                z_mean=z_mean,
                z_stdev=jnp.zeros_like(z_mean),
                z_sample=z_mean,
            )

        z_mean, s = out[:, : self.z_dim], out[:, self.z_dim :]
        z_stdev = jax.nn.softplus(s)
        if noise is None:
            noise = jax.random.normal(self.make_rng("noise"), z_mean.shape, jnp.float32)
        elif noise.shape != z_mean.shape:
            raise ValueError(
                f"Encoder noise must have shape {z_mean.shape} (batch, z_dim), got {noise.shape}."
            )
        z_sample = z_mean + z_stdev * noise.astype(jnp.float32)
        return dict(
            avepool_feat=avepool_feat,
            bn_crelu_feat=bn_crelu_feat,
            z_mean=z_mean,
            z_stdev=z_stdev,
            z_sample=z_sample,
        )
