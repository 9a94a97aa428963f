"""ResNet-v2 trunk (He et al., 2016, "Identity mappings in deep residual networks") as revisited
for self-supervised representations (Kolesnikov et al., 2019), and the pieces RevNet shares with
it: the fixed-padding convolution, the root and the pre-activation bottleneck unit.

Every batch norm is a plain (not spectrally normalised) ``layers.BatchNorm``: the encoder is not
constrained by the discriminator's Lipschitz requirements. Convolutions compute in ``dtype``;
parameters and batch-norm statistics stay float32.
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

_he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def fixed_padding_conv(features: int, kernel_size: int, strides: int, dtype: Dtype, name: str,
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


def root_block(x: Array, root: str, features: int, dtype: Dtype, **conv_kw) -> Array:
    """The trunk's first layer; ``root`` is one of ``encoder.ROOTS``."""
    if root == "small":
        return fixed_padding_conv(features, 3, 1, dtype, "root_conv", **conv_kw)(x)
    return _root_pool(fixed_padding_conv(features, 7, 2, dtype, "root_conv", **conv_kw)(x))


def _root_pool(x: Array) -> Array:
    # Zero padding, not -inf, as in the reference (it pads explicitly and then pools VALID). The
    # root conv output is not activated, so at the border a zero can win the max.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


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
            shortcut = fixed_padding_conv(self.filters, 1, self.strides, self.dtype, "proj",
                                          **conv_kw)(h)
        h = fixed_padding_conv(inner, 1, 1, self.dtype, "conv1", **conv_kw)(h)
        h = nn.relu(bn(name="bn1")(h, train))
        h = fixed_padding_conv(inner, 3, self.strides, self.dtype, "conv2", **conv_kw)(h)
        h = nn.relu(bn(name="bn2")(h, train))
        h = fixed_padding_conv(self.filters, 1, 1, self.dtype, "conv3", **conv_kw)(h)
        if not self.shortcut:
            return h
        return h + shortcut.astype(h.dtype)


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
        x = root_block(x, self.root, int(64 * self.width), self.dtype,
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
