"""The CPU convolution paths (einsum weight gradient, Winograd) equal XLA's convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bbg_jax.models import conv, winograd


def _grads(impl, x, w, strides, padding):
    def loss(x, w):
        with conv.weight_grad(impl):
            y = conv.conv2d(x, w, strides, padding)
        return jnp.sum(jnp.sin(y))  # a non-trivial cotangent

    return jax.grad(loss, argnums=(0, 1))(x, w)


@pytest.mark.parametrize("k,stride,padding", [
    (3, 1, "SAME"), (1, 1, "SAME"), (3, 2, ((1, 1), (1, 1))), (7, 2, ((3, 3), (3, 3))),
    (1, 2, ((0, 0), (0, 0))), (3, 2, "SAME"),
])
def test_weight_gradient_matches_xla(k, stride, padding):
    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.normal(size=(4, 10, 10, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 5, 6)) / k, jnp.float32)
    ref_dx, ref_dw = _grads("xla", x, w, (stride, stride), padding)
    dx, dw = _grads("einsum", x, w, (stride, stride), padding)
    np.testing.assert_array_equal(dx, ref_dx)  # the input gradient is XLA's in both modes
    rel = float(jnp.linalg.norm(dw - ref_dw) / jnp.linalg.norm(ref_dw))
    assert rel < 1e-5, rel


def _pads(x_shape, w_shape, stride, padding):
    if isinstance(padding, str):
        return jax.lax.padtype_to_pads(x_shape[1:3], w_shape[:2], (stride, stride), padding)
    return padding


def _numpy_conv(x, w, stride, pads):
    """The NHWC/HWIO convolution by its definition, in float64: y[n, i, j, o] =
    sum over (a, b, c) of xpad[n, s·i + a, s·j + b, c] · w[a, b, c, o]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp = np.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    kh, kw = w.shape[:2]
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for a in range(kh):
        for b in range(kw):
            window = xp[:, a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride]
            y += window @ w[a, b]
    return y


