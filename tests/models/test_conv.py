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


def test_forward_is_xla_in_both_modes():
    x = jnp.ones((2, 8, 8, 3))
    w = jnp.full((3, 3, 3, 4), 0.1)
    with conv.weight_grad("einsum"):
        a = conv.conv2d(x, w)
    np.testing.assert_array_equal(a, conv.conv2d(x, w))


def test_auto_picks_by_platform_and_names_bad_values():
    assert conv.resolve("auto", "cpu") == "winograd"
    assert conv.resolve("auto", "gpu") == "xla"
    assert conv.resolve("auto", "tpu") == "xla"
    with pytest.raises(ValueError, match="conv_weight_grad"):
        conv.resolve("fast", "cpu")


def test_flax_conv_hook_falls_back_for_dilated_convolutions():
    x = jnp.ones((1, 9, 9, 2))
    w = jnp.ones((3, 3, 2, 2))
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
