"""2-D convolution with selectable CPU implementations of its forward pass and gradients.

XLA:CPU computes a convolution's weight gradient slowly next to its forward pass and input
gradient. Written as k×k shifted einsums (one [C_in, N·H·W] × [N·H·W, C_out] matmul per kernel
tap, which is what im2col-based CPU libraries do) the gradient is several times faster and matches
XLA's to float32 rounding. For wide 3×3 stride-1 layers, Winograd F(4×4, 3×3)
(``bbg_jax.models.winograd``) does the forward pass, the input gradient and the weight gradient
with 36 products per 16 outputs instead of 144. Measured timings are in docs/modules.md;
tests/models/test_conv.py checks each implementation against XLA.

Which implementation a convolution uses:
  "xla"       XLA's convolution and its gradients (the accelerator path);
  "einsum"    XLA's forward pass and input gradient, the weight gradient as shifted einsums;
  "winograd"  as "einsum", but float32 3×3 stride-1 layers that ``winograd.applies`` to (at
              least 256 channels in and out) run all three through Winograd (≈2e-5 relative to
              XLA's direct convolution);
  "auto"      "winograd" on CPU, "xla" elsewhere, so accelerator code paths are unchanged.

A module's ``conv_impl`` field names one of these; its default ``None`` defers to the
``weight_grad(impl)`` context, which the train step enters (``train.conv_weight_grad``) and whose
default outside any context is "xla". "einsum" and "winograd" are ``jax.custom_vjp`` functions:
reverse mode only, so ``jax.jvp``/``jax.jacfwd`` through them raise an error naming
``conv_impl``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from bbg_jax.models import winograd

IMPLS = ("xla", "einsum", "winograd", "auto")
CONV_IMPLS = (None, *IMPLS)  # a module's conv_impl: None defers to the weight_grad context
_NHWC = ("NHWC", "HWIO", "NHWC")
_WEIGHT_GRAD: contextvars.ContextVar[str] = contextvars.ContextVar("conv_weight_grad",
                                                                   default="xla")


def resolve(impl: str, platform: str) -> str:
    """"auto" -> "winograd" on CPU, "xla" on accelerators; checks the name."""
    if impl not in IMPLS:
        raise ValueError(f"train.conv_weight_grad={impl!r}; use one of {IMPLS}.")
    if impl == "auto":
        return "winograd" if platform == "cpu" else "xla"
    return impl


@contextlib.contextmanager
def weight_grad(impl: str) -> Iterator[None]:
    """Convolutions traced inside use ``impl`` ("xla", "einsum" or "winograd")."""
    if impl not in ("xla", "einsum", "winograd"):
        raise ValueError("weight_grad takes 'xla', 'einsum' or 'winograd' (resolve 'auto' "
                         f"first): {impl!r}")
    token = _WEIGHT_GRAD.set(impl)
    try:
        yield
    finally:
        _WEIGHT_GRAD.reset(token)


def _explicit_padding(x_shape, w_shape, strides, padding) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _xla_conv(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def einsum_weight_grad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                       strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
                       ) -> jax.Array:
    """dL/dW of an NHWC/HWIO convolution as one matmul per kernel tap."""
    kh, kw = kernel_hw
    sh, sw = strides
    ho, wo = dy.shape[1:3]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    dy2 = dy.reshape(-1, dy.shape[-1])
    taps = []
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(xp, (0, i, j, 0),
                               (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1,
                                xp.shape[3]), (1, sh, sw, 1)).reshape(-1, xp.shape[3])
            # Copy the window out before the matmul: fused into the dot, the strided window
            # read made each tap's [C_in, N·H·W] × [N·H·W, C_out] product 1.5-2x slower on
            # XLA:CPU (docs/modules.md).
            window = lax.optimization_barrier(window)
            taps.append(window.T @ dy2)
    return jnp.stack(taps).reshape(kh, kw, x.shape[-1], dy.shape[-1])


def _use_winograd(winograd_ok, x, w, strides, padding) -> bool:
    # float32 only: in bfloat16 the transforms' coefficients (up to 8 and 1/24) would cost
    # most of the mantissa.
    return (winograd_ok and x.dtype == w.dtype == jnp.float32
            and winograd.applies(x.shape, w.shape, strides, padding))


def _winograd_or_xla(x, w, strides, padding, winograd_ok):
    if _use_winograd(winograd_ok, x, w, strides, padding):
        return winograd.conv3x3(x, w)
    return _xla_conv(x, w, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_einsum_grad(x, w, strides, padding, winograd_ok):
    return _winograd_or_xla(x, w, strides, padding, winograd_ok)


def _fwd(x, w, strides, padding, winograd_ok):
    return _winograd_or_xla(x, w, strides, padding, winograd_ok), (x, w)


def _bwd(strides, padding, winograd_ok, residuals, dy):
    x, w = residuals
    if _use_winograd(winograd_ok, x, w, strides, padding):
        # A stride-1 "same" 3×3 convolution's input gradient is the same convolution of dy
        # with the kernel turned 180° and its channel axes swapped.
        dx = winograd.conv3x3(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
        return dx, winograd.weight_grad3x3(x, dy).astype(w.dtype)
    dx = jax.vjp(lambda x_: _xla_conv(x_, w, strides, padding), x)[1](dy)[0]
    dw = einsum_weight_grad(x, dy, w.shape[:2], strides, padding).astype(w.dtype)
    return dx, dw


_conv_einsum_grad.defvjp(_fwd, _bwd)


def resolve_module_impl(conv_impl: str | None) -> str:
    """A module's ``conv_impl`` as "xla", "einsum" or "winograd" (None: the context's)."""
    if conv_impl is None:
        return _WEIGHT_GRAD.get()
    if conv_impl not in IMPLS:
        raise ValueError(f"conv_impl={conv_impl!r}; use one of {CONV_IMPLS}.")
    return resolve(conv_impl, jax.default_backend())


def conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
           padding: str | Sequence[tuple[int, int]] = "SAME", impl: str | None = None
           ) -> jax.Array:
    """NHWC × HWIO convolution computed by ``impl`` (see IMPLS); None: the ``weight_grad``
    context's choice, read when this is traced."""
    strides = tuple(int(s) for s in strides)
    pads = _explicit_padding(x.shape, w.shape, strides, padding)
    chosen = resolve_module_impl(impl)
    if chosen == "xla":
        return _xla_conv(x, w, strides, pads)
    try:
        return _conv_einsum_grad(x, w, strides, pads, chosen == "winograd")
    except TypeError as e:
        # jax raises this at the call under jax.jvp/jacfwd; say which knob picks the conv.
        if "forward-mode" not in str(e):
            raise
        source = (f"conv_impl={impl!r}" if impl is not None else
                  f"conv_impl=None, which took {chosen!r} from the weight_grad context")
        raise TypeError(
            f"Forward-mode autodiff (jax.jvp, jax.jacfwd) cannot go through the {chosen!r} "
            f"convolution ({source}): it is a jax.custom_vjp, reverse mode only. Build the "
            "module with conv_impl='xla' for forward-mode derivatives.") from e


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         *, impl: str | None = None):
    """Drop-in for ``lax.conv_general_dilated`` (flax ``nn.Conv(conv_general_dilated=...)``):
    plain NHWC/HWIO convolutions go through ``conv2d`` with ``impl``, anything else to lax
    unchanged. ``for_impl`` binds ``impl``."""
    plain = (all(d == 1 for d in (lhs_dilation or (1,))) and all(
        d == 1 for d in (rhs_dilation or (1,))) and feature_group_count == 1
        and batch_group_count == 1 and precision is None and preferred_element_type is None
        and lhs.ndim == 4 and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    if plain:
        return conv2d(lhs, rhs, window_strides, padding, impl)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)


@functools.cache
def for_impl(impl: str | None):
    """``conv_general_dilated`` with ``impl`` bound, one object per impl (for ``nn.Conv``)."""
    return functools.partial(conv_general_dilated, impl=impl)