def _numpy_weight_grad(x, dy, kernel_hw, stride, pads):
    """dL/dw[a, b, c, o] = sum over (n, i, j) of xpad[n, s·i + a, s·j + b, c] · dy[n, i, j, o]."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    xp = np.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    ho, wo = dy.shape[1:3]
    dw = np.zeros((*kernel_hw, x.shape[3], dy.shape[3]))
    for a in range(kernel_hw[0]):
        for b in range(kernel_hw[1]):
            window = xp[:, a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride]
            dw[a, b] = np.einsum("nijc,nijo->co", window, dy)
    return dw


@pytest.mark.parametrize("k,stride,padding", [
    (3, 1, "SAME"), (3, 2, ((1, 1), (1, 1))), (1, 2, ((0, 0), (0, 0))), (4, 2, ((1, 2), (2, 1))),
])
def test_einsum_path_against_the_definition(k, stride, padding):
    """The "einsum" path (forward and input gradient XLA's, weight gradient the shifted einsums)
    on random inputs against the convolution and its weight gradient written out in float64,
    with a non-square, asymmetric kernel and asymmetric padding among them."""
    rng = np.random.default_rng(100 + k * 10 + stride)
    x = jnp.asarray(rng.normal(size=(3, 9, 11, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 5, 6)) / k, jnp.float32)
    pads = _pads(x.shape, w.shape, stride, padding)
    ref_y = _numpy_conv(x, w, stride, pads)
    with conv.weight_grad("einsum"):
        y, vjp = jax.vjp(lambda x, w: conv.conv2d(x, w, (stride, stride), padding), x, w)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    dx, dw = vjp(dy)
    np.testing.assert_allclose(dw, _numpy_weight_grad(x, dy, (k, k), stride, pads),
                               rtol=1e-5, atol=1e-5)
    # The input gradient by the definition too (the transposed convolution): each dy[n, i, j, o]
    # adds dy[n, i, j, o] · w[a, b, :, o] to xpad[n, s·i + a, s·j + b, :]; padding cropped off.
    ref_dx = np.zeros(x.shape)
    xp_shape = (x.shape[1] + sum(pads[0]), x.shape[2] + sum(pads[1]))
    dy64, w64 = np.asarray(dy, np.float64), np.asarray(w, np.float64)
    for a in range(k):
        for b in range(k):
            contrib = np.einsum("nijo,co->nijc", dy64, w64[a, b])
            full = np.zeros((x.shape[0], *xp_shape, x.shape[3]))
            full[:, a:a + stride * (y.shape[1] - 1) + 1:stride,
                 b:b + stride * (y.shape[2] - 1) + 1:stride] += contrib
            ref_dx += full[:, pads[0][0]:pads[0][0] + x.shape[1],
                           pads[1][0]:pads[1][0] + x.shape[2]]
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)


def test_forward_is_xla_in_both_modes():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    with conv.weight_grad("einsum"):
        a = jax.jit(conv.conv2d)(x, w)  # the custom-VJP path, traced in the einsum context
    np.testing.assert_array_equal(a, jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    np.testing.assert_allclose(a, _numpy_conv(x, w, 1, ((1, 1), (1, 1))), rtol=1e-5, atol=1e-5)


def test_auto_picks_by_platform_and_names_bad_values():
    assert conv.resolve("auto", "cpu") == "winograd"
    assert conv.resolve("auto", "gpu") == "xla"
    assert conv.resolve("auto", "tpu") == "xla"
    with pytest.raises(ValueError, match="conv_weight_grad"):
        conv.resolve("fast", "cpu")


def test_flax_conv_hook_falls_back_for_dilated_convolutions():
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(1, 9, 9, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 2)), jnp.float32)
    out = conv.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(out, ref)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _value_and_grads(impl, x, w):
    def loss(x, w):
        with conv.weight_grad(impl):
            y = conv.conv2d(x, w)
        return jnp.sum(jnp.sin(y)), y

    (_, y), (dx, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
    return y, dx, dw


@pytest.mark.parametrize("n,h,w,c,d", [(2, 8, 8, 5, 6), (3, 16, 12, 7, 4), (1, 8, 8, 1, 1)])
def test_winograd_forward_and_gradients_match_xla(monkeypatch, n, h, w, c, d):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)  # narrow layers, so the test is cheap
    rng = np.random.default_rng(h * 100 + c)
    x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, c, d)) / 3, jnp.float32)
    assert winograd.applies(x.shape, k.shape, (1, 1), ((1, 1), (1, 1)))
    for got, ref in zip(_value_and_grads("winograd", x, k), _value_and_grads("xla", x, k),
                        strict=True):
        assert _rel(got, ref) < 1e-5
        assert not np.array_equal(got, ref) or c == d == 1  # a different algorithm ran


def test_winograd_at_full_width_matches_xla():
    """256 channels in and out: the width where the CPU default uses Winograd."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 256)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 256, 256)) / 48, jnp.float32)
    assert winograd.applies(x.shape, k.shape, (1, 1), ((1, 1), (1, 1)))
    for got, ref in zip(_value_and_grads("winograd", x, k), _value_and_grads("xla", x, k),
                        strict=True):
        assert _rel(got, ref) < 1e-5


def test_winograd_applies_only_to_wide_3x3_stride_1_layers():
    same = ((1, 1), (1, 1))
    wide = (3, 3, 256, 256)
    assert winograd.applies((2, 8, 8, 256), wide, (1, 1), same)
    assert not winograd.applies((2, 8, 8, 256), wide, (2, 2), same)          # stride 2
    assert not winograd.applies((2, 8, 8, 256), (1, 1, 256, 256), (1, 1), ((0, 0), (0, 0)))
    assert not winograd.applies((2, 8, 8, 128), (3, 3, 128, 256), (1, 1), same)  # narrow in
    assert not winograd.applies((2, 8, 8, 256), (3, 3, 256, 128), (1, 1), same)  # narrow out
    assert not winograd.applies((2, 4, 4, 256), wide, (1, 1), same)          # one tile
    assert not winograd.applies((2, 12, 10, 256), wide, (1, 1), same)        # 10 % 4 != 0


def test_winograd_leaves_other_layers_and_bfloat16_to_xla(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    with conv.weight_grad("winograd"):
        strided = conv.conv2d(x, k, (2, 2))
        half = conv.conv2d(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    np.testing.assert_array_equal(strided, conv.conv2d(x, k, (2, 2)))
    np.testing.assert_array_equal(half, conv.conv2d(x.astype(jnp.bfloat16),
                                                    k.astype(jnp.bfloat16)))
