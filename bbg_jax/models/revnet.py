"""RevNet trunk (Gomez et al., 2017, "The reversible residual network") as revisited for
self-supervised representations (Kolesnikov et al., 2019): reversible units, whose input can be
recomputed from their output, and a backward pass that uses this instead of stored activations.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bbg_jax.models import layers
from bbg_jax.models.resnet import BottleneckV2, root_block

Array = jax.Array
Dtype = Any


def _pool_and_double_channels(x: Array) -> Array:
    # RevNet cannot use a strided, channel-changing unit (it would not be invertible), so between
    # stages it halves the resolution by pooling and doubles channels with zeros. The zeros go
    # half before and half after the existing channels so that, after the next split, both
    # halves x1 and x2 carry real features.
    x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    c = x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (c // 2, c - c // 2)))


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
        x = root_block(x, self.root, channels, self.dtype, param_dtype=self.param_dtype,
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
